"""Dashboards: one W&B run across a resume with each step once, the same scalars in TensorBoard
and scalars.jsonl, perplexity, tokens/s and MFU per logging step, the run's config and summary,
the adapter artifact, and evaluate's answers table that grows. W&B offline only, read back with
W&B's own reader (tests/wandb_files.py)."""

from __future__ import annotations

import json
import math

import pytest
import wandb_files as wf

from sft_pipeline.orchestration.pipeline import update_stage, update_stages
from sft_pipeline.rundir.files import read_json

TRAIN = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "save_total_limit": None, "logging_steps": 1,
         "eval_strategy": "steps", "eval_steps": 3, "per_device_train_batch_size": 1}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifacts' staging copies


def _crash_after(monkeypatch, crash_step):
    """Make the train stage die right after its tracker logged `crash_step`'s training row."""
    from sft_pipeline.training import trackers

    real = trackers.Tracking.log

    def log(self, logs, step):
        row = real(self, logs, step)
        if step == crash_step and "loss" in logs:
            raise RuntimeError("killed (test)")
        return row

    monkeypatch.setattr(trackers.Tracking, "log", log)


def _tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resumed_train_is_one_wandb_run_with_each_step_once(recipe_factory, offline, monkeypatch):
    recipe = recipe_factory(tracking={"wandb": "offline", "tensorboard": True}, train=TRAIN)
    with monkeypatch.context() as m:
        _crash_after(m, 3)  # the checkpoint is at step 2: step 3 is logged, then lost with the process
        with pytest.raises(RuntimeError, match="killed"):
            update_stages(recipe, until="train")
    run = update_stages(recipe, until="train")
    train = run.path / "train"
    metrics = read_json(train / "metrics.json")
    assert metrics["resumed_from"].endswith("checkpoint-2") and metrics["steps"] == 6

    folders = wf.offline_runs(train / "wandb")
    assert len(folders) == 2  # one per process: `wandb sync` puts them in one run
    recs = [wf.records(f) for f in folders]
    ident = read_json(train / "tracking.json")["wandb_run_id"]
    assert {wf.run_id(r) for r in recs} == {ident}
    rows = [h for r in recs for h in wf.history(r)]
    train_steps = [h["train/global_step"] for h in rows if "train/loss" in h]
    eval_steps = [h["train/global_step"] for h in rows if "eval/loss" in h]
    assert train_steps == [1, 2, 3, 4, 5, 6] and eval_steps == [3, 6]  # none twice, none lost
    for h in rows:
        if "train/loss" in h:
            assert h["train/perplexity"] == pytest.approx(math.exp(h["train/loss"]))
            assert h["train/tokens_per_second"] > 0 and 0 < h["train/mfu"] < 1
            assert h["train/learning_rate"] > 0 and h["train/grad_norm"] >= 0
        if "eval/loss" in h:
            assert h["eval/perplexity"] == pytest.approx(math.exp(h["eval/loss"]))
    assert [h["eval/loss"] for h in rows if "eval/loss" in h] == pytest.approx(metrics["eval_losses"])

    # TensorBoard has the same scalars at the same steps, once each, and so has scalars.jsonl
    board = _tensorboard(train / "tensorboard")
    for tag in ("train/loss", "train/perplexity", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                "train/mfu", "eval/loss", "eval/perplexity"):
        logged = [(h["train/global_step"], h[tag]) for h in rows if tag in h]
        assert [s for s, _ in board[tag]] == [s for s, _ in logged], tag
        assert [v for _, v in board[tag]] == pytest.approx([v for _, v in logged], rel=1e-6), tag
    lines = [json.loads(line) for line in (train / "scalars.jsonl").read_text().splitlines()]
    assert [(row["kind"], row["train/global_step"]) for row in lines] == [
        ("train", 1), ("train", 2), ("train", 3), ("eval", 3), ("train", 4), ("train", 5), ("train", 6), ("eval", 6)]
    assert [row["train/loss"] for row in lines if "train/loss" in row] == [h["train/loss"] for h in rows if "train/loss" in h]

    # config: the recipe, every stage's fingerprint, the hardware, the versions, MFU's rate
    cfg = wf.config(recs[1])
    assert cfg["recipe"]["train"]["max_steps"] == 6
    assert cfg["fingerprints"]["train"] == run.fingerprint("train")
    assert cfg["hardware"]["device"] == "cpu" and "cpu_flags" in cfg["hardware"]
    assert "transformers" in cfg["versions"] and "wandb" in cfg["versions"]
    assert cfg["mfu_rate"]["how"].startswith(("measured", "rated"))
    # the resumed run divided by the rate its first start measured
    assert "cached at first start" in cfg["mfu_rate"]["how"]
    # summary: load and pack statistics, prepare's estimate beside the measured peak
    summ = wf.summary(recs[1])
    load, pack = read_json(run.path / "load" / "stats.json"), read_json(run.path / "pack" / "stats.json")
    assert summ["load"]["train"]["kept"] == load["train"]["kept"]
    assert summ["load"]["train"]["dropped"] == load["train"]["dropped"]
    assert summ["pack"]["train"]["padding_share"] == pack["train"]["padding_share"]
    assert summ["memory"]["estimate_gib"] == metrics["memory_estimate_gib"] and summ["memory"]["peak_gib"] > 0
    assert not [r for r in recs[1] if r.get("type") == "artifact"]  # tracking.log_adapter is off by default


