"""Stage 1, load: read the source, normalize every record to a conversation, count the rest.

Invariant, per split: kept + sum(dropped by reason) == records read. A file that cannot be read
at all stops the stage with the file and line; a record that cannot be used is counted.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from ..formats import FormatError, detect_format, to_conversation
from ..progress import progress
from ..rundir import RunDir, write_json
from ..sources import SourceError, read_records

SPLITS = ("train", "eval")
EXAMPLES_PER_REASON = 3


def load_split(source: str, split: str, fmt: str, max_records: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    read = 0
    chosen = None if fmt == "auto" else fmt
    with progress() as bar:
        task = bar.add_task(f"load {split}", total=None)
        # islice stops before fetching record max_records+1: a broken line past the cap is never read
        for where, rec in itertools.islice(read_records(source, split), max_records):
            read += 1
            bar.advance(task)
            if chosen is None:
                if not isinstance(rec, dict):
                    raise SourceError(f"{where}: a record is a JSON object, got {type(rec).__name__}")
                try:
                    chosen = detect_format(rec.keys())
                except FormatError as err:
                    raise SourceError(f"{where}: {err}") from None
            messages, why = to_conversation(rec, chosen)
            if why:
                dropped[why] += 1
                examples.setdefault(why, [])
                if len(examples[why]) < EXAMPLES_PER_REASON:
                    examples[why].append(where)
                continue
            src = rec.get("source") if isinstance(rec.get("source"), str) else ""
            kept.append({"messages": messages, "source": src})
    stats = {
        "source": source,
        "split": split,
        "format": chosen,
        "read": read,
        "kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "dropped_examples": examples,
    }
    assert stats["kept"] + sum(dropped.values()) == read  # the invariant the tests rely on
    return kept, stats


def run(run: RunDir, out: Path) -> None:
    import datasets

    cfg = run.recipe.data
    plan = [("train", cfg.source, cfg.train_split)]
    if cfg.eval_split is not None:
        plan.append(("eval", cfg.eval_source or cfg.source, cfg.eval_split))
    stats: dict[str, Any] = {}
    for name, source, split in plan:
        rows, split_stats = load_split(source, split, cfg.format, cfg.max_records)
        if not rows:
            raise SourceError(f"data.source: {source} (split {split}): no usable records ({split_stats['dropped'] or 'empty'})")
        datasets.Dataset.from_list(rows).save_to_disk(str(out / name))
        stats[name] = split_stats
    write_json(out / "stats.json", stats)
    write_json(out / "summary.json", {s: {"kept": v["kept"], "dropped": sum(v["dropped"].values())} for s, v in stats.items()})
