"""Stage 1, load: read the source, normalize every record to a conversation, count the rest.

Invariant, per split: kept + sum(dropped by reason) == records read. A file that cannot be read
at all stops the stage with the file and line; a record that cannot be used is counted.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from ..formats import FormatError, detect_format, rename_columns, to_conversation
from ..progress import progress
from ..rundir import RunDir, write_json
from ..sources import SourceError, read_records

SPLITS = ("train", "eval")
EXAMPLES_PER_REASON = 3


def load_split(source: str, split: str, fmt: str, max_records: int | None,
               columns: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
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
                    renamed = rename_columns(rec, columns or {})
                    chosen = detect_format(renamed.keys(), renamed)
                except FormatError as err:
                    raise SourceError(f"{where}: {err}") from None
            messages, why = to_conversation(rec, chosen, columns)
            if messages is not None:
                key = json.dumps(messages, sort_keys=True)
                if key in seen:
                    messages, why = None, "duplicate"
                seen.add(key)
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


def carve_eval(rows: list[dict[str, Any]], size: float, seed: int) -> tuple[list, list]:
    """A seeded split for sources without an eval split: `size` rows, or a fraction when < 1."""
    n = round(len(rows) * size) if size < 1 else int(size)
    if not 1 <= n < len(rows):
        raise SourceError(f"data.eval_size: {size} leaves no train or no eval rows out of {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def run(run: RunDir, out: Path) -> None:
    import datasets

    cfg = run.recipe.data
    plan = [("train", cfg.source, cfg.train_split)]
    if cfg.eval_split is not None:
        plan.append(("eval", cfg.eval_source or cfg.source, cfg.eval_split))
    if cfg.eval_size is not None:
        plan = plan[:1]  # the eval split is carved from train below
    stats: dict[str, Any] = {}
    rows_by_split: dict[str, list[dict[str, Any]]] = {}
    for name, source, split in plan:
        rows, split_stats = load_split(source, split, cfg.format, cfg.max_records, cfg.columns)
        if not rows:
            raise SourceError(f"data.source: {source} (split {split}): no usable records ({split_stats['dropped'] or 'empty'})")
        rows_by_split[name] = rows
        stats[name] = split_stats
    if cfg.eval_size is not None:
        train_rows, eval_rows = carve_eval(rows_by_split["train"], cfg.eval_size, cfg.split_seed)
        rows_by_split = {"train": train_rows, "eval": eval_rows}
        stats["eval"] = {"carved_from": "train", "eval_size": cfg.eval_size, "seed": cfg.split_seed,
                         "kept": len(eval_rows), "read": len(eval_rows), "dropped": {}}
        stats["train"]["kept_after_eval_carve"] = len(train_rows)
    for name, rows in rows_by_split.items():
        datasets.Dataset.from_list(rows).save_to_disk(str(out / name))
    write_json(out / "stats.json", stats)
    write_json(out / "summary.json", {s: {"kept": v["kept"], "dropped": sum(v["dropped"].values())} for s, v in stats.items()})
