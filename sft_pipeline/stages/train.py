"""Stage 5, train: TRL's SFTTrainer on the packed blocks, from the adapter prepare recorded.

Precision follows the hardware (model/precision.py). Checkpoints go to the stage's work folder, so
a killed run resumes from the last one when the stage is run again with the same recipe.

Speed (README, "Training speed and memory"): the trainer is SFTTrainer with its loss replaced by
loss.labelled_loss (training/trainer.py); gradient checkpointing only when the memory estimate
needs it on the machine that trains; evaluation computes the loss only. Each step's time and
tokens go to metrics.json beside the peak memory and prepare's estimate.

Dashboards (training/trackers.py): one W&B run from the first start through every resume (its id
in the work folder), TensorBoard, and scalars.jsonl, each logging step once with perplexity,
tokens/s and MFU (training/flops.py: the model FLOPs against the device's rated or measured rate).

Under `method: full` train starts from model.ref itself (prepare saved no adapter), every weight
trainable in fp32 master weights, and saves the whole trained model (safetensors) with its
tokenizer in model/: that is the run's export (merge has nothing to merge). Its checkpoints hold
the whole model, and a killed run resumes from them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import Recipe
from ..model import precision
from ..model.hardware import Hardware, detect
from ..training import launch
from ..rundir.directory import RunDirectory
from ..rundir.files import read_json, write_json
from ..rundir.stage_spec import STATS, StageSpec
from ..training import ranks
from ..training.callbacks import Interrupted, StepTimer, StopOnSignal
from ..training.memory_plan import decide_checkpointing
from ..training.export import save_trained
from ..training.metrics import train_metrics
from ..training.sft_args import TrainConfigError, sft_config
from ..training.speed import speed_setup
from ..training.strategy import SHARDED
from ..training.trackers import QuietTracking, train_summary, train_tracking
from ..training.trainer import fit, trainer_class

SPEC = StageSpec(
    # load: its stats.json for the tracking summary (kept and dropped records)
    name="train", reads=("method", "train", "model", "distributed.nproc_per_node", "distributed.nnodes",
                         "distributed.strategy"),
    upstream=("load", "pack", "prepare"),
    writes=("metrics.json", "summary.json",
            "tracking.json",  # the W&B run id, made at first start: a resumed train continues that run
            "scalars.jsonl",  # every logged row, fsynced: a resume logs each step once
            "matmul_rate.json"),  # MFU's denominator, measured once: a resume divides by the same
    may_write={"adapter/": "method lora or qlora: the trained adapter",
               "model/": "method full: the trained model (safetensors) and tokenizer",
               "checkpoints/": "the trainer's output_dir (checkpoints when train.save_strategy saves one)",
               "tensorboard/": "tracking.tensorboard",
               "wandb/": "tracking.wandb is not off"},
    resumes=True,  # a killed run resumes from its last checkpoint in the work folder
    ignores={"tracking": "where metrics are reported, not what is trained",
             **{f"distributed.{key}": "where and how the processes start, not what they train"
                for key in ("node_rank", "rdzv_endpoint", "rdzv_id", "launcher", "threads_per_process", "backend",
                            "numa_binding")},
             "name": "the W&B / TensorBoard run name"},
)

console = Console(stderr=True)


def produce(run_dir: RunDirectory, out: Path) -> None:
    import datasets
    import torch

    from ..model.build import build_model
    from ..model.loader import load_tokenizer
    from ..training.collate import PackedCollator

    recipe, hw = run_dir.recipe, detect()
    if launch.needs_launch(recipe.distributed):  # several processes: torchrun starts them, each runs this
        return launch.train_in_processes(run_dir, out, hw.device)
    main = ranks.is_main()  # node 0's first process writes for every process
    pack_dir, prep_dir = run_dir.stage_dir("pack"), run_dir.stage_dir("prepare")
    prep = read_json(prep_dir / "prepare.json")
    train_ds = datasets.load_from_disk(str(pack_dir / "train"))
    eval_ds = datasets.load_from_disk(str(pack_dir / "eval")) if (pack_dir / "eval").is_dir() else None
    if eval_ds is None and recipe.train.eval_strategy != "no":
        raise TrainConfigError("train.eval_strategy needs an eval split; set data.eval_split or eval_strategy: no")
    prec = precision.plan(recipe, hw)
    if prec.warning and main:
        console.print(f"[bold yellow]warning:[/] {prec.warning}")
    ckpt = checkpointing_here(recipe, prep, hw, say=main)

    args = sft_config(recipe, out, ckpt["gradient_checkpointing"], prec.compute, hw.device)
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    torch.manual_seed(recipe.train.seed)
    full = recipe.method == "full"
    model = build_model(recipe, hw, ckpt["gradient_checkpointing"], adapter=None if full else prep_dir / "adapter",
                        trainable=True)
    speed = speed_setup(model, recipe, hw, prec, prep.get("training_attention"))
    stopper, timer = StopOnSignal(), StepTimer(tokenizer.pad_token_id, cuda=hw.device == "cuda")
    tracking = train_tracking(run_dir, out, hw, prec, model, timer) if main else QuietTracking()
    stopper.install()  # the pipeline puts the previous handler back after the stage
    trainer = trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        data_collator=PackedCollator(tokenizer.pad_token_id, padding_free=speed["padding_free"]),
        callbacks=[stopper.callback(), timer.callback(), tracking.callback()],
    )
    trainer.step_timer = timer
    speed["labelled_loss"] = labelled_loss_state(trainer)
    with tracking:  # W&B's run opened or continued, finished (failed, if something raised) on leaving
        result, resumed = fit(trainer, out / "checkpoints", full=full)
        processes = ranks.seen()  # a collective: every process reports what it saw of the launch
        if stopper.received is not None:
            if main:
                console.print(f"[yellow]stopped at step {trainer.state.global_step}; checkpoint saved; run train again to resume")
            raise Interrupted(128 + stopper.received)

        export = out / ("model" if full else "adapter")
        save_trained(trainer, tokenizer, export, full, sharded=recipe.distributed.strategy in SHARDED, main=main)
        if not main:
            return
        metrics = {"method": recipe.method, "learning_rate": recipe.train.learning_rate,
                   **train_metrics(trainer, result, timer, hw.device, prec, ckpt, speed, prep["memory_estimate_gib"],
                                   resumed, tracking.trackers),
                   "distributed": {"strategy": recipe.distributed.strategy if processes["world_size"] > 1 else None,
                                   "engine": trainer.accelerator.distributed_type.value, **processes}}
        write_json(out / "metrics.json", metrics)
        write_json(out / "summary.json", {k: metrics[k] for k in ("steps", "precision", "final_train_loss", "eval_losses",
                                                                  "train_runtime_s", "tokens_per_second")})
        data_stats = (read_json(run_dir.artifact(stage, STATS)) for stage in ("load", "pack"))
        tracking.summarize(train_summary(*data_stats, metrics), export if recipe.tracking.log_adapter else None)


def labelled_loss_state(trainer: Any) -> str:
    """"on", or "off: <why>" (SFTTrainer's own loss then runs), for metrics.json."""
    why = trainer.labelled_loss_off(trainer.model)
    if why is not None:
        return f"off: {why}"
    if trainer.args.world_size > 1 or trainer.is_fsdp_enabled:  # wrapped when training starts
        return "on: through the wrapped model's forward (logits_to_keep on the labelled positions)"
    return "on"


def checkpointing_here(recipe: Recipe, prep: dict[str, Any], hw: Hardware, say: bool = True) -> dict[str, Any]:
    """Gradient checkpointing decided again for this machine's memory: prepare decided it where it
    ran, which may be another machine (stages share only the run directory)."""
    without = prep["memory_estimate_bytes"]["total_without_checkpointing"]
    on, why, _ = decide_checkpointing(recipe.model.gradient_checkpointing, without, hw)
    if on != prep["gradient_checkpointing"] and say:
        console.print(f"[yellow]gradient checkpointing {'on' if on else 'off'} here ({why}); prepare had decided "
                      f"{'on' if prep['gradient_checkpointing'] else 'off'} ({prep['gradient_checkpointing_why']})")
    return {"gradient_checkpointing": on, "gradient_checkpointing_why": why,
            "gradient_checkpointing_prepare": prep["gradient_checkpointing"]}
