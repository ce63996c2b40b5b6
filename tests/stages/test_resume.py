"""Crash safety of train: SIGKILL or SIGTERM mid-run, run again, same adapter as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

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


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_train_resumes_to_the_same_adapter(tmp_path, recipe_factory, sig):
    recipe = recipe_factory(train={"max_steps": 60, "save_strategy": "steps", "save_steps": 10,
                                   "save_total_limit": None, "per_device_train_batch_size": 1,
                                   "eval_strategy": "no", "logging_steps": 5})
    reference = _recipe_file(tmp_path, recipe, "reference")
    subprocess.run(_cli("run", reference), check=True, capture_output=True)

    crashed = _recipe_file(tmp_path, recipe, "crashed")
    subprocess.run(_cli("run", crashed, "--until", "prepare"), check=True, capture_output=True)
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
    want, got = _adapter(tmp_path / "reference"), _adapter(tmp_path / "crashed")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key  # bitwise, on CPU


def test_train_resumed_from_its_final_checkpoint_runs_no_extra_step(tmp_path, recipe_factory):
    """A run killed after its last checkpoint but before the adapter was written: the next run
    takes the checkpoint as the result. Trainer would run one more step from it (under a
    constant schedule, one that changes the weights)."""
    import shutil

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
