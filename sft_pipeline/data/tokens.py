"""Tokenized samples as flat arrays, and fitting them into a block length.

Tokens live in flat numpy arrays with per-sample offsets (`Tokens`) from the tokenizer to the
Arrow file: fitting and packing are index arithmetic over whole arrays, never a Python loop over
tokens. Labels are the token ids where the loss applies and IGNORE elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..progress import progress
from .arrow_io import count_rows, iter_batches
from .control import text_encoder

IGNORE = -100  # the label of a position the loss skips (PyTorch's cross_entropy ignore_index)

OUTCOMES = ("kept", "truncated", "split", "dropped_overlong", "dropped_no_labels")

@dataclass
class Tokens:
    """Samples as flat arrays: sample i is ids[offsets[i]:offsets[i+1]]; `trained` marks the
    tokens the loss applies to; `turn_ends` (ragged, by `turn_offsets`) are the token positions
    where each assistant turn ends, the only places a long conversation may be split."""

    ids: np.ndarray  # int32
    trained: np.ndarray  # bool
    offsets: np.ndarray  # int64, len n + 1
    turn_ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    turn_offsets: np.ndarray | None = None  # int64, len n + 1

    def __post_init__(self) -> None:
        if self.turn_offsets is None:
            self.turn_offsets = np.zeros(len(self.offsets), np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def labels(self) -> np.ndarray:
        return np.where(self.trained, self.ids, np.int32(IGNORE))

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.ids[lo:hi], np.where(self.trained[lo:hi], self.ids[lo:hi], IGNORE)

    def ends(self, i: int) -> np.ndarray:
        assert self.turn_offsets is not None
        return self.turn_ends[self.turn_offsets[i] : self.turn_offsets[i + 1]]

    @classmethod
    def concat(cls, parts: Sequence["Tokens"]) -> "Tokens":
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(1, np.int64))
        return cls(
            ids=np.concatenate([p.ids for p in parts]),
            trained=np.concatenate([p.trained for p in parts]),
            offsets=_join_offsets([p.offsets for p in parts]),
            turn_ends=np.concatenate([p.turn_ends for p in parts]),
            turn_offsets=_join_offsets([p.turn_offsets for p in parts]),  # type: ignore[misc]
        )

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[Sequence[int], Sequence[int]]]) -> "Tokens":
        """From (input_ids, labels) pairs; each sample is one turn ending at its last token."""
        ids, trained, lengths = [], [], [0]
        for sample_ids, labels in samples:
            ids.append(np.asarray(sample_ids, np.int32))
            trained.append(np.asarray(labels) != IGNORE)
            lengths.append(len(sample_ids))
        offsets = np.cumsum(lengths, dtype=np.int64)
        return cls(np.concatenate(ids) if ids else np.zeros(0, np.int32),
                   np.concatenate(trained) if trained else np.zeros(0, bool), offsets,
                   turn_ends=np.diff(offsets), turn_offsets=np.arange(len(offsets), dtype=np.int64))


def _join_offsets(parts: list[np.ndarray]) -> np.ndarray:
    out, base = [np.zeros(1, np.int64)], 0
    for o in parts:
        out.append(o[1:] + base)
        base += int(o[-1])
    return np.concatenate(out)


def _encode(texts: list[str], tokenizer: Any) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and character offsets. The Rust backend is called directly when it would do
    exactly what the tokenizer's __call__ does (no truncation or padding configured): the
    Python wrapper around it costs a third of the time."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        encodings = backend.encode_batch(texts, add_special_tokens=True)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
    return enc["input_ids"], enc["offset_mapping"]


def _encode_all(texts: list[str], tokenizer: Any, content_spans: list[list[list[int]]] | None) -> tuple[list, list]:
    """_encode for the usual samples; the few with control text in their content (non-empty
    content_spans, from the template stage) tokenized with that content as text."""
    marked = [i for i, c in enumerate(content_spans or []) if c]
    if not marked:
        return _encode(texts, tokenizer)
    plain = sorted(set(range(len(texts))) - set(marked))
    ids: list = [None] * len(texts)
    offsets: list = [None] * len(texts)
    for rows, (got_ids, got_offsets) in (
            (plain, _encode([texts[i] for i in plain], tokenizer) if plain else ([], [])),
            (marked, text_encoder(tokenizer).encode([texts[i] for i in marked], [content_spans[i] for i in marked]))):
        for i, a, b in zip(rows, got_ids, got_offsets):
            ids[i], offsets[i] = a, b
    return ids, offsets


def tokenize(texts: list[str], spans: list[list[list[int]]], tokenizer: Any, loss_on: str, add_eos: bool,
             content_spans: list[list[list[int]]] | None = None) -> Tokens:
    """One batch of rendered samples to Tokens. A token is trained when its characters overlap
    an assistant span (byte-level BPE glues the answer's first word to the space before it); an
    appended EOS closes the last (assistant) turn and is trained when anything before it is.
    `content_spans` (per sample, may be empty) are the record's content fields to tokenize as
    text (data/control.py)."""
    all_ids, all_offsets = _encode_all(texts, tokenizer, content_spans)
    eos = tokenizer.eos_token_id
    ids_parts, trained_parts, lengths, ends, n_ends = [], [], [0], [], [0]
    for text, ids, offsets, sample_spans in zip(texts, all_ids, all_offsets, spans):
        ids_arr = np.asarray(ids, dtype=np.int32)
        bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        starts, stops = bounds[:, 0], bounds[:, 1]
        keep = np.zeros(len(ids_arr), dtype=bool)
        turn_ends = []
        for s, e in sample_spans:
            keep |= (stops > s) & (starts < e) & (stops > starts)
            turn_ends.append(int(np.searchsorted(starts, e, side="left")))  # first token starting at/after e
        if loss_on == "all":
            keep[:] = True
        if add_eos:
            ids_arr = np.append(ids_arr, np.int32(eos))
            # the EOS closes the last turn, and is trained with it: not after a last turn left
            # untrained (a per-turn weight of 0), whose span then stops short of the text's end
            closes_trained = loss_on == "all" or (bool(sample_spans) and sample_spans[-1][1] >= len(text))
            keep = np.append(keep, keep.any() and closes_trained)
            if turn_ends and turn_ends[-1] == len(ids_arr) - 1:
                turn_ends[-1] += 1  # the EOS belongs to the last turn
        ids_parts.append(ids_arr)
        trained_parts.append(keep)
        lengths.append(len(ids_arr))
        ends.extend(turn_ends)
        n_ends.append(len(turn_ends))
    return Tokens(np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
                  np.concatenate(trained_parts) if trained_parts else np.zeros(0, bool),
                  np.cumsum(lengths, dtype=np.int64), np.asarray(ends, np.int64), np.cumsum(n_ends, dtype=np.int64))


def tokenize_split(folder: Path, tokenizer: Any, loss_on: str, add_eos: bool, batch_rows: int = 1000) -> Tokens:
    """Tokenize a template split batch by batch (the fast tokenizer uses every core per batch)."""
    parts = []
    with progress() as bar:
        task = bar.add_task(f"tokenize {Path(folder).name}", total=count_rows(folder))
        for batch in iter_batches(folder):
            cols = batch.select([c for c in ("text", "spans", "content_spans") if c in batch.schema.names]).to_pydict()
            for lo in range(0, batch.num_rows, batch_rows):
                chunk = slice(lo, lo + batch_rows)
                parts.append(tokenize(cols["text"][chunk], cols["spans"][chunk], tokenizer, loss_on, add_eos,
                                      cols.get("content_spans", [[]] * batch.num_rows)[chunk]))
            bar.advance(task, batch.num_rows)
    return Tokens.concat(parts)

# -- fitting samples into seq_length (bfd and none) ------------------------------------------------


def fit(tokens: Tokens, seq_length: int, overlong: str) -> tuple[Tokens, dict[str, int]]:
    """Samples of at most seq_length tokens, in dataset order. Every input sample ends in exactly
    one of OUTCOMES; tokens_in == tokens_out + tokens_truncated + tokens_dropped."""
    lengths = tokens.lengths
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    trained_cum = np.concatenate([[0], np.cumsum(tokens.trained, dtype=np.int64)])
    short = lengths <= seq_length
    has_labels = trained_cum[tokens.offsets[1:]] > trained_cum[tokens.offsets[:-1]]
    if (short & has_labels).all():  # nothing to cut or drop: the common case costs no copy
        counts["kept"] = len(tokens)
        counts.update({"pieces": len(tokens), "tokens_truncated": 0, "tokens_dropped": 0})
        return tokens, counts
    fine = np.flatnonzero(short & has_labels)
    counts["kept"] = len(fine)
    counts["dropped_no_labels"] = int((short & ~has_labels).sum())
    tokens_dropped = int(lengths[short & ~has_labels].sum())
    tokens_truncated = 0
    # short samples are kept or dropped with array operations; only long ones are looked at one by one
    extra: list[tuple[int, int, int, int]] = []  # (sample, piece number, start, stop) in flat positions
    for i in np.flatnonzero(~short).tolist():
        lo, n = int(tokens.offsets[i]), int(lengths[i])
        if overlong == "drop":
            counts["dropped_overlong"] += 1
            tokens_dropped += n
            continue
        pieces = [(0, seq_length)] if overlong == "truncate" else _pieces(n, tokens.ends(i), seq_length)
        made = [(lo + a, lo + b) for a, b in pieces if trained_cum[lo + b] > trained_cum[lo + a]]
        if not made:
            counts["dropped_no_labels"] += 1  # every trained token lay past seq_length
            tokens_dropped += n
            continue
        counts["split" if len(made) > 1 else "truncated"] += 1
        tokens_truncated += n - sum(b - a for a, b in made)
        extra += [(i, k, a, b) for k, (a, b) in enumerate(made)]
    sample = np.concatenate([fine, np.asarray([e[0] for e in extra], np.int64)])
    piece = np.concatenate([np.zeros(len(fine), np.int64), np.asarray([e[1] for e in extra], np.int64)])
    starts = np.concatenate([tokens.offsets[:-1][fine], np.asarray([e[2] for e in extra], np.int64)])
    stops = np.concatenate([tokens.offsets[1:][fine], np.asarray([e[3] for e in extra], np.int64)])
    order = np.lexsort((piece, sample))
    lens = (stops - starts)[order]
    idx, _ = gather_ranges(starts[order], lens)
    out = Tokens(tokens.ids[idx], tokens.trained[idx], np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    counts.update({"pieces": len(out), "tokens_truncated": tokens_truncated, "tokens_dropped": tokens_dropped})
    return out, counts


def _pieces(length: int, ends: np.ndarray, seq_length: int) -> list[tuple[int, int]]:
    """Cut [0, length) at turn ends into pieces of at most seq_length, greedily taking as many
    whole turns as fit; a single turn longer than seq_length keeps its first seq_length tokens."""
    cuts = sorted({int(e) for e in ends if 0 < e < length} | {length})
    pieces, start = [], 0
    while start < length:
        fitting = [c for c in cuts if start < c <= start + seq_length]
        if fitting:
            pieces.append((start, fitting[-1]))
            start = fitting[-1]
        else:
            pieces.append((start, start + seq_length))
            start = next(c for c in cuts if c > start)
    return pieces

def gather_ranges(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ranges [start, start+len), concatenated, and each index's offset in its
    range; int32 while the numbers fit (half the memory of the largest arrays in this stage)."""
    lens = lens.astype(np.int64)
    total = int(lens.sum())
    top = int(starts.max() + lens.max()) if len(lens) else 0
    dtype = np.int32 if max(total, top) < 2**31 else np.int64
    within = np.arange(total, dtype=dtype)
    within -= np.repeat((np.cumsum(lens) - lens).astype(dtype), lens)
    idx = np.repeat(starts.astype(dtype), lens)
    idx += within
    return idx, within
