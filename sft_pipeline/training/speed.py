"""What train changes on the prepared model for speed (recorded in metrics.json): the attention,
LoRA's input cast under autocast, fast dropout, padding-free rows, Liger kernels on a GPU.

Per-sample attention, padding-free rows and Liger are about the model, so they apply to full
fine-tuning too (as does the labelled-positions loss, trainer.py); LoRA's input cast and fast
dropout are about LoRA layers, which full fine-tuning has none of: each is recorded as off, with
that reason."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from ..config import Recipe
from ..model.precision import Precision

console = Console(stderr=True)


def speed_setup(model: Any, recipe: Recipe, hw: Any, prec: Precision, planned_attention: str | None = None) -> dict[str, Any]:
    """What train changes on the prepared model for speed (recorded in metrics.json).
    planned_attention is what prepare chose (and estimated memory for) on its machine; the
    attention is chosen again for this one, and a difference is said."""
    from . import attention
    from .dropout import use_fast_dropout
    from .loss import causal_lm

    causal = causal_lm(model)
    wanted = attention.choose(causal.config, recipe.model.attn_implementation, hw.device)
    if planned_attention is not None and (wanted or "default") != planned_attention:
        console.print(f"[yellow]attention: {wanted or 'default'} on this machine, where prepare planned "
                      f"{planned_attention} (its memory estimate assumed that one)")
    done: dict[str, Any] = {"attention": attention.use(causal, wanted)}
    if recipe.method == "full":
        done["lora_input_cast"] = "not applicable: method full has no LoRA layers"
        done["fast_lora_dropout"] = "off: method full has no LoRA dropout (the model's own dropout is as it was)"
    else:
        done["lora_input_cast"] = keep_lora_inputs(model) if prec.autocast else "kept: no autocast"
        done["fast_lora_dropout"] = (use_fast_dropout(model) if hw.device == "cpu" and recipe.train.fast_dropout else 0)
    # the batch's rows as one row: nothing computed for padding (attention keeps samples apart)
    done["padding_free"] = done["attention"] in attention.PER_SAMPLE
    done["liger"] = use_liger(causal) if hw.device == "cuda" else "cpu: not used"
    return done


def keep_lora_inputs(model: Any) -> str:
    """Under autocast PEFT's LoRA layers cast their bf16 input up to the adapter's fp32, and
    autocast casts it back down for lora_A's matmul: two copies of every adapted layer's input
    per step for nothing. Without the cast, dropout runs on the bf16 input and lora_A computes in
    bf16 as before (autocast); the adapter weights, gradients and optimizer stay fp32."""
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled") and hasattr(m, "lora_A")]
    for module in layers:
        module.cast_input_dtype_enabled = False
    return f"off on {len(layers)} layers (autocast computes lora_A in the compute dtype)"


def use_liger(causal: Any) -> str:
    """Liger's fused RMSNorm, RoPE and SwiGLU kernels (Triton, GPU only) where liger-kernel is
    installed; not its fused linear cross-entropy, which would replace our labelled-positions loss."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return "not installed"
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=causal, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    except Exception as err:  # a model type or version it does not know
        return f"not applied: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return "rms_norm, rope, swiglu"
