"""Prepare's memory plan: the estimate from the model's config (on the meta device, nothing
loaded), for the recipe's method (LoRA, QLoRA or full), and the gradient-checkpointing decision it
implies for a machine's memory."""

from __future__ import annotations

from typing import Any

from ..config import Recipe
from ..model import precision
from ..model.build import count_params, gated_mlp, lora_config, lora_layout
from ..model.hardware import Hardware
from .memory import FullTraining, MemoryEstimate, estimate, fmt_gib

NF4_BYTES_PER_WEIGHT = 0.5 + 0.0625  # 4-bit values plus double-quantized absmax per 64


def plan_memory(recipe: Recipe, config: Any, hw: Hardware) -> tuple[MemoryEstimate, bool, dict[str, Any]]:
    """Estimate from the config on the meta device, and decide gradient checkpointing."""
    import torch
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from . import attention
    from .loss import MATERIALIZE_LIMIT_BYTES
    from .memory import dims

    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    meta.tie_weights()  # on the meta device ties are not made by default: count shared weights once
    full = recipe.method == "full"
    if full:  # every weight trains: nothing frozen, no LoRA
        total = trainable = count_params(meta)[1]
        layout = {"inputs": 0, "ranks": 0, "dropout": False, "gated": gated_mlp(meta)}
    else:
        peft_meta = get_peft_model(meta, lora_config(recipe))
        trainable, total = count_params(peft_meta)
        layout = lora_layout(peft_meta, dims(config).layers)
    prec = precision.plan(recipe, hw)
    weight_bytes = NF4_BYTES_PER_WEIGHT if recipe.model.quantization == "nf4" else torch.finfo(prec.weights_dtype).bits / 8
    # under bf16 autocast the matmuls' outputs, which are most of what autograd keeps, are bf16
    act_bytes = 4 if prec.compute == "fp32" else 2
    # train's attention: per-sample (packed_sdpa, flash) keeps no scores; transformers' SDPA with
    # the block-diagonal mask of bfd rows runs the math path on a CPU, which keeps them
    attn = attention.choose(config, recipe.model.attn_implementation, hw.device)
    materializes = (recipe.pack.strategy == "bfd" and hw.device == "cpu" and attn not in attention.PER_SAMPLE) \
        or attn == "eager"
    est = estimate(config, total - trainable, trainable, recipe.train.per_device_train_batch_size,
                   recipe.pack.seq_length, weight_bytes, act_bytes, sdpa_materializes_scores=materializes,
                   lora_inputs_per_layer=layout["inputs"], lora_rank_per_layer=layout["ranks"],
                   dropout=layout["dropout"], gated_mlp=layout["gated"], device=hw.device,
                   logits_limit_bytes=MATERIALIZE_LIMIT_BYTES,
                   eval_batch=recipe.train.per_device_eval_batch_size if recipe.train.eval_strategy != "no" else 0,
                   full=full_training(meta, act_bytes, attn, hw.device) if full else None)
    checkpointing, why, budget = decide_checkpointing(recipe.model.gradient_checkpointing, est.total(False), hw)
    decision = {"gradient_checkpointing": checkpointing, "why": why, "budget_bytes": budget, "attention": attn or "default"}
    return est, checkpointing, {"trainable": trainable, "total": total, **decision}


def full_training(meta: Any, act_bytes: int, attn: str | None, device: str) -> FullTraining:
    """The widths full fine-tuning keeps (memory.FullTraining), for train's precision and attention:
    fp32 weights keep the residual stream fp32; packed_sdpa computes a bf16 CPU step's attention in
    fp32; autocast keeps a low-precision copy of every linear weight (the LM head's too)."""
    import torch

    from . import attention

    linear = {id(m.weight): m.weight.numel() for m in meta.modules() if isinstance(m, torch.nn.Linear)}
    upcast = device == "cpu" and act_bytes == 2 and attn == attention.NAME
    return FullTraining(residual_bytes=4, attention_bytes=4 if upcast else act_bytes,
                        weight_copy_bytes=sum(linear.values()) * act_bytes if act_bytes < 4 else 0)


def memory_report(recipe: Recipe, est: MemoryEstimate, checkpointing: bool, plan: dict[str, Any]) -> str:
    """The estimate, printed before the model is loaded."""
    f, fc = est.allocator_factor, est.allocator_factor_checkpointed
    return (
        f"[bold]Memory estimate[/] (batch {recipe.train.per_device_train_batch_size} x {recipe.pack.seq_length} tokens, "
        f"attention {plan['attention']}): "
        + (f"weights + gradients + Adam (fp32, 16 B/param) {fmt_gib(est.adapter_and_optimizer)}" if recipe.method == "full"
           else f"weights {fmt_gib(est.weights)}, adapter + gradient + Adam {fmt_gib(est.adapter_and_optimizer)}")
        + f", activations {fmt_gib(est.activations_full)} without checkpointing / "
        f"{fmt_gib(est.activations_checkpointed)} with, logits {fmt_gib(est.logits)}"
        + (f", evaluation (batch {recipe.train.per_device_eval_batch_size}, no gradients) {fmt_gib(est.evaluation)}"
           if est.evaluation else "")
        + (f", runtime {fmt_gib(est.runtime)}, allocator x{f:g} (x{fc:g} with checkpointing) on activations and logits" if est.runtime else "")
        + f"; peak {fmt_gib(est.total(False))} without checkpointing / {fmt_gib(est.total(True))} with; "
        f"gradient checkpointing {'on' if checkpointing else 'off'} ({plan['why']})"
    )


def decide_checkpointing(choice: str, without_bytes: int, hw: Hardware) -> tuple[bool, str, int]:
    """Gradient checkpointing for this machine: `auto` turns it on when the estimate without it
    exceeds 80% of the memory here. prepare decides it; train decides again on the machine that
    trains (the two may differ) and says so when the answers differ."""
    budget = hw.gpu_memory_bytes if hw.device == "cuda" else hw.memory_bytes
    if choice != "auto":
        return choice == "on", f"recipe: {choice}", budget
    where = f"{'GPU ' if hw.device == 'cuda' else ''}memory"
    return without_bytes > 0.8 * budget, f"auto: {fmt_gib(without_bytes)} estimated without it vs {fmt_gib(budget)} {where}", budget
