"""Packing tokenized samples into blocks of at most seq_length tokens: pure functions over Tokens.

Strategies:
- wrapped: the seed's ConstantLengthDataset: every sample followed by EOS, concatenated, cut into
  equal blocks; the tail that does not fill a block is dropped (and counted).
- bfd: best-fit decreasing; samples stay whole and each block carries `position_ids` restarting
  at 0 per sample, which transformers turns into a block-diagonal mask: no cross-sample attention.
- none: one sample per row, padded per batch by the collator.

The examples are tested (tests/stages/test_pack.py runs them). Their three samples are (input_ids,
labels) pairs whose first tokens are prompt (label IGNORE = -100) and the rest answer.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..config import PackConfig
from .tokens import IGNORE, Tokens, fit, gather_ranges


@dataclass
class Blocks:
    """Packed rows as flat columns plus row offsets; `table()` makes the Arrow table written out."""

    columns: dict[str, np.ndarray]
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def table(self) -> pa.Table:
        off_type = pa.int32() if self.offsets[-1] < 2**31 else pa.int64()
        offsets = pa.array(self.offsets.astype(off_type.to_pandas_dtype()), off_type)
        make = pa.ListArray if off_type == pa.int32() else pa.LargeListArray
        return pa.table({name: make.from_arrays(offsets, pa.array(values)) for name, values in self.columns.items()})

    def rows(self) -> list[dict[str, list[int]]]:
        return self.table().to_pylist()


def with_eos(tokens: Tokens, eos_id: int) -> Tokens:
    """Every sample followed by EOS, trained when the sample has trained tokens (what tokenize
    does with add_eos; for samples that were tokenized without it).

    >>> samples = Tokens.from_samples([([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]),
    ...                                ([6, 7, 8, 9, 10, 11], [-100, -100, 8, 9, 10, 11])])
    >>> with_eos(samples, 0).ids.tolist()
    [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10, 11, 0]
    """
    ends = tokens.offsets[1:]
    trained_cum = np.concatenate([[0], np.cumsum(tokens.trained, dtype=np.int64)])
    any_trained = trained_cum[ends] > trained_cum[tokens.offsets[:-1]]
    return Tokens(np.insert(tokens.ids, ends, np.int32(eos_id)), np.insert(tokens.trained, ends, any_trained),
                  tokens.offsets + np.arange(len(tokens.offsets), dtype=np.int64))


def pack_wrapped(tokens: Tokens, seq_length: int) -> tuple[Blocks, dict]:
    """The seed's ConstantLengthDataset: sample, EOS, sample, EOS, ... cut into full blocks. The
    samples must already end in EOS (tokenize with add_eos, or with_eos): cutting is then a view.
    Samples run across block boundaries; the tail that fills no block is dropped and counted.

    >>> samples = Tokens.from_samples([([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]),
    ...                                ([6, 7, 8, 9, 10, 11], [-100, -100, 8, 9, 10, 11])])
    >>> blocks, stats = pack_wrapped(with_eos(samples, 0), 4)
    >>> [row["input_ids"] for row in blocks.rows()], stats
    ([[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 10]], {'tail_tokens_dropped': 2})
    >>> blocks.rows()[1]["labels"]  # sample 2's prompt token 4, sample 3's prompt token 6
    [-100, 5, 0, -100]
    """
    n = int(tokens.offsets[-1]) // seq_length
    used = n * seq_length
    blocks = Blocks({"input_ids": tokens.ids[:used], "labels": tokens.labels()[:used] if used else tokens.ids[:0]},
                    np.arange(n + 1, dtype=np.int64) * seq_length)
    return blocks, {"tail_tokens_dropped": int(tokens.offsets[-1]) - used}


def bfd_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each item (longest first) goes to the fullest bin it still fits, the
    lowest-numbered one among equals. Open bins are kept in one heap per remaining space, and
    the distinct remaining spaces (at most capacity of them) in a sorted list: a lookup is a
    bisect over a few hundred ints, whatever the number of bins.

    >>> bfd_bins([3, 2, 6], capacity=8)  # 6 opens a bin, 3 does not fit beside it, 2 fills the first
    [[2, 1], [0]]
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    sizes = list(map(int, lengths))
    bins: list[list[int]] = []
    by_space: list[list[int]] = [[] for _ in range(capacity + 1)]  # heaps of bin numbers
    spaces: list[int] = []  # sorted remaining spaces that have an open bin
    for i in order:
        n = sizes[i]
        pos = bisect.bisect_left(spaces, n)
        if pos < len(spaces):
            space = spaces[pos]
            b = heapq.heappop(by_space[space])
            if not by_space[space]:
                del spaces[pos]
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        rest = space - n
        if rest > 0:
            if not by_space[rest]:
                bisect.insort(spaces, rest)
            heapq.heappush(by_space[rest], b)
    return bins


def pack_bfd(tokens: Tokens, seq_length: int) -> Blocks:
    """Whole samples in best-fit-decreasing blocks, in dataset order inside a block; position_ids
    restart at 0 at each sample, which keeps attention within samples.

    >>> samples = Tokens.from_samples([([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]),
    ...                                ([6, 7, 8, 9, 10, 11], [-100, -100, 8, 9, 10, 11])])
    >>> for row in pack_bfd(samples, 8).rows():
    ...     print(row)
    {'input_ids': [4, 5, 6, 7, 8, 9, 10, 11], 'labels': [-100, 5, -100, -100, 8, 9, 10, 11], 'position_ids': [0, 1, 0, 1, 2, 3, 4, 5]}
    {'input_ids': [1, 2, 3], 'labels': [-100, 2, 3], 'position_ids': [0, 1, 2]}
    """
    lengths = tokens.lengths
    bins = bfd_bins(lengths, seq_length)
    for members in bins:
        members.sort()  # dataset order inside a block: easier to read and to test
    order = np.fromiter(itertools.chain.from_iterable(bins), dtype=np.int64, count=len(tokens))
    idx, positions = gather_ranges(tokens.offsets[:-1][order], lengths[order])
    per_bin = np.fromiter(map(len, bins), dtype=np.int64, count=len(bins))
    block_offsets = np.concatenate([[0], np.cumsum(lengths[order])[np.cumsum(per_bin) - 1]]) if len(bins) else np.zeros(1, np.int64)
    ids = tokens.ids[idx]
    labels = np.where(tokens.trained[idx], ids, np.int32(IGNORE))
    return Blocks({"input_ids": ids, "labels": labels, "position_ids": positions.astype(np.int32, copy=False)},
                  block_offsets.astype(np.int64))


def pack(tokens: Tokens, cfg: PackConfig) -> tuple[Blocks, dict]:
    """Blocks for cfg.strategy, and what happened to the tokens. For wrapped, every sample must end
    in EOS (tokenize_split with add_eos, or with_eos); bfd and none first fit each sample into
    seq_length as cfg.overlong says (data/tokens.py fit).

    >>> samples = Tokens.from_samples([([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]),
    ...                                ([6, 7, 8, 9, 10, 11], [-100, -100, 8, 9, 10, 11])])
    >>> blocks, stats = pack(samples, PackConfig(seq_length=8, strategy="none"))
    >>> [row["input_ids"] for row in blocks.rows()]
    [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]
    >>> {k: stats[k] for k in ("samples", "tokens_in", "blocks", "tokens", "trained_tokens", "padding_share")}
    {'samples': 3, 'tokens_in': 11, 'blocks': 3, 'tokens': 11, 'trained_tokens': 7, 'padding_share': 0.5417}
    """
    stats: dict[str, Any] = {"samples": len(tokens), "tokens_in": int(tokens.offsets[-1])}
    if cfg.strategy == "wrapped":
        blocks, extra = pack_wrapped(tokens, cfg.seq_length)
    else:
        fitted, extra = fit(tokens, cfg.seq_length, cfg.overlong)
        if cfg.strategy == "bfd":
            blocks = pack_bfd(fitted, cfg.seq_length)
        else:
            blocks = Blocks({"input_ids": fitted.ids, "labels": fitted.labels()}, fitted.offsets)
    stats.update(extra)
    n_tokens = int(blocks.offsets[-1])
    slots = len(blocks) * cfg.seq_length
    stats.update({
        "blocks": len(blocks),
        "tokens": n_tokens,
        "trained_tokens": int(np.count_nonzero(blocks.columns["labels"] != IGNORE)),
        "padding_share": round(1 - n_tokens / slots, 4) if slots else 0.0,
    })
    return blocks, stats
