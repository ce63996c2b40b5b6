"""Disk full and read-only run directories: a clear one-line error naming the path and the cause,
nothing recorded as complete, no stage folder left that looks complete, and a re-run after the
fault is cleared finishes the job.

The faults are real kernel-level failures, not patched Python calls:
- ENOSPC: a size-limited tmpfs mounted in a private user+mount namespace (`unshare -rm`, no root
  needed where unprivileged user namespaces are allowed), filled up, with the run directory on it.
- EFBIG: RLIMIT_FSIZE set in the child (SIGXFSZ ignored), so any write past the limit fails; this
  one runs everywhere.
- read-only: as a normal user, the run directory chmod-ed 0o555; as root (permissions do not stop
  root) a read-only bind mount in a private namespace (EROFS).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import STATE, lima_rows, run_read_only, run_state, userns_works, write_jsonl

from sft_pipeline.stages import open_run_directory

PY = sys.executable

def big_recipe(tmp_path, recipe_factory, run_dir: Path, **sections):
    """The tiny recipe on 2000 records, so load writes a few hundred KB of Arrow."""
    data = tmp_path / "big"
    write_jsonl(data / "train.jsonl", lima_rows(2000))
    write_jsonl(data / "test.jsonl", lima_rows(8))
    recipe = recipe_factory(data={"source": str(data)}, run_dir=str(run_dir), **sections)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json())))
    return recipe, path


def one_error_line(stderr: str) -> str:
    """The stage's own progress output comes first; the failure is one last line, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def assert_nothing_complete(state: dict, stage: str) -> None:
    assert state["states"][stage] == "missing"
    assert stage not in state["recorded"]
    assert stage not in state["folders"]  # no folder where a complete stage would be


@pytest.mark.skipif(not userns_works(), reason="needs unprivileged user namespaces (unshare -rm) to mount a tmpfs")
def test_disk_full_on_a_real_tmpfs(tmp_path, recipe_factory):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    recipe, recipe_path = big_recipe(tmp_path, recipe_factory, mnt / "run")
    script = f"""
set -u
mount -t tmpfs -o size=8m tmpfs {mnt}
dd if=/dev/zero of={mnt}/filler bs=64k 2>/dev/null || true   # fill it: ENOSPC from here on
truncate -s -64K {mnt}/filler                                   # 64 KiB left: the lock and recipe fit, the data does not
{PY} -m sft_pipeline.cli load {recipe_path} >{out}/fail.out 2>{out}/fail.err; echo $? >{out}/fail.rc
{PY} -c '{STATE}' {recipe_path} >{out}/fail.state
df -k {mnt} | tail -1 >{out}/df
rm {mnt}/filler                                                 # the fault is cleared
{PY} -m sft_pipeline.cli load {recipe_path} >{out}/ok.out 2>{out}/ok.err; echo $? >{out}/ok.rc
{PY} -c '{STATE}' {recipe_path} >{out}/ok.state
"""
    subprocess.run(["unshare", "-rm", "bash", "-c", script], check=True, timeout=300,
                   env={**os.environ, "COLUMNS": "400"})
    line = one_error_line((out / "fail.err").read_text())
    assert (out / "fail.rc").read_text().strip() == "2", line
    assert line.startswith("error: load: cannot write ") and "No space left on device" in line
    assert str(mnt / "run") in line
    state = json.loads((out / "fail.state").read_text())
    assert_nothing_complete(state, "load")
    assert state["partial"] == []  # the half-written work folder was removed, its space given back
    assert (out / "ok.rc").read_text().strip() == "0", (out / "ok.err").read_text()[-2000:]
    assert json.loads((out / "ok.state").read_text())["states"]["load"] == "complete"


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the child outright
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_efbig(tmp_path, recipe_factory):
    from sft_pipeline.orchestration.pipeline import update_stage

    recipe, recipe_path = big_recipe(tmp_path, recipe_factory, tmp_path / "run")
    proc = subprocess.run([PY, "-m", "sft_pipeline.cli", "load", str(recipe_path)], capture_output=True, text=True,
                          timeout=300, preexec_fn=_file_size_limit(64 * 1024), env={**os.environ, "COLUMNS": "400"})
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2, line
    assert line.startswith("error: load: cannot write ") and "File too large" in line
    assert str(tmp_path / "run") in line
    state = run_state(recipe_path)
    assert_nothing_complete(state, "load")
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    assert update_stage(run, "load") and run.stage_state("load") == "complete"  # no limit: it finishes


def _tree_hashes(folder: Path) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(os.geteuid() == 0 and not userns_works(),
                    reason="root ignores permissions, and no mount namespace for a read-only mount")
def test_read_only_run_directory(tmp_path, recipe_factory):
    from sft_pipeline.orchestration.pipeline import update_stage

    run_dir = tmp_path / "run"
    recipe, recipe_path = big_recipe(tmp_path, recipe_factory, run_dir, template={"kind": "seed"})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    update_stage(run, "load")
    before = _tree_hashes(run_dir)
    out = tmp_path / "out"
    out.mkdir()
    cmd = f"{PY} -m sft_pipeline.cli template {recipe_path} >{out}/fail.out 2>{out}/fail.err; echo $? >{out}/fail.rc"
    how = run_read_only(run_dir, cmd, env={**os.environ, "COLUMNS": "400"})
    cause = {"chmod 555": "Permission denied", "read-only mount": "Read-only file system"}[how]
    line = one_error_line((out / "fail.err").read_text())
    assert (out / "fail.rc").read_text().strip() == "2", line
    assert line.startswith("error: template: cannot write ") and cause in line and str(run_dir) in line
    state = run_state(recipe_path)
    assert_nothing_complete(state, "template")
    assert state["states"]["load"] == "complete"
    assert _tree_hashes(run_dir) == before  # not a byte changed
    assert update_stage(run, "template") and run.stage_state("template") == "complete"  # writable again


# ---- how a failure is recognised as a write fault -----------------------------------------

def test_write_fault_is_found_in_chains_and_messages(tmp_path):
    import errno

    from sft_pipeline.orchestration.write_faults import find_cause

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        raise RuntimeError("saving failed") from OSError(errno.ENOSPC, "No space left on device")
    except RuntimeError as exc:
        assert find_cause(exc, run_dir) == (errno.ENOSPC, None)
    # safetensors' Rust error carries the errno only in its text
    assert find_cause(Exception("Error while serializing: I/O error: File too large (os error 27)"), run_dir) == (errno.EFBIG, None)
    # a data file that cannot be read is not a write fault, nor is our own error, nor a plain bug
    outside = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data.jsonl"))
    assert find_cause(outside, run_dir) is None
    assert find_cause(ValueError("data.source: bad"), run_dir) is None
    assert find_cause(RuntimeError("iostream error"), run_dir) is None  # the probe write works
    inside = PermissionError(errno.EACCES, "Permission denied", str(run_dir / ".lock"))
    assert find_cause(inside, run_dir) == (errno.EACCES, str(run_dir / ".lock"))
