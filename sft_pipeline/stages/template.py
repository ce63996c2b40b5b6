"""Stage 2, template: conversations -> text, with the character span of every assistant turn
(data/prompts.py renders them; data/samples.py makes each row).

A conversation the template cannot render as it is (a tool call the template has no place
for, control text the recipe drops) is dropped here under a named reason and counted in
stats.json, as `load` counts its own: per split, kept + sum(dropped) == read, where read is
the rows `load` kept.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..data.arrow_io import SplitWriter, count_rows, iter_batches, split_dirs
from ..data.prompts import TemplateError
from ..data.samples import Context, make_row
from ..progress import progress
from ..rundir.directory import RunDirectory
from ..rundir.files import write_json
from ..rundir.stage_spec import STATS, SUMMARY, StageSpec

SPEC = StageSpec(
    name="template", reads=("template", "model.ref", "model.trust_remote_code"),  # model: the chat template's tokenizer
    upstream=("load",), writes=("train/", STATS, SUMMARY), may_write={"eval/": "load has an eval split"},
)

EXAMPLES_PER_REASON = 3

TEMPLATE_SCHEMA = pa.schema([
    ("text", pa.string()),
    ("spans", pa.list_(pa.list_(pa.int64()))),
    ("prompt", pa.string()),
    ("reference", pa.string()),
    ("question", pa.string()),
    ("source", pa.string()),
    # where each content field lies in text, for the rows whose content has control text that
    # pack tokenizes as text (empty for every other row: those take the fast path)
    ("content_spans", pa.list_(pa.list_(pa.int64()))),
    ("control_fields", pa.int64()),  # how many of the record's fields held control text
])


class TemplateStageError(TemplateError):
    """A split with no row the template can render (a user error: the CLI says it in one line)."""


def template_split(split_dir: Path, folder: Path, ctx: Context) -> dict[str, Any]:
    """Render one load split into `folder`; its stats (read, kept, dropped by reason with the
    first load rows, control text counts, characters)."""
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    control = {"records": 0, "fields": 0, "tokenized_as_text": 0}
    notes: Counter[str] = Counter()  # the kept rows' untrained turns and reasoning (data/samples.py)
    read = chars = 0
    with progress() as bar, SplitWriter(folder, TEMPLATE_SCHEMA) as writer:
        task = bar.add_task(f"template {split_dir.name}", total=count_rows(split_dir))
        for batch in iter_batches(split_dir):
            for rec in batch.to_pylist():
                row, why, n_control = make_row(rec, ctx, notes)
                control["records"] += bool(n_control)
                control["fields"] += n_control
                read += 1
                if row is None:
                    dropped[why] += 1
                    wheres = examples.setdefault(why, [])
                    if len(wheres) < EXAMPLES_PER_REASON:
                        wheres.append(f"load/{split_dir.name} row {read - 1}")
                    continue
                control["tokenized_as_text"] += bool(row["content_spans"])
                writer.add(row)
                chars += len(row["text"])
            bar.advance(task, batch.num_rows)
        if not writer.count and not writer.rows:
            raise TemplateStageError(f"template: split '{split_dir.name}' has no row the template can render "
                                     f"({dict(sorted(dropped.items())) or 'empty'})")
    stats = {"read": read, "kept": writer.count, "dropped": dict(sorted(dropped.items())),
             "dropped_examples": examples, "control_text": {**control, "mode": ctx.cfg.control_text},
             "chars": chars, **note_stats(notes, ctx)}
    assert stats["kept"] + sum(dropped.values()) == read  # the invariant the tests rely on
    return stats


def note_stats(notes: Counter[str], ctx: Context) -> dict[str, Any]:
    """Untrained turns and reasoning, as stats keys only where a split has them (the stats of a
    split without either are what they always were)."""
    out: dict[str, Any] = {}
    if notes["untrained_turns"]:
        out["turn_weights"] = {"untrained_turns": notes["untrained_turns"],
                               "records": notes["records_with_untrained_turns"]}
    placed = {k.split(":", 1)[1]: n for k, n in sorted(notes.items()) if k.startswith("reasoning:") and n}
    if placed:
        out["reasoning"] = {"mode": ctx.cfg.reasoning, "template_key": ctx.reasoning_key, "turns": placed}
    return out


def produce(run_dir: RunDirectory, out: Path) -> None:
    from ..model.loader import load_tokenizer

    cfg = run_dir.recipe.template
    # every kind needs the model's tokenizer: its special tokens are what control text is
    ctx = Context.build(cfg, load_tokenizer(run_dir.recipe.model.ref, run_dir.recipe.model.trust_remote_code))
    stats: dict[str, Any] = {"kind": cfg.kind, "tool_calls": ctx.support.calls, "tool_definitions": ctx.support.definitions}
    for split_dir in split_dirs(run_dir.stage_dir("load")):
        stats[split_dir.name] = template_split(split_dir, out / split_dir.name, ctx)
    write_json(out / STATS, stats)
    write_json(out / SUMMARY, {"kind": cfg.kind, **{
        k: {"samples": v["kept"], "dropped": sum(v["dropped"].values()), "chars": v["chars"]}
        for k, v in stats.items() if isinstance(v, dict)}})
