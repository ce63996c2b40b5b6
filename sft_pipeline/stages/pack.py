"""Stage 3, pack: tokenize the rendered text and pack it into blocks of at most `seq_length`
(data/tokens.py tokenizes and fits, data/packing.py packs). stats.json also counts, per split,
the samples whose content held control text and how many of them were tokenized as text
(data/control.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.arrow_io import SplitWriter, split_dirs
from ..data.control import split_counts
from ..data.packing import pack
from ..data.prompts import needs_eos
from ..data.tokens import tokenize_split
from ..errors import PipelineError
from ..rundir.directory import RunDirectory
from ..rundir.files import write_json
from ..rundir.stage_spec import STATS, SUMMARY, StageSpec

SPEC = StageSpec(
    # template.kind: whether EOS is added; model.*: the tokenizer, and bfd's attention check
    name="pack", reads=("pack", "template.kind", "model.ref", "model.trust_remote_code", "model.attn_implementation"),
    upstream=("template",), writes=("train/", STATS, SUMMARY),
    may_write={"eval/": "template has an eval split"},
)


class PackError(PipelineError, ValueError):
    """Packing gives nothing to train on; the message says which split and what to change."""


def produce(run_dir: RunDirectory, out: Path) -> None:
    from ..model.loader import load_tokenizer

    cfg = run_dir.recipe.pack
    model = run_dir.recipe.model
    if cfg.strategy == "bfd":  # refuse before tokenizing anything
        from transformers import AutoConfig

        from ..model.loader import resolve
        from ..training.isolation import check_bfd

        config = AutoConfig.from_pretrained(resolve(model.ref).path, trust_remote_code=model.trust_remote_code)
        check_bfd(config, model.attn_implementation, model.trust_remote_code)
    tokenizer = load_tokenizer(model.ref, model.trust_remote_code)
    # wrapped follows the seed: EOS after every sample; otherwise only plain templates need one
    add_eos = needs_eos(run_dir.recipe.template) or cfg.strategy == "wrapped"
    stats: dict[str, Any] = {}
    for split_dir in split_dirs(run_dir.stage_dir("template")):
        tokens = tokenize_split(split_dir, tokenizer, cfg.loss_on, add_eos)
        blocks, split_stats = pack(tokens, cfg)
        del tokens
        if not len(blocks):
            raise PackError(f"pack: split '{split_dir.name}' gives no blocks of {cfg.seq_length} tokens "
                             f"({split_stats['tokens_in']} tokens in); lower pack.seq_length")
        with SplitWriter(out / split_dir.name) as writer:
            writer.add_table(blocks.table())
        stats[split_dir.name] = {**split_stats, "control_text": split_counts(split_dir)}
    stats["strategy"] = cfg.strategy
    stats["seq_length"] = cfg.seq_length
    write_json(out / STATS, stats)
    write_json(out / SUMMARY, {k: v["blocks"] for k, v in stats.items() if isinstance(v, dict)})
