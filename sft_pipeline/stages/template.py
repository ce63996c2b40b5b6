"""Stage 2, template: conversations -> text, with the character span of every assistant turn
(data/prompts.py renders them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from ..data.arrow_io import SplitWriter, count_rows, iter_batches, split_dirs
from ..data.prompts import render_sample
from ..progress import progress
from ..run.rundir import RunDir, write_json
from ..run.stage_spec import StageSpec

SPEC = StageSpec(
    name="template", reads=("template", "model.ref", "model.trust_remote_code"),  # model: the chat template's tokenizer
    upstream=("load",), writes=("train/", "summary.json"), may_write={"eval/": "load has an eval split"},
)

TEMPLATE_SCHEMA = pa.schema([
    ("text", pa.string()),
    ("spans", pa.list_(pa.list_(pa.int64()))),
    ("prompt", pa.string()),
    ("reference", pa.string()),
    ("question", pa.string()),
    ("source", pa.string()),
])


def run(run: RunDir, out: Path) -> None:
    from ..model.loader import load_tokenizer

    cfg = run.recipe.template
    load_dir = run.stage_dir("load")
    tokenizer = load_tokenizer(run.recipe.model.ref, run.recipe.model.trust_remote_code) if cfg.kind == "chat" else None
    summary: dict[str, Any] = {}
    for split_dir in split_dirs(load_dir):
        chars = 0
        with progress() as bar, SplitWriter(out / split_dir.name, TEMPLATE_SCHEMA) as writer:
            task = bar.add_task(f"template {split_dir.name}", total=count_rows(split_dir))
            for batch in iter_batches(split_dir):
                for rec in batch.to_pylist():
                    text, spans, prompt = render_sample(rec["messages"], cfg, tokenizer)
                    writer.add({"text": text, "spans": [list(s) for s in spans], "prompt": prompt,
                                "reference": rec["messages"][-1]["content"],
                                "question": rec["messages"][-2]["content"], "source": rec["source"]})
                    chars += len(text)
                bar.advance(task, batch.num_rows)
        summary[split_dir.name] = {"samples": writer.count, "chars": chars}
    write_json(out / "summary.json", {"kind": cfg.kind, **summary})
