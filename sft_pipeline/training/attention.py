"""Attention over packed rows, one causal attention per sample instead of a masked block.

A bfd block holds several samples whose `position_ids` restart at 0. Given no attention_mask,
transformers builds a (batch, 1, seq, seq) block-diagonal causal mask for them, and SDPA then
scores every query against every key of the row and masks most of it away: on the demo's blocks
(4-5 samples of ~110 tokens in 512) that is ~4x the useful work, twice over with the causal half.

`packed_sdpa` (registered with transformers' AttentionInterface as "packed_sdpa") runs SDPA with
`is_causal=True` on each sample's span instead: the same result (a test checks it against the
masked block), no mask built, and only the scores each sample needs. Flash attention 2 does the
same on a GPU through `position_ids` (padding-free), so there the train stage uses it when it is
installed. Rows without sample boundaries take one causal call; any explicit mask falls back to
transformers' SDPA. No attention mask is built for this implementation, so it is only for rows
whose padding, if any, is on the right (what collate.PackedCollator makes): causal attention
already keeps real tokens from seeing right padding.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from typing import Any

NAME = "packed_sdpa"
# implementations that keep the samples of a packed row apart by position_ids alone: rows can be
# concatenated (padding-free) and no (seq, seq) mask or score tensor is made
PER_SAMPLE = (NAME, "flash_attention_2")

# Every attention layer of one forward gets the same position_ids tensor, so its spans are
# computed once per forward (a .tolist() and a Python scan per layer would cost a few percent of
# a small model's step). The one entry holds only a weak reference to that tensor and is dropped
# when the tensor is freed, at the end of its batch: no tensor is kept alive and nothing outlives
# the forward that made it. It cannot answer for another batch, stage or model: a live tensor's
# identity is its own, and the tensor's version counter (bumped by any in-place write) is checked.
_forward_spans: list[tuple[Any, Any, list[list[tuple[int, int]]]]] = []  # [(weakref, version, spans)]


def sample_spans(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each sample: a new one starts wherever the position does not
    follow the previous one."""
    spans = []
    for row in position_ids.tolist():
        starts = [0] + [t for t in range(1, len(row)) if row[t] != row[t - 1] + 1]
        spans.append(list(zip(starts, starts[1:] + [len(row)])))
    return spans


def _version(tensor: Any) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter
        return None


def _forget(ref: Any) -> None:
    """The entry's tensor was freed: drop its spans (unless a newer tensor's replaced them)."""
    if _forward_spans and _forward_spans[0][0] is ref:
        _forward_spans.clear()


def forward_spans(position_ids: Any) -> list[list[tuple[int, int]]]:
    """sample_spans, computed once for all the layers of a forward (see _forward_spans)."""
    version = _version(position_ids)
    if _forward_spans:
        ref, seen_version, spans = _forward_spans[0]
        if ref() is position_ids and seen_version == version:
            return spans
    spans = sample_spans(position_ids)
    _forward_spans[:] = [(weakref.ref(position_ids, _forget), version, spans)]
    return spans


def packed_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    q_len = query.shape[2]
    if (attention_mask is not None or position_ids is None or q_len != key.shape[2] or q_len == 1
            or is_causal is False or not getattr(module, "is_causal", True) or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out_dtype = query.dtype
    upcast = query.device.type == "cpu" and query.dtype == torch.bfloat16
    if upcast:
        # torch's CPU flash-attention backward is ~1.7x slower in bf16 than in fp32 (profiled on
        # SmolLM2's ~100-token samples, AVX512-BF16) and the scores are a sliver of the step, so
        # they are computed in fp32 (outside autocast, which would cast them back to bf16)
        query, key, value = query.float(), key.float(), value.float()
    with torch.autocast("cpu", enabled=False) if upcast else nullcontext():
        out = _per_sample(query, key, value, position_ids, dropout, scaling)
    return out.transpose(1, 2).to(out_dtype).contiguous(), None


def _per_sample(query: Any, key: Any, value: Any, position_ids: Any, dropout: float, scaling: float | None) -> Any:
    import torch
    import torch.nn.functional as F

    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    rows = []
    for b, spans in enumerate(forward_spans(position_ids)):
        if len(spans) == 1:
            rows.append(F.scaled_dot_product_attention(query[b : b + 1], key[b : b + 1], value[b : b + 1],
                                                       dropout_p=dropout, scale=scaling, is_causal=True))
            continue
        parts = [F.scaled_dot_product_attention(query[b : b + 1, :, s:e], key[b : b + 1, :, s:e],
                                                value[b : b + 1, :, s:e], dropout_p=dropout, scale=scaling,
                                                is_causal=True) for s, e in spans]
        rows.append(torch.cat(parts, dim=2))
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)


def register() -> str:
    """Make "packed_sdpa" a valid attn_implementation (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa)
    return NAME


def choose(config: Any, requested: str | None, device: str) -> str | None:
    """The attention implementation the train stage uses, decided from the config alone (prepare
    uses it for the memory estimate, train to set it). A recipe's choice stands. Otherwise: flash
    attention 2 on a GPU where it is installed (padding-free through position_ids); else
    "packed_sdpa" if a shrunken random copy of the architecture keeps packed samples apart with it
    (isolation.probe); else None, the model's default."""
    import importlib.util

    from .isolation import TOLERANCE, probe

    if requested is not None:
        return requested
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    register()
    try:
        return NAME if probe(config, NAME) <= TOLERANCE else None
    except Exception:  # an architecture the probe cannot build
        return None


def use(model: Any, wanted: str | None) -> str:
    """Switch a loaded model to the attention `choose` picked (a failure to switch is printed,
    not raised: the model's own attention is still correct); returns what it uses."""
    if wanted and wanted != model.config._attn_implementation:
        try:
            model.set_attn_implementation(wanted)
        except (ValueError, ImportError) as err:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]attention {wanted} not used: {str(err).splitlines()[0]}")
    return model.config._attn_implementation
