"""Sweeps end to end on the tiny model: stages shared by fingerprint, each trial an ordinary run
directory, failures recorded, kills resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import lima_rows, write_jsonl
from typer.testing import CliRunner

from sft_pipeline.cli import app
from sft_pipeline.orchestration import pipeline
from sft_pipeline.orchestration.sweep_results import read_records
from sft_pipeline.rundir.directory import COMPLETE, RunDirectory
from sft_pipeline.stages import open_run_directory

KILLPOINT = Path(__file__).resolve().parents[1] / "killpoint.py"
DATA = ("load", "template", "pack")


@pytest.fixture
def sweep_factory(tmp_path, tiny_model_dir, lima_dir):
    """A sweep file over the tiny model and data; `body` adds grid/zip/random/..."""

    def make(body: dict, train: dict | None = None) -> Path:
        base = {
            "data": {"source": str(lima_dir)},
            "model": {"ref": str(tiny_model_dir)},
            "pack": {"seq_length": 64},
            "lora": {"r": 4, "lora_alpha": 8},
            "train": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                      "eval_strategy": "epoch", "save_strategy": "no", **(train or {})},
            "tracking": {"wandb": "off", "tensorboard": False},
            "generate": {"max_new_tokens": 4, "batch_size": 4},
        }
        path = tmp_path / "sw.yaml"
        path.write_text(yaml.safe_dump({"base": base, "sweep_dir": str(tmp_path / "sweep"), **body}, sort_keys=False))
        return path

    return make


@pytest.fixture
def stage_runs(monkeypatch):
    """Every stage that really ran, as (run directory name, stage)."""
    ran: list[tuple[str, str]] = []
    real = pipeline._producer

    def counting(stage):
        fn = real(stage)

        def run(run_dir, out):
            ran.append((run_dir.path.name, stage))
            return fn(run_dir, out)

        return run

    monkeypatch.setattr(pipeline, "_producer", counting)
    return ran


def trial_run(folder: Path) -> RunDirectory:
    from sft_pipeline.config import load_recipe

    return open_run_directory(folder, load_recipe(folder / "recipe.yaml"))


def cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_a_lora_sweep_prepares_the_data_once_and_each_trial_is_a_run_directory(tmp_path, sweep_factory, stage_runs,
                                                                                lima_dir):
    path = sweep_factory({"grid": {"lora.r": [4, 8]}})
    code, output = cli("sweep", path)
    assert code == 0, output
    sweep = tmp_path / "sweep"
    assert sorted(stage_runs) == sorted([("r4", s) for s in (*DATA, "prepare", "train")]
                                        + [("r8", "prepare"), ("r8", "train")])
    records = read_records(sweep)
    assert [r["trial"] for r in records] == ["r4", "r8"]
    first, second = records
    assert first["computed"] == [*DATA, "prepare", "train"] and first["shared"] == {}
    assert second["computed"] == ["prepare", "train"] and second["shared"] == {s: "r4" for s in DATA}
    for r in records:
        assert r["status"] == "done" and r["error"] is None and r["seconds"] > 0
        assert isinstance(r["eval_loss"], float) and r["values"] == {"lora.r": int(r["trial"][1:])}
    assert "took load, template, pack from r4" in output
    assert (sweep / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    r4, r8 = trial_run(sweep / "r4"), trial_run(sweep / "r8")
    assert r8.recipe.name == "r8" and r8.recipe.tracking.group == "sw" and r8.recipe.lora.r == 8
    for stage in DATA:
        rec = r8.stage_record(stage)
        assert rec["shared_from"] == {"trial": "r4", "run_dir": str(sweep / "r4"), "by": "hardlinked"}
        assert rec["fingerprint"] == r4.fingerprint(stage) == r8.fingerprint(stage)
        assert (r8.path / stage / COMPLETE).read_text() == rec["fingerprint"]
        mine = sorted(p.relative_to(r8.path) for p in (r8.path / stage).rglob("*"))
        assert mine == sorted(p.relative_to(r4.path) for p in (r4.path / stage).rglob("*"))
        arrow = next((r8.path / stage).rglob("*.arrow"))
        assert arrow.stat().st_ino == (r4.path / arrow.relative_to(r8.path)).stat().st_ino  # linked, not copied
    assert r8.fingerprint("prepare") != r4.fingerprint("prepare")

    # each trial's folder works with every command, as any run directory does
    stage_runs.clear()
    code, output = cli("status", sweep / "r8")
    assert code == 0 and output.count("complete") == 5, output
    code, output = cli("train", sweep / "r8")
    assert code == 0 and "up to date" in output and stage_runs == []
    code, output = cli("run", sweep / "r8")  # merge reads the shared template
    assert code == 0 and stage_runs == [("r8", "merge")], output
    code, output = cli("generate", sweep / "r8", "--prompt", "Name a number.")
    assert code == 0 and ">>> Name a number." in output, output

    # a stage re-run in the trial it came from replaces its folder there, not the linked files here
    before = {p: p.read_bytes() for p in (r8.path / "load").rglob("*") if p.is_file()}
    write_jsonl(lima_dir / "train.jsonl", lima_rows(6))
    code, output = cli("load", sweep / "r4", "--force")
    assert code == 0, output
    assert {p: p.read_bytes() for p in (r8.path / "load").rglob("*") if p.is_file()} == before
    assert r8.stage_state("load") == "complete"

    # the sweep again: nothing to do (a forced stage keeps its fingerprint, so what follows it too)
    stage_runs.clear()
    code, output = cli("sweep", path)
    assert code == 0 and stage_runs == [], output
    assert "r4: complete, skipped" in " ".join(output.split()) and "r8: complete, skipped" in " ".join(output.split())
    assert [r["status"] for r in read_records(sweep)] == ["done", "done"]


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, sweep_factory, stage_runs):
    path = sweep_factory({"grid": {"train.extra_args.optim": ["no_such_optimizer", "adamw_torch"]}},
                         train={"eval_strategy": "no"})
    code, output = cli("sweep", path)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "1 of 2 trials failed (optim_no_such_optimizer)" in lines[0]
    bad, good = read_records(tmp_path / "sweep")
    assert f"failed optim_no_such_optimizer: {bad['error']}" in " ".join(output.split())  # below the table
    assert bad["status"] == "failed" and "no_such_optimizer" in bad["error"] and "\n" not in bad["error"]
    assert bad["error"].startswith("train: ") and "logs/train.log" in bad["error"]
    assert bad["computed"] == [*DATA, "prepare"]  # what it finished is kept, and shared
    assert good["status"] == "done" and good["shared"] == {s: "optim_no_such_optimizer" for s in (*DATA, "prepare")}
    assert good["eval_loss"] is None  # no evaluation asked for: nothing to rank by
    assert ("optim_adamw_torch", "train") in stage_runs
    # run again: the finished trial is skipped, the failed one tried again (and fails again)
    stage_runs.clear()
    code, output = cli("sweep", path)
    assert code == 2 and stage_runs == [("optim_no_such_optimizer", "train")], output


def test_a_sweep_checks_each_trial_once_before_the_first_runs(tmp_path, sweep_factory, stage_runs, monkeypatch):
    """check_trials runs preflight on every trial's stages before the first trial; the stages it
    runs are not checked again one by one."""
    from sft_pipeline.orchestration import preflight

    checked: list[tuple[int, list[str]]] = []
    real = preflight.check

    def counting(recipe, stages, *args, **kwargs):
        checked.append((recipe.lora.r, list(stages)))
        return real(recipe, stages, *args, **kwargs)

    monkeypatch.setattr(preflight, "check", counting)
    code, output = cli("sweep", sweep_factory({"grid": {"lora.r": [4, 8]}, "until": "pack"}))
    assert code == 0, output
    assert checked == [(4, list(DATA)), (8, list(DATA))]
    assert stage_runs == [("r4", s) for s in DATA]  # r8 took them from r4


def killed(rule: dict, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(KILLPOINT), json.dumps(rule), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, f"kill point not reached (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def test_a_killed_sweep_resumes_its_trial_from_the_checkpoint(tmp_path, sweep_factory, stage_runs):
    path = sweep_factory({"grid": {"lora.r": [4, 8]}}, train={"save_strategy": "steps", "save_steps": 1})
    # killed as the second trial's finished train folder is about to be renamed into place
    killed({"on": "replace", "match": r"/\.partial/train -> \S*/train$", "nth": 2, "when": "before"}, "sweep", path)
    sweep = tmp_path / "sweep"
    records = {r["trial"]: r for r in read_records(sweep)}
    assert records["r4"]["status"] == "done" and records["r8"]["status"] == "running"
    r8 = trial_run(sweep / "r8")
    assert r8.stage_state("train") == "missing" and (r8.work_dir("train") / "checkpoints").is_dir()
    code, output = cli("sweep", path)
    assert code == 0, output
    assert stage_runs == [("r8", "train")]  # r4 skipped, r8's stages before train kept
    assert "r4: complete, skipped" in " ".join(output.split())
    metrics = json.loads((sweep / "r8" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from"] and metrics["steps"] == 2
    assert [r["status"] for r in read_records(sweep)] == ["done", "done"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_sweep_killed_while_taking_a_stage_never_leaves_it_looking_complete(tmp_path, sweep_factory, when):
    """Trials until pack: the stage killed is r8's load being linked from r4, and r8's template
    and pack after the rerun show it was taken whole; training the two trials as well would add
    nothing here (the lora sweep test shares stages through train)."""
    path = sweep_factory({"grid": {"lora.r": [4, 8]}, "until": "pack"})
    # the second trial's load, linked from the first, renamed into place
    killed({"on": "replace", "match": r"/r8/\.partial/load -> \S*/r8/load$", "when": when}, "sweep", path)
    sweep = tmp_path / "sweep"
    r8 = trial_run(sweep / "r8")
    assert r8.stage_state("load") == "missing" and r8.stage_record("load") is None
    assert (r8.path / "load").is_dir() == (when == "after")
    code, output = cli("sweep", path)
    assert code == 0, output
    assert all(r8.stage_state(s) == "complete" for s in DATA) and r8.stage_state("prepare") == "missing"
    assert r8.stage_record("load")["shared_from"]["trial"] == "r4"
    assert not r8.work_dir("load").exists()
