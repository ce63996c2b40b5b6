"""Batching packed rows: pad each column to the longest row in the batch.

Padding gets label -100; for rows with `position_ids` the padding restarts at 0 so it forms its
own (ignored) sequence and never shares attention with real tokens.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


class PackedCollator:
    def __init__(self, pad_id: int, multiple_of: int = 1):
        self.pad_id = pad_id
        self.multiple_of = multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // self.multiple_of) * self.multiple_of
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
        # Packed rows carry their sample boundaries in position_ids; an attention_mask would make
        # transformers ignore them and let samples attend to each other.
        if not packed and any(len(r["input_ids"]) < width for r in rows):
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch
