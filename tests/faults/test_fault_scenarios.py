"""Fault injection, end to end on the bundled model (SmolLM2-135M-Instruct): kill/resume, the
writer lock, kills at the final write and around the manifest, disk full, read-only.

Run with `make test-faults` (pytest -m faults); each scenario adds a row to the table printed at
the end: scenario, runs, data lost (steps redone after resume, or stages redone), result.
The recipe is the demo one cut down to run in minutes on 2 CPU cores: 8 records, blocks of 64
tokens, LoRA r=4, 4 steps, a checkpoint every 2 steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import STATE, run_read_only, run_state, userns_works

pytestmark = pytest.mark.faults

PY = sys.executable
KILLPOINT = Path(__file__).resolve().parents[1] / "killpoint.py"
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
MAX_STEPS = 4

RECIPE = {
    "name": "faults",
    "data": {"source": "bundled:lima_house_style", "max_records": 8, "eval_split": None},
    "template": {"kind": "chat", "system": "You are a helpful assistant."},
    "pack": {"seq_length": 64},
    "model": {"ref": "bundled:smollm2-135m-instruct"},
    "lora": {"r": 4, "lora_alpha": 8},
    "train": {"max_steps": MAX_STEPS, "per_device_train_batch_size": 1, "learning_rate": 1e-3, "logging_steps": 1,
              "eval_strategy": "no", "save_strategy": "steps", "save_steps": 2, "save_total_limit": None, "seed": 1},
    "tracking": {"wandb": "off", "tensorboard": False},
}

def cli(*args) -> list[str]:
    return [PY, "-m", "sft_pipeline.cli", *map(str, args)]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train" / "adapter" / "adapter_model.safetensors"))


def same_adapter(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps_logged(text: str) -> int:
    return len(re.findall(r"'loss': ", text))


def resumed_from(text: str) -> int:
    found = re.findall(r"Resuming from \S*checkpoint-(\d+)", text)
    return int(found[-1]) if found else 0


def error_line(text: str) -> str:
    """The one error line, on a line of its own."""
    errors = [line for line in text.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in text, text[-3000:]
    return errors[0]


def not_complete(run_dir: Path, stage: str) -> None:
    st = run_state(run_dir)
    assert st["states"][stage] == "missing" and stage not in st["recorded"] and stage not in st["folders"], st


def wait_for(path_test, proc, seconds=900) -> None:
    deadline = time.time() + seconds
    while not path_test() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the process finished before it could be killed"


def train_until_first_checkpoint(run_dir: Path, log: Path) -> subprocess.Popen:
    """`train` started in the background (output to `log`), returned once checkpoint-2 is written."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cli("train", run_dir), stdout=fh, stderr=subprocess.STDOUT, env=ENV)
    ckpt = run_dir / ".partial" / "train" / "checkpoints" / "checkpoint-2"
    wait_for(lambda: (ckpt / "trainer_state.json").is_file(), proc)
    return proc


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """load, template, pack and prepare done once: every scenario starts from a copy."""
    root = tmp_path_factory.mktemp("faults")
    recipe = root / "faults.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "run_dir": str(root / "prepared")}))
    subprocess.run(cli("run", recipe, "--until", "prepare"), check=True, capture_output=True, env=ENV)
    return root / "prepared"


