"""Crash safety of train: SIGKILL or SIGTERM mid-run, run again, same adapter as an uninterrupted run;
and a node other than 0, whose train ends unrecorded (node 0 records it) with its checkpoints kept."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml


def _recipe_file(tmp_path, recipe, name):
    recipe = recipe.model_copy(update={"run_dir": str(tmp_path / name)})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json())))
    return path


def _adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "train" / "adapter" / "adapter_model.safetensors")


def _cli(*args):
    return [sys.executable, "-m", "sft_pipeline.cli", *map(str, args)]


KILLED_TRAIN = {"max_steps": 60, "save_strategy": "steps", "save_steps": 10, "save_total_limit": None,
                "per_device_train_batch_size": 1, "eval_strategy": "no", "logging_steps": 5}


@pytest.fixture(scope="module")
def prepared_and_reference(tmp_path_factory, tiny_model_dir):
    """A run directory prepared once, in this process (load..prepare are not the subject), and the
    uninterrupted reference: that folder copied and trained by the command, to its end. Both signal
    cases copy the same prepared folder, so they resume towards the one reference."""
    from helpers import lima_rows, write_jsonl

    from sft_pipeline.config import recipe_from_dict
    from sft_pipeline.orchestration.pipeline import update_stages

    root = tmp_path_factory.mktemp("resume")
    write_jsonl(root / "data" / "train.jsonl", lima_rows(12, multi_every=4))
    write_jsonl(root / "data" / "test.jsonl", lima_rows(4))
    recipe = recipe_from_dict({
        "name": "t", "run_dir": str(root / "prepared"), "data": {"source": str(root / "data")},
        "model": {"ref": str(tiny_model_dir)}, "pack": {"seq_length": 64}, "lora": {"r": 4, "lora_alpha": 8},
        "train": {**KILLED_TRAIN}, "tracking": {"wandb": "off", "tensorboard": False},
        "generate": {"max_new_tokens": 8, "batch_size": 4}})
    prepared = update_stages(recipe, until="prepare").path
    reference = _copied_recipe_file(root, recipe, prepared, "reference")
    done = subprocess.run(_cli("train", reference), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming" not in done.stderr  # uninterrupted: it started from step 0
    return recipe, prepared, root / "reference"


def _copied_recipe_file(root: Path, recipe, prepared: Path, name: str) -> Path:
    """A copy of the prepared run directory under `name`, and the recipe file that points at it."""
    shutil.copytree(prepared, root / name)
    return _recipe_file(root, recipe, name)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_train_resumes_to_the_same_adapter(tmp_path, prepared_and_reference, sig):
    recipe, prepared, reference = prepared_and_reference
    crashed = _copied_recipe_file(tmp_path, recipe, prepared, "crashed")
    proc = subprocess.Popen(_cli("train", crashed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "crashed" / ".partial" / "train" / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints / "checkpoint-20").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    manifest = json.loads((tmp_path / "crashed" / "manifest.json").read_text())
    assert "train" not in manifest["stages"]  # nothing recorded as complete
    assert not (tmp_path / "crashed" / "train").exists()

    done = subprocess.run(_cli("train", crashed), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming from" in done.stderr
    want, got = _adapter(reference), _adapter(tmp_path / "crashed")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key  # bitwise, on CPU


def test_train_resumed_from_its_final_checkpoint_runs_no_extra_step(tmp_path, recipe_factory):
    """A run killed after its last checkpoint but before the adapter was written: the next run
    takes the checkpoint as the result. Trainer would run one more step from it (under a
    constant schedule, one that changes the weights)."""
    from sft_pipeline.orchestration.pipeline import update_stages
    from sft_pipeline.rundir.files import read_json

    recipe = recipe_factory(train={"max_steps": 2, "save_strategy": "steps", "save_steps": 2,
                                   "lr_scheduler_type": "constant", "learning_rate": 0.01})
    reference = update_stages(recipe)
    crashed = update_stages(recipe.model_copy(update={"run_dir": str(tmp_path / "crashed")}), until="prepare")
    work = crashed.work_dir("train")
    work.mkdir(parents=True)
    (work / ".fingerprint").write_text(crashed.fingerprint("train"))
    shutil.copytree(reference.path / "train" / "checkpoints", work / "checkpoints")

    update_stages(crashed.recipe)
    metrics = read_json(crashed.path / "train" / "metrics.json")
    assert metrics["resumed_from"].endswith("checkpoint-2")
    assert metrics["steps"] == 2 and metrics["step_seconds"] == []  # no step was run
    assert metrics["final_train_loss"] == read_json(reference.path / "train" / "metrics.json")["final_train_loss"]
    want, got = _adapter(reference.path), _adapter(crashed.path)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_a_node_other_than_0_records_nothing_keeps_its_checkpoints_and_exits_0(tmp_path, recipe_factory, monkeypatch):
    """Node 1 of a two-node train: its processes trained, node 0 records the result. Here the stage
    returns (no SystemExit), nothing is recorded or swapped in, the work folder with its checkpoints
    stays for a resume, no stage after train runs, and `run` ends with status 0."""
    from typer.testing import CliRunner

    from sft_pipeline.cli import app
    from sft_pipeline.orchestration.pipeline import update_stages
    from sft_pipeline.training import launch

    recipe = recipe_factory(distributed={"nproc_per_node": 1, "nnodes": 2, "node_rank": 1,
                                         "rdzv_endpoint": "127.0.0.1:29400"})
    launched = []

    def workers(cmd, env, here, world):  # what node 1's workers leave: checkpoints, no results
        launched.append(cmd)
        (Path(cmd[-1]) / "checkpoints" / f"checkpoint-{len(launched)}").mkdir(parents=True)

    monkeypatch.setattr(launch, "run_workers", workers)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = update_stages(recipe, until="merge")  # returns: a SystemExit would fail the test here
    assert len(launched) == 1
    assert run.stage_state("prepare") == "complete"
    assert run.stage_state("train") == "missing" and not (run.path / "train").exists()
    assert set(json.loads((run.path / "manifest.json").read_text())["stages"]) == {"load", "template", "pack", "prepare"}
    assert (run.work_dir("train") / "checkpoints" / "checkpoint-1").is_dir()  # kept: swapped in nowhere
    assert not (run.path / "logs" / "merge.log").exists()  # merge reads train's output: it is on node 0

    path = _recipe_file(tmp_path, recipe, "run")  # the same run directory, through the command
    result = CliRunner().invoke(app, ["run", str(path), "--until", "merge"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "node 1 of 2: its processes finished" in said and "recorded in node 0's run directory" in said
    assert len(launched) == 2 and run.stage_state("train") == "missing"
    assert (run.work_dir("train") / "checkpoints" / "checkpoint-1").is_dir()  # the same folder, resumed into
