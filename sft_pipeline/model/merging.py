"""Merging a LoRA adapter, and checking the merge: the NF4-dequantized base a QLoRA adapter
learned against, the expected merged weights computed independently of PEFT, and logit gaps.

The dequantized base takes every value from the NF4 model as training loaded it (NF4 codes and
scales dequantized in fp32; embeddings, norms and biases as they were, bf16-rounded in a bf16
run).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from ..config import Recipe
from ..errors import PipelineError

console = Console(stderr=True)


class MergeError(PipelineError, RuntimeError):
    """The base cannot be merged, or the merged model is not the trained one (weights or logits
    differ): nothing is saved."""


def _is_4bit(param: Any) -> bool:
    return param.__class__.__name__ == "Params4bit"


def nf4_layers(model: Any) -> dict[str, Any]:
    """The bitsandbytes Linear4bit modules, by their name in the plain model (PEFT's
    '.base_layer' dropped)."""
    import bitsandbytes as bnb

    return {name.replace(".base_layer", ""): module for name, module in model.named_modules()
            if isinstance(module, bnb.nn.Linear4bit)}


def dequantize(module: Any, dtype: Any) -> Any:
    """A Linear4bit's weight as training's matmul sees it, without rounding: NF4 code x block scale
    (double-quantized scales dequantized first), computed in float32, then cast to dtype."""
    import copy

    import bitsandbytes as bnb
    import torch

    if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
        # repacked for bitsandbytes' CPU inference kernel (models.keep_training_matmul prevents it)
        raise MergeError("merge: an NF4 weight was repacked for bitsandbytes' CPU inference kernel; "
                         "load it with sft_pipeline.model.loader.load_model")
    state = copy.copy(module.weight.quant_state)
    state.dtype = torch.float32  # dequantize_4bit writes its output in state.dtype
    return bnb.functional.dequantize_4bit(module.weight.data, state).to(dtype)


def compute_dtype_of(model: Any) -> Any:
    """What the NF4 layers multiply in (bnb_4bit_compute_dtype; the first one's)."""
    import torch

    return next((m.compute_dtype for m in nf4_layers(model).values() if m.compute_dtype is not None), torch.float32)


def upcast_to_fp32(model: Any) -> None:
    """Compute in float32 on exactly the same values: the NF4 layers keep their 4-bit codes and
    scales and dequantize to and multiply in float32; every other floating parameter and buffer
    (bf16 embeddings, norms, LoRA) is cast to float32, which is exact."""
    import torch

    for module in nf4_layers(model).values():
        module.compute_dtype = torch.float32
        module.weight.quant_state.dtype = torch.float32
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if not _is_4bit(tensor) and tensor.is_floating_point() and tensor.dtype != torch.float32:
                tensor.data = tensor.data.float()


def dequantized_base(recipe: Recipe, dtype: Any, source: Any = None) -> Any:
    """The merge base: a full-precision model (dtype) holding exactly the values the adapter saw in
    QLoRA training. `source` is the NF4 model training saw (as prepare builds it, with or without
    the adapter); each NF4 linear gets its dequantized weight and every other parameter (embeddings,
    tied LM head, norms, biases) its value there, so a bf16 run's bf16-rounded embeddings and the
    NF4 codes quantized from the bf16 weights are what is merged into, not the checkpoint's."""
    import torch

    from .loader import load_model

    if source is None:
        source = load_model(recipe.model.ref, dtype=dtype, quantization="nf4",
                            trust_remote_code=recipe.model.trust_remote_code, allow_pickle=recipe.model.allow_pickle)
    if hasattr(source, "get_base_model"):
        source = source.get_base_model()
    full = load_model(recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                      allow_pickle=recipe.model.allow_pickle)
    params = dict(full.named_parameters())
    assigned: set[str] = set()
    layers = nf4_layers(source)
    with torch.no_grad():
        for name, module in layers.items():
            params[f"{name}.weight"].copy_(dequantize(module, dtype))
            assigned.add(f"{name}.weight")
        for name, param in source.named_parameters():
            if _is_4bit(param) or "lora_" in name:
                continue
            key = name.replace(".base_layer", "")
            params[key].copy_(param.to(dtype))
            assigned.add(key)
    missing = sorted(set(params) - assigned)
    if missing:
        raise MergeError(f"merge: the NF4 model has no value for {', '.join(missing[:3])}")
    console.print(f"dequantized {len(layers)} NF4 linear layers into the merge base")
    return full


WEIGHT_RTOL = 1e-3


def expected_merged_weights(peft_model: Any) -> dict[str, Any]:
    """W0 + scale * B @ A for every LoRA layer, computed here from the adapter's own tensors and
    config (not by peft's merge), so the merge is checked independently."""
    import math

    import torch

    cfg = peft_model.peft_config["default"]
    scale = cfg.lora_alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
    expected = {}
    with torch.no_grad():
        for name, module in peft_model.base_model.model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a = module.lora_A["default"].weight.float()
                b = module.lora_B["default"].weight.float()
                delta = scale * (b @ a)
                if getattr(cfg, "fan_in_fan_out", False):
                    delta = delta.T
                expected[name] = module.base_layer.weight.float() + delta
    return expected


def weight_check(merged: Any, expected: dict[str, Any]) -> float:
    """Largest |merged - expected| over all LoRA layers, relative to the largest |expected|."""
    modules = dict(merged.named_modules())
    worst = 0.0
    for name, want in expected.items():
        got = modules[name].weight.float()
        worst = max(worst, float((got - want).abs().max() / want.abs().max().clamp(min=1e-12)))
    return worst


def logits_of(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        return model(**batch).logits.float()


def probe_batch(tokenizer: Any, texts: list[str], max_tokens: int = 64) -> dict[str, Any]:
    """The verification inputs, right-padded. The side is passed for this call only: setting
    `tokenizer.padding_side` would change it for whoever uses the tokenizer next."""
    return dict(tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens,
                          padding_side="right"))


def max_gap(a: Any, b: Any, mask: Any) -> float:
    return float(((a - b).abs().amax(-1) * mask).max())
