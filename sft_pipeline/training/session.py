"""One training process's work: TRL's SFTTrainer on pack's blocks, from the adapter prepare saved
(or from model.ref itself under `method: full`), its results written into the train stage's work
folder.

The train stage calls `train` directly when one process is asked for; with several, each worker
that the launcher started (train_worker.py) calls it, and only node 0's first process writes. It
never decides whether to launch: that is the stage's decision, made once, in the launching command.

Precision follows the hardware (model/precision.py). Checkpoints go to the work folder, so a killed
run resumes from the last one when the stage is run again with the same recipe. Gradient
checkpointing is decided again for the memory of the machine that trains; evaluation computes the
loss only; each step's time and tokens go to metrics.json beside the peak memory and prepare's
estimate. Dashboards (training/trackers.py): W&B (one run through every resume), TensorBoard and
scalars.jsonl, each logging a step once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import Recipe
from ..model import precision
from ..model.hardware import Hardware, detect
from ..rundir.directory import RunDirectory
from ..rundir.files import read_json, write_json
from ..rundir.stage_spec import METRICS, PREPARED, STATS, SUMMARY
from . import ranks
from .callbacks import StepTimer, StopOnSignal, StoppedBySignal
from .export import save_trained
from .memory_plan import decide_checkpointing
from .metrics import train_metrics
from .sft_args import TrainConfigError, sft_config
from .speed import speed_setup
from .strategy import SHARDED
from .trackers import QuietTracking, train_summary, train_tracking
from .trainer import fit, trainer_class

console = Console(stderr=True)


def train(run_dir: RunDirectory, out: Path) -> None:
    """Train in this process and, in node 0's first process, write the trained adapter (or model),
    metrics.json, summary.json and the trackers' files into `out`. A SIGTERM ends it after the step
    in progress, with a checkpoint saved, by StoppedBySignal (the process exits 128+15)."""
    import datasets
    import torch

    from ..model.build import build_model
    from ..model.loader import load_tokenizer
    from .collate import PackedCollator

    recipe, hw = run_dir.recipe, detect()
    main = ranks.is_main()  # node 0's first process writes for every process
    prep = read_json(run_dir.artifact("prepare", PREPARED))
    train_ds = datasets.load_from_disk(str(run_dir.artifact("pack", "train")))
    eval_path = run_dir.artifact("pack", "eval")
    eval_ds = datasets.load_from_disk(str(eval_path)) if eval_path.is_dir() else None
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
    adapter = None if full else run_dir.artifact("prepare", "adapter")
    model = build_model(recipe, hw, ckpt["gradient_checkpointing"], adapter=adapter, trainable=True)
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
            raise StoppedBySignal(stopper.received)

        export = out / ("model" if full else "adapter")
        save_trained(trainer, tokenizer, export, full, sharded=recipe.distributed.strategy in SHARDED, main=main)
        if not main:
            return
        metrics = {"method": recipe.method, "learning_rate": recipe.train.learning_rate,
                   **train_metrics(trainer, result, timer, hw.device, prec, ckpt, speed, prep["memory_estimate_gib"],
                                   resumed, tracking.trackers),
                   "distributed": {"strategy": recipe.distributed.strategy if processes["world_size"] > 1 else None,
                                   "engine": trainer.accelerator.distributed_type.value, **processes}}
        write_json(out / METRICS, metrics)
        write_json(out / SUMMARY, {k: metrics[k] for k in ("steps", "precision", "final_train_loss", "eval_losses",
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
