"""Stage 4, prepare: what the model becomes before training, recorded before it is paid for.

model/build.py builds it (the seed's preparation, optionally NF4, then LoRA); the memory plan
(training/memory_plan.py) decides gradient checkpointing before anything is loaded. The initial adapter is
saved so train starts from exactly what was recorded.

Under `method: full` nothing is initialised: train starts from model.ref itself, every weight
trainable in fp32. So prepare saves no adapter and loads no weights (a 7B model in fp32 is 28 GB
to count what the config already says); it records the method, the counts (trainable = total),
the precision, and the full fine-tuning memory estimate with its checkpointing decision.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..model import precision
from ..model.build import build_model, count_params
from ..model.hardware import detect
from ..rundir.directory import RunDirectory
from ..rundir.files import write_json
from ..rundir.stage_spec import PREPARED, SUMMARY, StageSpec
from ..training.memory import GIB
from ..training.memory_plan import memory_report, plan_memory

SPEC = StageSpec(
    # method: LoRA, QLoRA or full; train.seed initialises LoRA, train.precision sets the dtype; the
    # memory estimate takes the batch sizes, seq_length, the attention (pack.strategy) and whether
    # evaluation runs
    name="prepare", reads=("method", "model", "lora", "pack.seq_length", "pack.strategy",
                           "train.per_device_train_batch_size", "train.per_device_eval_batch_size",
                           "train.eval_strategy", "train.seed", "train.precision"),
    writes=(PREPARED, SUMMARY),
    may_write={"adapter/": "method lora or qlora (full fine-tuning starts from model.ref itself)"},
)

console = Console(stderr=True)


def produce(run_dir: RunDirectory, out: Path) -> None:
    import torch
    from transformers import AutoConfig

    from ..model.loader import resolve

    recipe = run_dir.recipe
    hw = detect()
    prec = precision.plan(recipe, hw)
    if prec.warning:
        console.print(f"[bold yellow]warning:[/] {prec.warning}")
    torch.manual_seed(recipe.train.seed)
    resolved = resolve(recipe.model.ref)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=recipe.model.trust_remote_code)
    est, checkpointing, plan = plan_memory(recipe, config, hw)
    console.print(memory_report(recipe, est, checkpointing, plan))
    if recipe.method == "full":
        trainable = total = plan["total"]
        dtypes = adapter_dtypes = [prec.weights]  # precision.plan: fp32 under full
        targets: list[str] = []
    else:
        model = build_model(recipe, hw, checkpointing)
        trainable, total = count_params(model)
        model.save_pretrained(str(out / "adapter"))
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
        adapter_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.requires_grad})
        targets = sorted({t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules})
    console.print(f"trainable params: {trainable} || all params: {total} || trainable%: {100 * trainable / total:.4f}")
    if adapter_dtypes != ["float32"]:
        raise RuntimeError(f"prepare: the trainable parameters are {adapter_dtypes}, expected float32")
    record = {
        "method": recipe.method,
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
        "lora_targets": targets,
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_why": plan["why"],
        "training_attention": plan["attention"],
        "memory_estimate_bytes": est.as_dict(),
        "memory_estimate_gib": round(est.total(checkpointing) / GIB, 3),
        "hardware": {"device": hw.device, "bf16_fast": hw.bf16_fast, "reason": hw.reason, "cpus": hw.cpu_count},
    }
    write_json(out / PREPARED, record)
    write_json(out / SUMMARY, {k: record[k] for k in ("method", "trainable_params", "total_params", "dtype",
                                                             "gradient_checkpointing", "memory_estimate_gib")})