@pytest.fixture(scope="session")
def reference(prepared, tmp_path_factory) -> Path:
    """An uninterrupted train: what every resumed run must end with, bit for bit."""
    run_dir = copy_run(prepared, tmp_path_factory.mktemp("ref") / "run")
    done = subprocess.run(cli("train", run_dir), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps_logged(done.stdout + done.stderr) == MAX_STEPS
    return run_dir


def test_sigkill_mid_training_second_writer_and_dead_lock(prepared, reference, tmp_path, fault_table):
    run_dir = copy_run(prepared, tmp_path / "run")
    log = tmp_path / "killed.log"
    proc = train_until_first_checkpoint(run_dir, log)

    # one writer: a second command on the same run directory is refused at once
    t0 = time.perf_counter()
    second = subprocess.run(cli("train", run_dir), capture_output=True, text=True, env=ENV)
    refused_in = time.perf_counter() - t0
    line = error_line(second.stderr)
    assert second.returncode == 2 and f"pid {proc.pid} " in line and "train" in line, line
    fault_table.append(("second writer while train runs", "1", "none",
                        f"refused in {refused_in:.1f} s, naming the holder's pid, host and command"))

    wait_for(lambda: steps_logged(log.read_text()) >= 3, proc)  # step 3 done, its checkpoint not due
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    not_complete(run_dir, "train")
    assert f'"pid": {proc.pid}' in (run_dir / ".lock").read_text()  # the dead holder's lock is left

    done = subprocess.run(cli("train", run_dir), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    fault_table.append(("lock left by a SIGKILLed holder", "1", "none", "taken over by the next command"))
    killed_steps, resumed = steps_logged(log.read_text()), resumed_from(done.stderr)
    assert resumed >= 2
    assert same_adapter(adapter(run_dir), adapter(reference))
    fault_table.append(("train SIGKILLed mid-training", "2",
                        f"{killed_steps - resumed} step(s) redone (killed after step {killed_steps}, resumed from {resumed})",
                        "adapter bitwise equal to an uninterrupted run"))


def test_sigterm_saves_a_checkpoint_and_loses_nothing(prepared, reference, tmp_path, fault_table):
    run_dir = copy_run(prepared, tmp_path / "run")
    log = tmp_path / "term.log"
    proc = train_until_first_checkpoint(run_dir, log)
    # at once: in bf16 on a fast CPU the two steps left take under a second, and a signal that
    # lands after the last one has nothing to stop (the run was already done)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    assert proc.returncode == 143, log.read_text()[-3000:]
    not_complete(run_dir, "train")
    done = subprocess.run(cli("train", run_dir), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    stopped, resumed = steps_logged(log.read_text()), resumed_from(done.stderr)
    assert resumed == stopped  # the checkpoint was saved at the step it stopped
    assert same_adapter(adapter(run_dir), adapter(reference))
    fault_table.append(("train SIGTERMed (preemption)", "2", f"0 steps redone (checkpoint saved at step {stopped})",
                        "adapter bitwise equal to an uninterrupted run"))


def _killed(rule: dict, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, str(KILLPOINT), json.dumps(rule), *map(str, args)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == -9, f"kill point not reached: {proc.stderr[-3000:]}"
    return proc


def test_train_killed_during_its_final_write_then_after_its_rename(prepared, reference, tmp_path, fault_table):
    """Two crashes in a row: killed while writing its last file (summary.json, after the adapter),
    then the re-run killed after renaming its folder into place but before the manifest."""
    run_dir = copy_run(prepared, tmp_path / "run")
    _killed({"on": "write", "match": r"/\.partial/train/\.summary\.json\.tmp-\d+$", "fraction": 0.5}, "train", run_dir)
    not_complete(run_dir, "train")
    second = _killed({"on": "replace", "match": r"/\.partial/train -> \S*/train$", "when": "after"}, "train", run_dir)
    st = run_state(run_dir)
    assert st["states"]["train"] == "missing" and "train" not in st["recorded"]
    resumed, extra = resumed_from(second.stderr), steps_logged(second.stdout + second.stderr)
    assert resumed == MAX_STEPS and extra == 0  # the last checkpoint is the result: no step past max_steps
    fault_table.append(("train killed writing its last file", "2", f"0 steps redone (resumed from step {resumed})",
                        "finished on re-run, with no step past max_steps"))

    t0 = time.perf_counter()
    done = subprocess.run(cli("train", run_dir), capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0 and "had finished before a crash" in done.stderr, done.stderr[-3000:]
    assert same_adapter(adapter(run_dir), adapter(reference))
    fault_table.append(("train killed after its rename, before the manifest", "2", "0 steps redone",
                        f"folder adopted as complete in {seconds:.1f} s; adapter bitwise equal to an uninterrupted run"))


def test_merge_killed_while_writing_the_model(reference, tmp_path, fault_table):
    run_dir = copy_run(reference, tmp_path / "run")
    model = run_dir / ".partial" / "merge" / "model"
    proc = subprocess.Popen(cli("merge", run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    wait_for(lambda: any(model.glob("*.safetensors")), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    not_complete(run_dir, "merge")
    t0 = time.perf_counter()
    done = subprocess.run(cli("merge", run_dir), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    verify = json.loads((run_dir / "merge" / "verify.json").read_text())
    assert verify["passed"]
    fault_table.append(("merge killed writing model.safetensors", "2",
                        f"the merge stage redone ({time.perf_counter() - t0:.0f} s)", "complete, logit check passed"))


@pytest.mark.skipif(not userns_works(), reason="needs unprivileged user namespaces (unshare -rm) to mount a tmpfs")
def test_disk_full_while_saving_a_checkpoint(prepared, reference, tmp_path, fault_table):
    """A real ENOSPC: the run directory on a 200 MB tmpfs filled up to its last 8 MB, less than
    one checkpoint (adapter and optimizer state); the first checkpoint save fails."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    run_dir = mnt / "run"
    script = f"""
set -u
mount -t tmpfs -o size=200m tmpfs {mnt}
cp -a {prepared} {run_dir}
dd if=/dev/zero of={mnt}/filler bs=1M 2>/dev/null || true
truncate -s -8M {mnt}/filler
{PY} -m sft_pipeline.cli train {run_dir} >{out}/fail.log 2>&1; echo $? >{out}/fail.rc
{PY} -c '{STATE}' {run_dir} >{out}/fail.state
rm {mnt}/filler
{PY} -m sft_pipeline.cli train {run_dir} >{out}/ok.log 2>&1; echo $? >{out}/ok.rc
cp {run_dir}/train/adapter/adapter_model.safetensors {out}/ || true
"""
    subprocess.run(["unshare", "-rm", "bash", "-c", script], check=True, env=ENV, timeout=1800)
    fail_log = (out / "fail.log").read_text()
    line = error_line(fail_log)
    assert (out / "fail.rc").read_text().strip() == "2", line
    assert line.startswith("error: train: cannot write ") and "No space left on device" in line and str(run_dir) in line
    st = json.loads((out / "fail.state").read_text())
    assert st["states"]["train"] == "missing" and "train" not in st["recorded"] and "train" not in st["folders"]
    ok_log = (out / "ok.log").read_text()
    assert (out / "ok.rc").read_text().strip() == "0", ok_log[-3000:]
    from safetensors.torch import load_file

    assert same_adapter(load_file(str(out / "adapter_model.safetensors")), adapter(reference))
    lost = steps_logged(fail_log) - resumed_from(ok_log)
    fault_table.append(("disk full while saving a checkpoint (tmpfs, ENOSPC)", "2",
                        f"{lost} step(s) redone (the checkpoint being written was incomplete)",
                        "one-line error; re-run after freeing space: adapter bitwise equal"))


@pytest.mark.skipif(os.geteuid() == 0 and not userns_works(), reason="root ignores permissions; no mount namespace")
def test_read_only_run_directory(reference, tmp_path, fault_table):
    run_dir = copy_run(reference, tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    cmd = f"{PY} -m sft_pipeline.cli merge {run_dir} >{out}/fail.log 2>&1; echo $? >{out}/fail.rc"
    how = run_read_only(run_dir, cmd, env=ENV, timeout=1800)
    line = error_line((out / "fail.log").read_text())
    assert (out / "fail.rc").read_text().strip() == "2" and line.startswith("error: merge: cannot write ") and str(run_dir) in line
    not_complete(run_dir, "merge")
    done = subprocess.run(cli("merge", run_dir), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    fault_table.append((f"read-only run directory ({how}), merge", "2", "none",
                        "one-line error naming the path; re-run when writable completes"))
