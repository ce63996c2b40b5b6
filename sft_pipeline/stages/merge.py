"""Stage 6, merge: base + adapter -> one standalone model, verified against the adapter model.

For a QLoRA run the adapter learned against NF4-dequantized weights, not the originals. Merging
into the originals (what most tools do) silently shifts the model; we offer both bases and
record the chosen one's logit gap to the adapter on the quantized base that training saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import Recipe
from ..rundir import RunDir, write_json

console = Console(stderr=True)


class MergeError(RuntimeError):
    pass


def dequantized_base(recipe: Recipe, dtype: Any) -> Any:
    """The original-precision model with every NF4-quantized linear replaced by its dequantized
    weight: exactly what the adapter saw during QLoRA training."""
    import bitsandbytes as bnb
    import torch

    from ..models import load_model

    full = load_model(recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                      allow_pickle=recipe.model.allow_pickle)
    quant = load_model(recipe.model.ref, dtype=dtype, quantization="nf4", compute_dtype=torch.float32,
                       trust_remote_code=recipe.model.trust_remote_code, allow_pickle=recipe.model.allow_pickle)
    targets = dict(full.named_modules())
    replaced = 0
    with torch.no_grad():
        for name, module in quant.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                targets[name].weight.copy_(w.to(dtype))
                replaced += 1
    del quant
    console.print(f"dequantized {replaced} NF4 linear layers into the merge base")
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
    tokenizer.padding_side = "right"
    return dict(tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens))


def max_gap(a: Any, b: Any, mask: Any) -> float:
    return float(((a - b).abs().amax(-1) * mask).max())


def run(run: RunDir, out: Path) -> None:
    import datasets
    import torch
    from peft import PeftModel

    from ..hardware import detect
    from ..models import load_model, load_tokenizer
    from .prepare import build_model

    recipe = run.recipe
    cfg = recipe.merge
    train_dir = run.stage_dir("train")
    adapter = train_dir / "adapter"
    dtype = getattr(torch, cfg.dtype)
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    template_dir = run.stage_dir("template") if run.stage_state("template") == "complete" else None
    texts = ["What is the capital of France?", "Explain gradient descent in one paragraph."]
    if template_dir is not None:
        split = "eval" if (template_dir / "eval").is_dir() else "train"
        texts = datasets.load_from_disk(str(template_dir / split))["text"][:4]
    batch = probe_batch(tokenizer, texts)
    mask = batch["attention_mask"].float()

    quantized = recipe.model.quantization == "nf4"
    if quantized:
        # The reference is the adapter on exactly the base training saw: the NF4 one.
        reference = build_model(recipe, detect(), checkpointing=False, adapter=adapter, trainable=False)
        reference.eval()
        ref_logits = logits_of(reference, batch)
        del reference
        base = dequantized_base(recipe, dtype) if cfg.base == "dequantized" else None
    else:
        base = None
    if base is None:
        base = load_model(recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                          allow_pickle=recipe.model.allow_pickle)
    peft_model = PeftModel.from_pretrained(base, str(adapter))
    peft_model.eval()
    if not quantized:
        # Same full-precision base: the unmerged adapter model is the reference, loaded once.
        ref_logits = logits_of(peft_model, batch)
    expected = expected_merged_weights(peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    weight_gap = weight_check(merged, expected)
    del expected
    if weight_gap > WEIGHT_RTOL:
        raise MergeError(f"merge: a merged weight differs from W0 + (alpha/r)*B*A by {weight_gap:.3g} (relative)")
    gap = max_gap(logits_of(merged, batch), ref_logits, mask)

    passed = gap <= cfg.tolerance
    record = {
        "base": cfg.base if quantized else "original",
        "quantized_training": quantized,
        "max_abs_logit_gap": gap,
        "tolerance": cfg.tolerance,
        "passed": passed,
        "reference": "adapter on the NF4 base training saw" if quantized else "adapter on the same full-precision base",
        "probe_texts": len(texts),
        "max_relative_weight_gap": weight_gap,  # merged vs W0 + (alpha/r)*B*A, every LoRA layer
    }
    if not passed and not (quantized and cfg.base == "original"):
        raise MergeError(f"merge: merged logits differ from the adapter's by {gap:.3g} > merge.tolerance {cfg.tolerance}")
    if not passed:
        console.print(f"[yellow]merge.base original: logit gap {gap:.3g} to the quantized-base adapter "
                      f"(> {cfg.tolerance}); merge.base: dequantized matches what training saw")
    merged.save_pretrained(str(out / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "model"))
    console.print(f"merged model saved to {out / 'model'}; max |logit gap| vs adapter = {gap:.3g}")
    write_json(out / "verify.json", record)
    write_json(out / "summary.json", {k: record[k] for k in ("base", "max_abs_logit_gap", "passed")})
