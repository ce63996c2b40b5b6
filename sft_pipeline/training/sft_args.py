"""The train stage's recipe as SFTConfig arguments: what the recipe sets, and what the pipeline
decides itself (extra_args may add arguments, never replace those)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..errors import PipelineError
from .strategy import strategy_args


class TrainConfigError(PipelineError, ValueError):
    pass


# SFTConfig arguments the train stage decides itself; an extra_args value would silently replace
# the decision (an output_dir elsewhere breaks resume, dataset_kwargs would re-tokenize the blocks)
PIPELINE_ARGS = {
    "output_dir": "checkpoints go to the run directory (train resumes from them)",
    "dataset_kwargs": "pack made the blocks; SFTTrainer must not prepare them again",
    "packing": "set pack.strategy", "padding_free": "the train stage sets it from its attention",
    "remove_unused_columns": "the collator needs the packed columns",
    "bf16": "set train.precision", "fp16": "set train.precision", "use_cpu": "follows the hardware",
    "gradient_checkpointing": "set model.gradient_checkpointing",
    "gradient_checkpointing_kwargs": "set model.gradient_checkpointing",
    "activation_checkpointing": "set model.gradient_checkpointing",
    "activation_checkpointing_kwargs": "set model.gradient_checkpointing",
    "report_to": "set tracking.wandb and tracking.tensorboard",
    "prediction_loss_only": "evaluation computes the loss only",
    "ddp_backend": "set distributed.backend", "fsdp": "set distributed.strategy",
    "fsdp_config": "set distributed.strategy (or give it the path of your accelerate config)",
    "deepspeed": "set distributed.strategy (or give it the path of your DeepSpeed config)",
    "save_on_each_node": "several nodes save their checkpoints on each node, each resuming from its own disk",
}


def check_extra_args(extra: dict[str, Any]) -> None:
    """train.extra_args may add SFTConfig arguments, never replace what the recipe or the
    pipeline sets (raises TrainConfigError, one line naming the key)."""
    from trl import SFTConfig

    from ..config import TrainConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in extra:
        if key not in known:
            raise TrainConfigError(f"train.extra_args.{key}: not an SFTConfig argument")
        if key in PIPELINE_ARGS:
            raise TrainConfigError(f"train.extra_args.{key}: set by the pipeline, not by extra_args ({PIPELINE_ARGS[key]})")
        if key in TrainConfig.model_fields:
            raise TrainConfigError(f"train.extra_args.{key}: a recipe key; set train.{key} instead")


def sft_config(recipe: Recipe, out: Path, checkpointing: bool, precision: str, device: str = "cpu") -> Any:
    import torch
    from trl import SFTConfig

    t = recipe.train
    check_extra_args(t.extra_args)
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    fields = t.model_dump(exclude={"precision", "extra_args", "fast_dropout"})
    fields = {k: v for k, v in fields.items() if v is not None}
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),
        # the pipeline feeds W&B and TensorBoard itself (training/trackers.py): one W&B run across
        # resumes, each step once, perplexity, tokens/s and MFU per logging step
        report_to="none",
        run_name=recipe.name,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # on a host without CUDA, transformers refuses bf16=True unless told the CPU is meant
        use_cpu=device == "cpu",
        # pack already made the blocks and the labels: SFTTrainer must not re-tokenize or re-pack
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=False,
        padding_free=False,
        remove_unused_columns=False,
        disable_tqdm=False,
        # no compute_metrics: evaluation needs the loss only, not every eval logit (an extra
        # forward per batch and all of them kept in memory, which is what SFTTrainer does otherwise)
        prediction_loss_only=True,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning has nothing to do without a GPU (and warns)
    )
    # several processes: DDP, FSDP2 or ZeRO, as the Trainer drives them (training/strategy.py);
    # several nodes each keep their checkpoints on their own disk, to resume from
    kwargs.update(strategy_args(recipe.distributed, device))
    if recipe.distributed.nnodes > 1:
        kwargs["save_on_each_node"] = True
    if "save_safetensors" in known:  # gone in newer transformers, where safetensors is the only way
        kwargs["save_safetensors"] = True
    # transformers 5.2x renamed gradient_checkpointing* to activation_checkpointing* (old names warn)
    ckpt = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    kwargs.update({ckpt: checkpointing, f"{ckpt}_kwargs": {"use_reentrant": False}})
    return SFTConfig(**{**kwargs, **fields, **t.extra_args})
