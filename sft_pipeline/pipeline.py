"""Running stages: the lock, the up-to-date check, and the atomic swap, around each stage's run()."""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from rich.console import Console

from .config import Recipe
from .rundir import STAGES, RunDir, StageError

console = Console(stderr=True)

EXTRA = ("evaluate",)  # runs like a stage, outside the six


def _runner(stage: str) -> Callable:
    if stage == "evaluate":
        return importlib.import_module("sft_pipeline.evaluate").run
    return importlib.import_module(f"sft_pipeline.stages.{stage}").run


def run_stage(run: RunDir, stage: str, force: bool = False) -> bool:
    """Run one stage unless it is up to date. Returns True when it ran."""
    if stage not in STAGES and stage not in EXTRA:
        raise StageError(f"unknown stage '{stage}'")
    with run.locked(" ".join(sys.argv) or stage):
        if not force and run.stage_state(stage) == "complete":
            console.print(f"[green]{stage}[/]: up to date")
            return False
        console.rule(f"[bold]{stage}")
        with run.stage_output(stage, keep_partial=(stage == "train")) as out:
            _runner(stage)(run, out)
        rec = run.stage_record(stage) or {}
        console.print(f"[green]{stage}[/]: done in {rec.get('seconds', '?')} s -> {run.path / stage}")
        return True


def run_all(recipe: Recipe, force: bool = False, until: str | None = None) -> RunDir:
    run = RunDir(recipe.resolved_run_dir(), recipe)
    for stage in STAGES:
        run_stage(run, stage, force=force)
        if stage == until:
            break
    return run


def status_rows(run: RunDir) -> list[tuple[str, str, str, str]]:
    rows = []
    for stage in (*STAGES, *EXTRA):
        rec = run.stage_record(stage) or {}
        state = run.stage_state(stage)
        summary = rec.get("summary", {}) if state != "missing" else {}
        rows.append((stage, state, str(rec.get("seconds", "")) if state != "missing" else "", _short(summary)))
    return rows


def _short(summary: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in summary.items())
    return text if len(text) < 90 else text[:87] + "..."
