"""The training loss with the LM head applied only where a label is set.

A causal LM's own loss projects every position through the LM head, (batch, seq, vocab) logits,
and then ignores the positions labelled -100. With `loss_on: assistant` a quarter to a half of
the positions are prompts, and on a small model the LM head is a large share of the step (on
SmolLM2-135M, 49152 x 576 per token: a fifth of the whole forward). So: run the backbone to its
hidden states, keep the (shifted) labelled positions, project only those, cross-entropy. The
result is the model's own loss, summed over labelled tokens and divided by their count (or by
`num_items_in_batch`, as Trainer passes it for gradient accumulation); tests check it equals
`model(..., labels=...).loss` and gives the same gradients.

The labelled positions' logits are materialized (fastest on a CPU) unless they would exceed
`MATERIALIZE_LIMIT_BYTES`; then TRL's chunked log-prob kernel (Triton on a GPU) projects them in
tiles and recomputes the tiles in backward, so no (tokens, vocab) tensor is kept. Without
gradients (evaluation, at the eval batch size, often 4x the training one) the logits are made
and reduced `NO_GRAD_SLICE_BYTES` at a time: the same sum, and a peak that does not grow with the batch.
"""

from __future__ import annotations

import functools
from typing import Any

from ..data.tokens import IGNORE

MATERIALIZE_LIMIT_BYTES = 512 * 1024**2
NO_GRAD_SLICE_BYTES = 64 * 1024**2  # evaluation: fp32 logits of this many bytes at a time
# Config keys of models whose forward transforms the LM head's output (softcapping, scaling):
# their loss is left to the model's own forward.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                    "lm_head_multiplier")


def causal_lm(model: Any) -> Any:
    """The *ForCausalLM module under a PEFT wrapper (LoRA layers injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model: Any) -> str | None:
    """None when `labelled_loss` equals this model's own loss; otherwise why it would not."""
    import torch

    causal = causal_lm(model)
    cfg = causal.config.get_text_config() if hasattr(causal.config, "get_text_config") else causal.config
    for key in LOGIT_TRANSFORMS:
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return f"the model's forward applies {key} to its logits"
    if getattr(cfg, "output_router_logits", False):
        return "a mixture-of-experts load-balancing loss is added to the model's own loss"
    head = causal.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        return "the model has no linear LM head"
    backbone = getattr(causal, "base_model", None)
    if backbone is None or backbone is causal:
        return "the model has no separate backbone module"
    return None


def labelled_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                  limit_bytes: int = MATERIALIZE_LIMIT_BYTES) -> tuple[Any, Any]:
    """(loss, number of labelled positions). `inputs` as a causal LM takes them, with `labels`."""
    import torch
    import torch.nn.functional as F

    causal = causal_lm(model)
    backbone, head = causal.base_model, causal.get_output_embeddings()
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    kwargs["use_cache"] = False  # with a cache, transformers would ignore packed rows' position_ids
    hidden = backbone(**kwargs).last_hidden_state
    labels = inputs["labels"][:, 1:].to(hidden.device)
    mask = labels != IGNORE
    selected = hidden[:, :-1][mask]  # (labelled positions, hidden)
    targets = labels[mask]
    count = mask.sum()
    denom = count if num_items_in_batch is None else num_items_in_batch
    denom = torch.as_tensor(denom, device=selected.device).clamp(min=1)
    vocab = head.weight.shape[0]
    if not torch.is_grad_enabled():  # evaluation: nothing kept for backward, so project in slices
        rows = max(1, NO_GRAD_SLICE_BYTES // (vocab * 4))
        total = sum((F.cross_entropy(head(selected[i : i + rows]).float(), targets[i : i + rows], reduction="sum")
                     for i in range(0, len(targets), rows)), selected.new_zeros((), dtype=torch.float32))
    elif targets.numel() * vocab * 4 <= limit_bytes or not _plain_linear(head):
        logits = head(selected).float()
        total = F.cross_entropy(logits, targets, reduction="sum")
    else:
        from trl.kernels import ChunkedLogProbFunction

        log_probs = ChunkedLogProbFunction.apply(selected, head.weight, head.bias, targets, 1.0, 32768, None, 1.0,
                                                 ("log_probs",))[0]
        total = -log_probs.float().sum()
    return total / denom, count


def forward_takes_positions(model: Any) -> bool:
    """Does the model's forward take `logits_to_keep` (transformers' causal LMs do), so the LM
    head can be asked for chosen positions only through the model's own forward? Asked every
    batch: answered once per model class."""
    return _takes_positions(type(causal_lm(model)))


@functools.lru_cache(maxsize=None)
def _takes_positions(cls: type) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def labelled_loss_by_forward(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """labelled_loss through the model's own forward, for a model inside a wrapper (DDP, FSDP2)
    whose forward must run (it synchronises gradients or gathers the sharded weights): the
    forward is asked, through `logits_to_keep`, for the logits of the positions any row has a
    label after, and the loss is taken over the labelled ones, summed and divided as labelled_loss does."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"][:, 1:]
    keep = (labels != IGNORE).any(dim=0).nonzero().squeeze(1)  # positions n whose token n+1 is labelled
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    kwargs["use_cache"] = False
    logits = model(**kwargs, logits_to_keep=keep.to(inputs["input_ids"].device)).logits
    targets = labels[:, keep].to(logits.device)
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    count = (targets != IGNORE).sum()
    denom = count if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(denom, device=total.device).clamp(min=1), count


def _plain_linear(head: Any) -> bool:
    """An nn.Linear whose only forward hook, if any, is prepare.py's fp32 cast of its output
    (the chunked kernel's log-probs are fp32 anyway); a LoRA-wrapped head is not."""
    import torch

    hooks = len(head._forward_hooks) - int(bool(getattr(head, "_sft_fp32_hook", False)))
    return type(head) is torch.nn.Linear and hooks == 0
