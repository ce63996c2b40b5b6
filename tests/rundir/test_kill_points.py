"""Atomic stages: a stage SIGKILLed at exact points of writing its output and the manifest never
leaves a folder that the manifest or the next stage takes as complete, and running it again
finishes the job.

Each point is hit by running the real CLI under tests/killpoint.py, which patches os.replace or
the run directory's file writes in that process only and kills it at the Nth matching call.
`load` is the stage killed (the points are in the code every stage shares, and load is the
cheapest to start); one point is also shown on `train`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sft_pipeline.rundir.directory import COMPLETE, RunDirectory, StageError
from sft_pipeline.stages import ORDER, open_run_directory

KILLPOINT = Path(__file__).resolve().parents[1] / "killpoint.py"

SWAP = r"/\.partial/{s} -> \S*/{s}$"  # the finished work folder renamed into place
ASIDE = r"/{s} -> \S*/\.partial/{s}\.old$"  # a complete older output moved aside (re-runs)
MANIFEST = r"/manifest\.json$"
MANIFEST_TMP = r"/\.manifest\.json\.tmp-\d+$"

# name -> (rule, state right after the kill, what the next run does)
FRESH_POINTS = {
    "stage output half written": (
        {"on": "replace", "match": r"/\.partial/load/stats\.json$", "when": "before"}, "missing", "redo"),
    "final output file half written": (
        {"on": "write", "match": r"/\.partial/load/\.summary\.json\.tmp-\d+$", "fraction": 0.5}, "missing", "redo"),
    "output complete, before its rename": (
        {"on": "replace", "match": SWAP.format(s="load"), "when": "before"}, "missing", "redo"),
    "renamed into place, before the manifest": (
        {"on": "replace", "match": SWAP.format(s="load"), "when": "after"}, "missing", "adopt"),
    "manifest half written": (
        {"on": "write", "match": MANIFEST_TMP, "fraction": 0.5}, "missing", "adopt"),
    "manifest written, before its rename": (
        {"on": "replace", "match": MANIFEST, "when": "before"}, "missing", "adopt"),
    "manifest renamed": (
        {"on": "replace", "match": MANIFEST, "when": "after"}, "complete", "up to date"),
}

# `load --force` over a complete load, after the source grew from 12 to 16 records.
# name -> (rule, state right after the kill, what the next run does, records then in load/)
REPLACE_POINTS = {
    "old record forgotten": (
        {"on": "replace", "match": MANIFEST, "nth": 1, "when": "after"}, "missing", "adopt", 12),
    "old output moved aside": (
        {"on": "replace", "match": ASIDE.format(s="load"), "when": "after"}, "missing", "redo", 16),
    "new output renamed into place": (
        {"on": "replace", "match": SWAP.format(s="load"), "when": "after"}, "missing", "adopt", 16),
    "new manifest half written": (
        {"on": "write", "match": MANIFEST_TMP, "nth": 2, "fraction": 0.5}, "missing", "adopt", 16),
}


def recipe_file(tmp_path: Path, recipe) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json())))
    return path


def killed(rule: dict, *cli_args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(KILLPOINT), json.dumps(rule), *map(str, cli_args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, f"kill point not reached (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def assert_consistent(run: RunDirectory) -> None:
    """What the manifest records as complete is exactly a finished folder; the rest is not taken."""
    if run.manifest_path.exists():
        json.loads(run.manifest_path.read_text())  # never half written
    for stage in ORDER:
        state = run.stage_state(stage)
        if state == "complete":
            folder = run.path / stage
            assert (folder / COMPLETE).read_text() == run.fingerprint(stage)
            recorded = run.stage_record(stage)["summary"]
            assert json.loads((folder / "summary.json").read_text()) == recorded
        else:
            with pytest.raises(StageError):
                run.stage_dir(stage)  # what every next stage calls first


def load_rows(run: RunDirectory) -> int:
    import datasets

    return len(datasets.load_from_disk(str(run.path / "load" / "train")))


def rerun(run: RunDirectory, stage: str) -> str:
    from sft_pipeline.orchestration.pipeline import update_stage

    ran = update_stage(run, stage)
    rec = run.stage_record(stage)
    assert run.stage_state(stage) == "complete"
    assert not run.work_dir(stage).exists() and not (run.path / ".partial" / f"{stage}.old").exists()
    assert_consistent(run)
    return "redo" if ran else ("adopt" if "recovered" in rec else "up to date")


def extra_rows(start: int, n: int) -> list[dict]:
    return [{"conversations": [f"Name the number {i}.", f"TL;DR: {i}.\n\nDetails:\n- It is {i}\n- Yes"]}
            for i in range(start, start + n)]


@pytest.mark.parametrize("point", list(FRESH_POINTS))
def test_load_killed_at_a_point_of_its_first_run(tmp_path, recipe_factory, point):
    rule, state, outcome = FRESH_POINTS[point]
    recipe = recipe_factory()
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    killed(rule, "load", recipe_file(tmp_path, recipe))
    assert run.stage_state("load") == state
    assert_consistent(run)
    assert rerun(run, "load") == outcome
    assert load_rows(run) == 12


@pytest.mark.parametrize("point", list(REPLACE_POINTS))
def test_load_killed_while_replacing_a_complete_output(tmp_path, recipe_factory, lima_dir, point):
    from helpers import lima_rows, write_jsonl

    from sft_pipeline.orchestration.pipeline import update_stage

    rule, state, outcome, rows = REPLACE_POINTS[point]
    recipe = recipe_factory()
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    update_stage(run, "load")
    assert load_rows(run) == 12
    write_jsonl(lima_dir / "train.jsonl", lima_rows(12, multi_every=4) + extra_rows(100, 4))
    killed(rule, "load", recipe_file(tmp_path, recipe), "--force")
    assert run.stage_state("load") == state
    assert_consistent(run)
    assert rerun(run, "load") == outcome
    assert load_rows(run) == rows


def test_train_killed_after_its_rename_is_adopted_not_retrained(tmp_path, recipe_factory):
    from sft_pipeline.orchestration.pipeline import update_stages

    recipe = recipe_factory()
    run = update_stages(recipe, until="prepare")
    killed({"on": "replace", "match": SWAP.format(s="train"), "when": "after"}, "train", recipe_file(tmp_path, recipe))
    assert run.stage_state("train") == "missing" and (run.path / "train" / "adapter").is_dir()
    assert_consistent(run)
    adapter = (run.path / "train" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert rerun(run, "train") == "adopt"
    assert (run.path / "train" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert run.stage_record("train")["summary"]["steps"] == 2
