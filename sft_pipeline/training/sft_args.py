"""The train stage's recipe as SFTConfig arguments: what the recipe sets, what the pipeline
decides itself (extra_args may add arguments, never replace those), and the trackers."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import Recipe
from ..errors import PipelineError

console = Console(stderr=True)


class TrainConfigError(PipelineError, ValueError):
    pass


def use_trackers(recipe: Recipe, out: Path) -> list[str]:
    """The trackers' names for SFTConfig.report_to, their environment set for this process (the
    pipeline restores the environment after the stage), their files under the stage's folder."""
    trackers, env = report_to(recipe)
    os.environ.update(env)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    if "wandb" in trackers:
        os.environ["WANDB_DIR"] = str(out)
    return trackers


def report_to(recipe: Recipe) -> tuple[list[str], dict[str, str]]:
    """Trackers and the environment they need. W&B: online with a key, offline without one."""
    trackers, env = [], {}
    mode = recipe.tracking.wandb
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        console.print("[yellow]tracking.wandb is online but WANDB_API_KEY is not set; W&B may prompt or fail")
    if mode != "off":
        trackers.append("wandb")
        env.update({"WANDB_MODE": mode, "WANDB_PROJECT": recipe.tracking.project})
        if recipe.tracking.group:  # wandb.init reads the group from here (a sweep's trials share one)
            env["WANDB_RUN_GROUP"] = recipe.tracking.group
    if recipe.tracking.tensorboard:
        trackers.append("tensorboard")
    return trackers, env


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


def sft_config(recipe: Recipe, out: Path, checkpointing: bool, precision: str, trackers: list[str],
               device: str = "cpu") -> Any:
    import torch
    from trl import SFTConfig

    t = recipe.train
    check_extra_args(t.extra_args)
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    fields = t.model_dump(exclude={"precision", "extra_args", "fast_dropout"})
    fields = {k: v for k, v in fields.items() if v is not None}
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),
        report_to=trackers or "none",
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
    if "save_safetensors" in known:  # gone in newer transformers, where safetensors is the only way
        kwargs["save_safetensors"] = True
    # transformers 5.2x renamed gradient_checkpointing* to activation_checkpointing* (old names warn)
    ckpt = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    kwargs.update({ckpt: checkpointing, f"{ckpt}_kwargs": {"use_reentrant": False}})
    return SFTConfig(**{**kwargs, **fields, **t.extra_args})
