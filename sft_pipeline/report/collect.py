"""What a report shows, read from the run directory: train's logged scalars and metrics, the
stage table, and the last evaluation. A run that has not trained has nothing to draw: that is
the one-line StageError run.stage_dir gives, naming the command to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..rundir.directory import RunDirectory, StageError
from ..rundir.files import read_json
from ..rundir.stage_spec import METRICS


@dataclass
class Contents:
    name: str
    path: str
    scalars: list[dict[str, Any]]
    metrics: dict[str, Any]
    stages: list[tuple[str, str, str, str]]
    evaluation: dict[str, Any] | None  # evaluate's REPORT
    answers: list[dict[str, Any]]  # the last evaluation's rows of evaluate's ANSWERS
    notes: list[str] = field(default_factory=list)  # what is missing, one line each


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar, in step order."""
    from ..training.step_scalars import STEP

    points = sorted((r[STEP], r[key]) for r in rows if r.get(key) is not None)
    return [s for s, _ in points], [v for _, v in points]


def collect(run_dir: RunDirectory) -> Contents:
    from ..stages.evaluate import ANSWERS, REPORT
    from ..training.trackers import SCALARS, read_scalars

    scalars = run_dir.artifact("train", SCALARS)  # refused in one line when train has not run
    if not scalars.is_file():
        raise StageError(f"{scalars} is missing (trained before per-step scalars were kept): "
                         f"run `sft-pipeline train {run_dir.path} --force`")
    notes = []
    evaluation, answers = None, []
    if run_dir.stage_state("evaluate") == "complete":
        evaluation = read_json(run_dir.artifact("evaluate", REPORT))
        kept = run_dir.artifact("evaluate", ANSWERS)
        rows = read_json(kept)["rows"] if kept.is_file() else []
        last = max((r["evaluation"] for r in rows), default=None)
        answers = [r for r in rows if r["evaluation"] == last]
    else:
        notes.append(f"evaluate has not run (or is stale): `sft-pipeline evaluate {run_dir.path}` adds before/after answers")
    return Contents(run_dir.recipe.name, str(run_dir.path.resolve()), read_scalars(scalars),
                    read_json(run_dir.artifact("train", METRICS)), run_dir.status_rows(), evaluation, answers, notes)
