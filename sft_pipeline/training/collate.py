"""Batching packed rows: pad each column to the longest row in the batch, or, padding-free,
concatenate the rows into one.

Padding gets label -100; for rows with `position_ids` the padding restarts at 0 so it forms its
own (ignored) sequence and never shares attention with real tokens. A packed sample's first token
gets label -100 too: the position before it belongs to another sample, which cannot see it (as
TRL's padding-free collator does; with `loss_on: assistant` it is a prompt token anyway).

Padding-free (`padding_free=True`): the batch's rows become one row of their summed length, with
their `position_ids`, so nothing is computed for padding. Only for an attention that keeps the
samples of a row apart by their `position_ids` (attention.packed_sdpa, flash attention 2): the
train stage turns it on when it uses one of those.
"""

from __future__ import annotations

from typing import Any

from ..data.tokens import IGNORE


class PackedCollator:
    """Rows to one batch of tensors: padded to the batch's longest row, or (padding_free) one row."""

    def __init__(self, pad_id: int, padding_free: bool = False):
        self.pad_id = pad_id
        self.padding_free = padding_free

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if self.padding_free:
            ids, labels, pos = [], [], []
            for r in rows:
                ids += list(r["input_ids"])
                labels += list(r["labels"])
                pos += list(r["position_ids"]) if "position_ids" in r else list(range(len(r["input_ids"])))
            batch = {
                "input_ids": torch.tensor([ids], dtype=torch.long),
                "labels": torch.tensor([labels], dtype=torch.long),
                "position_ids": torch.tensor([pos], dtype=torch.long),
            }
            batch["labels"][batch["position_ids"] == 0] = IGNORE  # a row's first label is never a target either
            return batch
        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, pos, mask = [], [], [], []
        packed = "position_ids" in rows[0]
        for r in rows:
            n = len(r["input_ids"])
            pad = width - n
            ids.append(list(r["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(r["labels"]) + [IGNORE] * pad)
            if packed:
                pos.append(list(r["position_ids"]) + list(range(pad)))
            else:
                pos.append(list(range(n)) + [0] * pad)
                mask.append([1] * n + [0] * pad)
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
        }
        if packed:
            batch["labels"][batch["position_ids"] == 0] = IGNORE
        # Packed rows carry their sample boundaries in position_ids; an attention_mask would make
        # transformers ignore them and let samples attend to each other.
        if not packed and any(len(r["input_ids"]) < width for r in rows):
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch


def batch_work(batch: dict[str, Any], pad_id: int | None) -> dict[str, int]:
    """What a batch from PackedCollator asks of the model, padding excluded: `tokens`,
    `labelled` (positions whose next token has a label: where the loss is), and `attention_pairs`
    (the sum over samples of length squared; causal attention scores about half of them).
    Padding is the right tail of a row that is pad tokens without labels."""
    from .attention import sample_spans

    ids = batch["input_ids"].tolist()
    labels = batch["labels"].tolist()
    spans = sample_spans(batch["position_ids"]) if "position_ids" in batch else [[(0, len(r))] for r in ids]
    tokens = labelled = pairs = 0
    for row_ids, row_labels, row_spans in zip(ids, labels, spans):
        n = len(row_ids)
        while n and row_ids[n - 1] == pad_id and row_labels[n - 1] == IGNORE:
            n -= 1
        tokens += n
        labelled += sum(1 for x in row_labels[1:n] if x != IGNORE)
        pairs += sum((min(end, n) - start) ** 2 for start, end in row_spans if start < n)
    return {"tokens": tokens, "labelled": labelled, "attention_pairs": pairs}