KILL_AFTER_STEP = """
import os, signal, sys
from sft_pipeline.training import trackers
real = trackers.Tracking.log
def log(self, logs, step):
    row = real(self, logs, step)
    if step == 3 and "loss" in logs:
        os.kill(os.getpid(), signal.SIGKILL)
    return row
trackers.Tracking.log = log
from sft_pipeline.cli import app
sys.argv = ["sft-pipeline", "train", sys.argv[1]]
app()
"""


@pytest.mark.slow
def test_sigkilled_train_loses_no_wandb_row(tmp_path, recipe_factory, offline):
    """SIGKILL takes wandb-core's unwritten buffer with it: the resumed train logs those rows again
    from scalars.jsonl, so the run still has each step once."""
    import subprocess
    import sys

    import yaml

    recipe = recipe_factory(tracking={"wandb": "offline", "tensorboard": True}, train=TRAIN)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json())))
    update_stages(recipe, until="prepare")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_STEP, str(path)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    work = tmp_path / "run" / ".partial" / "train"
    assert [json.loads(line)["train/global_step"] for line in (work / "scalars.jsonl").read_text().splitlines()] == [1, 2, 3]
    done = subprocess.run([sys.executable, "-m", "sft_pipeline.cli", "train", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    train = tmp_path / "run" / "train"
    folders = wf.offline_runs(train / "wandb")
    recs = [wf.records(f) for f in folders]
    rows = [h for r in recs for h in wf.history(r)]
    assert sorted(h["train/global_step"] for h in rows if "train/loss" in h) == [1, 2, 3, 4, 5, 6]
    assert sorted(h["train/global_step"] for h in rows if "eval/loss" in h) == [3, 6]
    ids = {wf.run_id(r) for r in recs if wf.of_type(r, "run")}
    assert ids == {read_json(train / "tracking.json")["wandb_run_id"]}
    board = _tensorboard(train / "tensorboard")
    assert [s for s, _ in board["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_only_run_has_the_scalars_and_no_wandb(recipe_factory):
    run = update_stages(recipe_factory(tracking={"wandb": "off", "tensorboard": True},
                                 train={"max_steps": 2, "logging_steps": 1}), until="train")
    board = _tensorboard(run.path / "train" / "tensorboard")
    assert [s for s, _ in board["train/loss"]] == [1, 2] and [s for s, _ in board["train/mfu"]] == [1, 2]
    assert not (run.path / "train" / "wandb").exists()


def test_adapter_artifact_when_the_recipe_asks(recipe_factory, offline):
    run = update_stages(recipe_factory(tracking={"wandb": "offline", "log_adapter": True}), until="train")
    (folder,) = wf.offline_runs(run.path / "train" / "wandb")
    (artifact,) = [a for a in wf.of_type(wf.records(folder), "artifact")]
    ident = read_json(run.path / "train" / "tracking.json")["wandb_run_id"]
    assert artifact["name"] == f"adapter-{ident}" and artifact["type"] == "model"
    paths = {c["path"] for c in artifact["manifest"]["contents"]}
    assert "adapter_model.safetensors" in paths and "adapter_config.json" in paths


def test_evaluate_answers_table_grows_with_each_evaluation(recipe_factory, offline):
    from sft_pipeline.config import HOUSE_STYLE

    recipe = recipe_factory(tracking={"wandb": "offline"}, evaluate={"max_prompts": 2, "style_regex": HOUSE_STYLE})
    run = update_stages(recipe)
    ident = read_json(run.path / "train" / "tracking.json")["wandb_run_id"]
    tables = []
    for _ in range(2):
        update_stage(run, "evaluate", force=True)
        (folder,) = wf.offline_runs(run.path / "evaluate" / "wandb")
        recs = wf.records(folder)
        assert wf.run_id(recs) == ident  # evaluate continues train's run
        (table_file,) = (folder / "files" / "media" / "table" / "evaluate").glob("answers_*.table.json")
        tables.append(json.loads(table_file.read_text()))
        summ = wf.summary(recs)["evaluate"]
        report = read_json(run.path / "evaluate" / "report.json")
        assert summ["after"]["perplexity"]["eval"] == pytest.approx(report["after"]["perplexity"]["eval"])
    first, second = tables
    assert first["columns"] == ["evaluation", "prompt", "before", "after", "before_follows_style", "after_follows_style"]
    assert len(first["data"]) == 2 and len(second["data"]) == 4  # the first evaluation's rows are kept
    assert [r[0] for r in second["data"]] == [1, 1, 2, 2] and second["data"][:2] == first["data"]
