"""A sweep's results: sweep.jsonl (one record per trial), the table sorted by eval loss, and a PNG
of eval loss against each swept key.

sweep.jsonl is rewritten whole and atomically after every trial, so a reader (or a killed sweep)
never sees half a record; a trial's lines say its values, status (pending, running, done,
failed), eval loss, seconds, the stages it computed and those it took from which trial, and its
one-line error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table
from rich.text import Text

from ..rundir.files import atomic_write_text

RECORDS = "sweep.jsonl"
PLOT = "sweep.png"


def read_records(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / RECORDS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_records(folder: Path, records: Sequence[dict[str, Any]]) -> Path:
    path = Path(folder) / RECORDS
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in records))
    return path


def _rank(record: dict[str, Any]) -> tuple[int, float]:
    loss = record.get("eval_loss")
    return (0, loss) if isinstance(loss, (int, float)) else (1, 0.0)


def ranked(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """By eval loss, lowest first; trials without one (failed, not evaluated) last, in order."""
    return sorted(records, key=_rank)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def results_table(records: Sequence[dict[str, Any]], keys: Sequence[str], title: str) -> Table:
    """One row per trial, lowest eval loss first: its values, eval loss, status, seconds, the
    stages it computed and those it took from another trial (failed trials' errors: below it)."""
    from .sweep_plan import labels

    table = Table(title=title)
    table.add_column("trial", no_wrap=True)
    for key, label in labels(list(keys)).items():
        table.add_column(label, no_wrap=True)
    table.add_column("eval loss", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("computed", overflow="fold")
    table.add_column("shared (from)", overflow="fold")
    for r in ranked(records):
        shared: dict[str, list[str]] = {}
        for stage, origin in r.get("shared", {}).items():
            shared.setdefault(origin, []).append(stage)
        loss = r.get("eval_loss")
        cells = [r["trial"], *(_text(r["values"].get(k)) for k in keys),
                 f"{loss:.4f}" if isinstance(loss, (int, float)) else "-", r["status"],
                 _text(r["seconds"]) if r.get("seconds") is not None else "-",
                 ", ".join(r.get("computed", [])) or "-",
                 "; ".join(f"{', '.join(st)} ({o})" for o, st in shared.items()) or "-"]
        table.add_row(*(Text(c) for c in cells))  # values as written, never read as markup
    return table


def failures(records: Sequence[dict[str, Any]]) -> list[str]:
    """'trial: error' for each failed trial, in the sweep's order."""
    return [f"{r['trial']}: {r['error']}" for r in records if r["status"] == "failed"]


def plot(records: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, log_keys: Sequence[str] = ()) -> Path | None:
    """Eval loss against each swept key, one panel per key (numbers on a numeric axis, log-scaled
    where drawn log-uniform or spanning two decades; anything else as categories). None, and no
    file, when no trial has an eval loss yet."""
    done = [r for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if not done or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r["values"].get(key) for r in done]
        ys = [r["eval_loss"] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if numeric:
            where = xs
            if all(x > 0 for x in xs) and (key in log_keys or max(xs) / min(xs) >= 100):
                ax.set_xscale("log")
        else:
            labels = sorted({_text(x) for x in xs})
            where = [labels.index(_text(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        ax.scatter(where, ys)
        for x, y, r in zip(where, ys, done):
            ax.annotate(r["trial"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.margins(x=0.2)  # room for the trial names beside the outermost points
        ax.set_xlabel(key)
        ax.set_ylabel("eval loss")
        ax.grid(alpha=0.3)
        low, high = min(ys), max(ys)
        if math.isclose(low, high):
            ax.set_ylim(low - 0.05 * abs(low or 1), high + 0.05 * abs(high or 1))
    fig.suptitle(f"eval loss of {len(done)} trial(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
