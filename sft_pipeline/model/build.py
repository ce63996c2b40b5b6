"""The prepared model: base (maybe NF4) + the seed's preparation + LoRA, as prepare records it
and train, merge and evaluate rebuild it; or, under `method: full`, the base with every weight
trainable.

The seed's preparation: freeze the base, cast 1-D parameters (norms, biases) to fp32, gradient
checkpointing with input grads, LM head output in fp32; optionally NF4 with double quantization
(QLoRA); then LoRA. Full fine-tuning keeps what is not about freezing: checkpointing (without
input grads: the embeddings are trained, so the first layer's input has a gradient anyway) and the
fp32 LM-head output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Recipe
from . import precision
from .hardware import Hardware


def lora_config(recipe: Recipe) -> Any:
    from peft import LoraConfig

    cfg = recipe.lora
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias=cfg.bias,
        target_modules=cfg.target_modules, use_rslora=cfg.use_rslora, task_type="CAUSAL_LM",
    )


def _cast_output_fp32(module: Any, inputs: Any, output: Any) -> Any:
    return output.float()


def seed_preparation(model: Any, checkpointing: bool) -> None:
    """Freeze, fp32 1-D params, checkpointing, fp32 LM-head output; works on the meta device."""
    import torch

    for param in model.parameters():
        param.requires_grad = False
        if param.ndim == 1 and param.dtype != torch.float32 and param.__class__.__name__ == "Parameter":
            param.data = param.data.to(torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    fp32_head_output(model)


def full_preparation(model: Any, checkpointing: bool) -> None:
    """Every weight trainable (they are fp32: precision.plan), checkpointing, fp32 LM-head output."""
    for param in model.parameters():
        param.requires_grad = True
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fp32_head_output(model)


def fp32_head_output(model: Any) -> None:
    """The seed wraps lm_head in a CastOutputToFloat module; a hook does the same and keeps the
    module (and its weight tying) intact for TRL's fused LM head."""
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_sft_fp32_hook", False):
        head.register_forward_hook(_cast_output_fp32)
        head._sft_fp32_hook = True


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) as the seed's print_trainable_parameters counts them (LoRA included); a
    model without PEFT counts each parameter once (tied embeddings and LM head are one)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())  # parameters() yields a shared parameter once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_layout(peft_model: Any, layers: int) -> dict[str, Any]:
    """Per decoder layer: the summed input widths and ranks of the LoRA-adapted linear layers,
    whether their dropout is on, and whether the MLP is gated (gate_proj)."""
    inputs = ranks = 0
    dropout = False
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features") and "default" in getattr(module, "r", {}):
            inputs += module.in_features
            ranks += module.r["default"]
            drop = module.lora_dropout["default"]
            dropout = dropout or float(getattr(drop, "p", 0.0)) > 0
    return {"inputs": inputs // max(layers, 1), "ranks": ranks // max(layers, 1), "dropout": dropout,
            "gated": gated_mlp(peft_model)}


def gated_mlp(model: Any) -> bool:
    """A gate_proj/up_proj MLP (the Llama family), which keeps more activations than one between two linears."""
    return any(name.endswith("gate_proj") for name, _ in model.named_modules())


def build_model(recipe: Recipe, hw: Hardware, checkpointing: bool, adapter: str | Path | None = None,
                trainable: bool = True) -> Any:
    """The prepared model: base (maybe NF4) + seed preparation + LoRA (new, or loaded); under
    method full the base itself, every weight trainable (`adapter` does not apply)."""
    from peft import PeftModel, get_peft_model

    from .loader import load_model

    prec = precision.plan(recipe, hw)
    base = load_model(recipe.model.ref, dtype=prec.weights_dtype, quantization=recipe.model.quantization,
                      compute_dtype=prec.compute_dtype,
                      attn_implementation=recipe.model.attn_implementation,
                      trust_remote_code=recipe.model.trust_remote_code, allow_pickle=recipe.model.allow_pickle)
    base.config.use_cache = False
    if recipe.method == "full":
        if adapter is not None:
            raise ValueError("build_model: method full has no adapter to load")
        full_preparation(base, checkpointing)
        return base
    seed_preparation(base, checkpointing)
    if adapter is not None:
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    return get_peft_model(base, lora_config(recipe))
