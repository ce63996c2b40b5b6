"""Stage 3, pack: tokenize the rendered text and pack it into blocks of at most `seq_length`.

Strategies:
- wrapped: the seed's ConstantLengthDataset: every sample followed by EOS, concatenated, cut into
  equal blocks; the tail that does not fill a block is dropped (and counted).
- bfd: best-fit decreasing; samples stay whole and each block carries `position_ids` restarting
  at 0 per sample, which transformers turns into a block-diagonal mask: no cross-sample attention.
- none: one sample per row, padded per batch by the collator.
Labels are the token ids where the loss applies and -100 elsewhere.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..config import PackConfig
from ..progress import progress
from ..rundir import RunDir, write_json
from .template import needs_eos

IGNORE = -100
STRATEGIES = ("wrapped", "bfd", "none")


def tokenize(texts: list[str], spans: list[list[list[int]]], tokenizer: Any, loss_on: str, add_eos: bool,
             batch_size: int = 1000) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Yield (input_ids, labels) per sample. A token is an assistant token when its characters
    overlap an assistant span (byte-level BPE glues the answer's first word to the space before
    it); the appended EOS closes the last (assistant) turn."""
    eos = tokenizer.eos_token_id
    for lo in range(0, len(texts), batch_size):
        enc = tokenizer(texts[lo : lo + batch_size], return_offsets_mapping=True, add_special_tokens=True)
        for j, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            ids_arr = np.asarray(ids, dtype=np.int64)
            if loss_on == "all":
                keep = np.ones(len(ids_arr), dtype=bool)
            else:
                starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
                ends = np.asarray([o[1] for o in offsets], dtype=np.int64)
                keep = np.zeros(len(ids_arr), dtype=bool)
                for s, e in spans[lo + j]:
                    keep |= (ends > s) & (starts < e) & (ends > starts)
            if add_eos:
                ids_arr = np.append(ids_arr, eos)
                keep = np.append(keep, True)
            yield ids_arr, np.where(keep, ids_arr, IGNORE)


def pack_wrapped(samples: list[tuple[np.ndarray, np.ndarray]], seq_length: int, eos_id: int) -> tuple[list[dict], dict]:
    """The seed's ConstantLengthDataset: sample, EOS, sample, EOS, ... cut into full blocks."""
    ids_parts, lab_parts = [], []
    for ids, labels in samples:
        ids_parts += [ids, np.asarray([eos_id])]
        lab_parts += [labels, np.asarray([eos_id if (labels != IGNORE).any() else IGNORE])]
    stream = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
    lstream = np.concatenate(lab_parts) if lab_parts else np.zeros(0, dtype=np.int64)
    n = len(stream) // seq_length
    blocks = [{"input_ids": stream[i * seq_length : (i + 1) * seq_length].tolist(),
               "labels": lstream[i * seq_length : (i + 1) * seq_length].tolist()} for i in range(n)]
    return blocks, {"tail_tokens_dropped": int(len(stream) - n * seq_length)}


def _fit(samples: list[tuple[np.ndarray, np.ndarray]], cfg: PackConfig) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    kept, truncated, dropped, no_labels = [], 0, 0, 0
    for ids, labels in samples:
        if len(ids) > cfg.seq_length:
            if cfg.overlong == "drop":
                dropped += 1
                continue
            ids, labels = ids[: cfg.seq_length], labels[: cfg.seq_length]
            truncated += 1
        if not (labels != IGNORE).any():
            no_labels += 1  # truncation cut every trained token: it would train on nothing
            continue
        kept.append((ids, labels))
    return kept, {"truncated": truncated, "dropped_overlong": dropped, "dropped_no_labels": no_labels}


def bfd_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each item (longest first) goes to the fullest bin it still fits."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining space, bin index)
    for i in order:
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos < len(free):
            space, b = free.pop(pos)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - lengths[i], b))
    return bins


def pack_bfd(samples: list[tuple[np.ndarray, np.ndarray]], seq_length: int) -> list[dict]:
    blocks = []
    for members in bfd_bins([len(s[0]) for s in samples], seq_length):
        members.sort()  # keep dataset order inside a block: easier to read and to test
        blocks.append({
            "input_ids": np.concatenate([samples[i][0] for i in members]).tolist(),
            "labels": np.concatenate([samples[i][1] for i in members]).tolist(),
            "position_ids": np.concatenate([np.arange(len(samples[i][0])) for i in members]).tolist(),
        })
    return blocks


def pack(samples: list[tuple[np.ndarray, np.ndarray]], cfg: PackConfig, eos_id: int) -> tuple[list[dict], dict]:
    stats: dict[str, Any] = {"samples": len(samples), "tokens_in": int(sum(len(s[0]) for s in samples))}
    if cfg.strategy == "wrapped":
        blocks, extra = pack_wrapped(samples, cfg.seq_length, eos_id)
    else:
        fitted, extra = _fit(samples, cfg)
        if cfg.strategy == "bfd":
            blocks = pack_bfd(fitted, cfg.seq_length)
        else:
            blocks = [{"input_ids": ids.tolist(), "labels": lab.tolist()} for ids, lab in fitted]
    stats.update(extra)
    tokens = sum(len(b["input_ids"]) for b in blocks)
    slots = len(blocks) * cfg.seq_length
    stats.update({
        "blocks": len(blocks),
        "tokens": tokens,
        "trained_tokens": int(sum(sum(1 for x in b["labels"] if x != IGNORE) for b in blocks)),
        "padding_share": round(1 - tokens / slots, 4) if slots else 0.0,
    })
    return blocks, stats


def run(run: RunDir, out: Path) -> None:
    import datasets

    from ..models import load_tokenizer

    cfg = run.recipe.pack
    tokenizer = load_tokenizer(run.recipe.model.ref, run.recipe.model.trust_remote_code)
    add_eos = needs_eos(run.recipe.template)
    template_dir = run.stage_dir("template")
    stats: dict[str, Any] = {}
    for split_dir in sorted(p for p in template_dir.iterdir() if p.is_dir()):
        ds = datasets.load_from_disk(str(split_dir))
        samples = []
        with progress() as bar:
            task = bar.add_task(f"tokenize {split_dir.name}", total=len(ds))
            for sample in tokenize(ds["text"], ds["spans"], tokenizer, cfg.loss_on, add_eos):
                samples.append(sample)
                bar.advance(task)
        blocks, split_stats = pack(samples, cfg, tokenizer.eos_token_id)
        if not blocks:
            raise ValueError(f"pack: split '{split_dir.name}' gives no blocks of {cfg.seq_length} tokens "
                             f"({split_stats['tokens_in']} tokens in); lower pack.seq_length")
        datasets.Dataset.from_list(blocks).save_to_disk(str(out / split_dir.name))
        stats[split_dir.name] = split_stats
    stats["strategy"] = cfg.strategy
    stats["seq_length"] = cfg.seq_length
    write_json(out / "stats.json", stats)
    write_json(out / "summary.json", {k: v["blocks"] for k, v in stats.items() if isinstance(v, dict)})
