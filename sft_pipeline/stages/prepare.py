"""Stage 4, prepare: what the model becomes before training, recorded before it is paid for.

The seed's preparation: freeze the base, cast 1-D parameters (norms, biases) to fp32, gradient
checkpointing with input grads, LM head output in fp32; optionally NF4 with double quantization
(QLoRA); then LoRA. The initial adapter is saved so train starts from exactly what was recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import Recipe
from ..model import precision
from ..model.hardware import Hardware, detect
from ..training.memory import GIB, MemoryEstimate, estimate, fmt_gib
from ..run.rundir import RunDir, write_json

console = Console(stderr=True)

NF4_BYTES_PER_WEIGHT = 0.5 + 0.0625  # 4-bit values plus double-quantized absmax per 64


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
    # The seed wraps lm_head in a CastOutputToFloat module; a hook does the same and keeps the
    # module (and its weight tying) intact for TRL's fused LM head.
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_sft_fp32_hook", False):
        head.register_forward_hook(_cast_output_fp32)
        head._sft_fp32_hook = True


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) as the seed's print_trainable_parameters counts them (LoRA included)."""
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)


def lora_layout(peft_model: Any, layers: int) -> dict[str, Any]:
    """Per decoder layer: the summed input widths and ranks of the LoRA-adapted linear layers,
    whether their dropout is on, and whether the MLP is gated (gate_proj)."""
    inputs = ranks = 0
    dropout = False
    gated = False
    for name, module in peft_model.named_modules():
        gated = gated or name.endswith("gate_proj")
        if hasattr(module, "lora_A") and hasattr(module, "in_features") and "default" in getattr(module, "r", {}):
            inputs += module.in_features
            ranks += module.r["default"]
            drop = module.lora_dropout["default"]
            dropout = dropout or float(getattr(drop, "p", 0.0)) > 0
    return {"inputs": inputs // max(layers, 1), "ranks": ranks // max(layers, 1), "dropout": dropout, "gated": gated}


def plan_memory(recipe: Recipe, config: Any, hw: Hardware) -> tuple[MemoryEstimate, bool, dict[str, Any]]:
    """Estimate from the config on the meta device, and decide gradient checkpointing."""
    import torch
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from ..training import attention
    from ..training.loss import MATERIALIZE_LIMIT_BYTES
    from ..training.memory import dims

    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    meta.tie_weights()  # on the meta device ties are not made by default: count shared weights once
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
                   eval_batch=recipe.train.per_device_eval_batch_size if recipe.train.eval_strategy != "no" else 0)
    budget = hw.gpu_memory_bytes if hw.device == "cuda" else hw.memory_bytes
    choice = recipe.model.gradient_checkpointing
    if choice == "auto":
        checkpointing = est.total(False) > 0.8 * budget
        why = (f"auto: {fmt_gib(est.total(False))} estimated without it vs {fmt_gib(budget)} "
               f"{'GPU ' if hw.device == 'cuda' else ''}memory")
    else:
        checkpointing = choice == "on"
        why = f"recipe: {choice}"
    decision = {"gradient_checkpointing": checkpointing, "why": why, "budget_bytes": budget, "attention": attn or "default"}
    return est, checkpointing, {"trainable": trainable, "total": total, **decision}


def memory_report(recipe: Recipe, est: MemoryEstimate, checkpointing: bool, plan: dict[str, Any]) -> str:
    """The estimate, printed before the model is loaded."""
    f, fc = est.allocator_factor, est.allocator_factor_checkpointed
    return (
        f"[bold]Memory estimate[/] (batch {recipe.train.per_device_train_batch_size} x {recipe.pack.seq_length} tokens, "
        f"attention {plan['attention']}): weights {fmt_gib(est.weights)}, adapter + gradient + Adam "
        f"{fmt_gib(est.adapter_and_optimizer)}, activations {fmt_gib(est.activations_full)} without checkpointing / "
        f"{fmt_gib(est.activations_checkpointed)} with, logits {fmt_gib(est.logits)}"
        + (f", evaluation (batch {recipe.train.per_device_eval_batch_size}, no gradients) {fmt_gib(est.evaluation)}"
           if est.evaluation else "")
        + (f", runtime {fmt_gib(est.runtime)}, allocator x{f:g} (x{fc:g} with checkpointing) on activations and logits" if est.runtime else "")
        + f"; peak {fmt_gib(est.total(False))} without checkpointing / {fmt_gib(est.total(True))} with; "
        f"gradient checkpointing {'on' if checkpointing else 'off'} ({plan['why']})"
    )


def build_model(recipe: Recipe, hw: Hardware, checkpointing: bool, adapter: str | Path | None = None,
                trainable: bool = True) -> Any:
    """The prepared model: base (maybe NF4) + seed preparation + LoRA (new, or loaded)."""
    from peft import PeftModel, get_peft_model

    from ..model.loader import load_model

    prec = precision.plan(recipe, hw)
    base = load_model(recipe.model.ref, dtype=prec.weights_dtype, quantization=recipe.model.quantization,
                      compute_dtype=prec.compute_dtype,
                      attn_implementation=recipe.model.attn_implementation,
                      trust_remote_code=recipe.model.trust_remote_code, allow_pickle=recipe.model.allow_pickle)
    base.config.use_cache = False
    seed_preparation(base, checkpointing)
    if adapter is not None:
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    return get_peft_model(base, lora_config(recipe))


def run(run: RunDir, out: Path) -> None:
    import torch
    from transformers import AutoConfig

    from ..model.loader import resolve

    recipe = run.recipe
    hw = detect()
    prec = precision.plan(recipe, hw)
    if prec.warning:
        console.print(f"[bold yellow]warning:[/] {prec.warning}")
    torch.manual_seed(recipe.train.seed)
    resolved = resolve(recipe.model.ref)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=recipe.model.trust_remote_code)
    est, checkpointing, plan = plan_memory(recipe, config, hw)
    console.print(memory_report(recipe, est, checkpointing, plan))
    model = build_model(recipe, hw, checkpointing)
    trainable, total = count_params(model)
    console.print(f"trainable params: {trainable} || all params: {total} || trainable%: {100 * trainable / total:.4f}")
    model.save_pretrained(str(out / "adapter"))
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    adapter_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.requires_grad})
    if adapter_dtypes != ["float32"]:
        raise RuntimeError(f"prepare: the trainable (LoRA) parameters are {adapter_dtypes}, expected float32")
    record = {
        "model_ref": recipe.model.ref,
        "resolved": resolved.path,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4),
        "dtype": prec.weights,
        "precision": prec.record(),
        "parameter_dtypes": dtypes,
        "trainable_dtypes": adapter_dtypes,
        "quantization": recipe.model.quantization,
        "lora_targets": sorted({t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules}),
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_why": plan["why"],
        "training_attention": plan["attention"],
        "memory_estimate_bytes": est.as_dict(),
        "memory_estimate_gib": round(est.total(checkpointing) / GIB, 3),
        "hardware": {"device": hw.device, "bf16_fast": hw.bf16_fast, "reason": hw.reason, "cpus": hw.cpu_count},
    }
    write_json(out / "prepare.json", record)
    write_json(out / "summary.json", {k: record[k] for k in ("trainable_params", "total_params", "dtype", "gradient_checkpointing", "memory_estimate_gib")})
