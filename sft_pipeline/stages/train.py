"""Stage 5, train: TRL's SFTTrainer on the packed blocks, from the adapter prepare recorded.

Precision follows the hardware (hardware.py). Checkpoints go to the stage's work folder, so a
killed run resumes from the last one when the stage is run again with the same recipe.

Speed (README, "Training speed and memory"): the trainer is SFTTrainer with its loss replaced by
loss.labelled_loss (the LM head only on labelled positions, and none of TRL's per-step entropy
and token-accuracy metrics, which cost passes over full-vocabulary logits); gradient
checkpointing only when prepare's memory estimate needs it; evaluation computes the loss only.
Each step's time and tokens go to metrics.json beside the peak memory and prepare's estimate.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..model import precision as precision_plan
from ..config import Recipe
from ..model.hardware import detect
from ..training.memory import GIB
from ..run.rundir import RunDir, read_json, write_json

console = Console(stderr=True)


class TrainConfigError(ValueError):
    pass


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


class StopOnSignal:
    """SIGTERM (spot-VM preemption, `docker stop`, Ctrl-C's polite cousin): finish the current
    step, save a checkpoint, and stop; the stage then exits without being recorded complete, and
    the next run resumes from that checkpoint."""

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        console.print("[yellow]SIGTERM: saving a checkpoint after this step, then stopping")

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if outer.received is not None:
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return _Callback()


class Interrupted(SystemExit):
    pass


class StepTimer:
    """Wall time of each optimizer step, and what its batches asked of the model (collate.batch_work:
    tokens without padding, labelled positions, attention pairs)."""

    def __init__(self, pad_id: int | None, cuda: bool = False) -> None:
        self.pad_id = pad_id
        self.cuda = cuda
        self.seconds: list[float] = []
        self.work: list[dict[str, int]] = []
        self._pending: dict[str, int] = {}
        self._start = 0.0

    def add_batch(self, batch: dict[str, Any]) -> None:
        from ..training.collate import batch_work

        for key, value in batch_work(batch, self.pad_id).items():
            self._pending[key] = self._pending.get(key, 0) + value

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                outer._start = outer._now()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                outer.seconds.append(outer._now() - outer._start)
                outer.work.append(outer._pending)
                outer._pending = {}

        return _Callback()

    def summary(self) -> dict[str, Any]:
        return step_rate(self.seconds, self.work)


def timed_steps(seconds: list[float], work: list[dict[str, int]]) -> list[tuple[float, dict[str, int]]]:
    """The steps after the first (the warm-up: allocations, lazy init), or the first alone."""
    steps = list(zip(seconds, work))
    return steps[1:] or steps


def step_rate(seconds: list[float], work: list[dict[str, int]]) -> dict[str, Any]:
    """Median seconds per step and tokens/s over the timed steps."""
    timed = timed_steps(seconds, work)
    if not timed:
        return {"seconds_per_step": None, "tokens_per_second": None}
    return {
        "seconds_per_step": statistics.median(s for s, _ in timed),
        "tokens_per_second": sum(w.get("tokens", 0) for _, w in timed) / sum(s for s, _ in timed),
    }


def trainer_class() -> Any:
    """SFTTrainer with its loss replaced by loss.labelled_loss where that is the same loss."""
    from trl import SFTTrainer

    from ..training.loss import labelled_loss, unsupported_reason

    class PipelineSFTTrainer(SFTTrainer):
        step_timer: StepTimer | None = None

        def _labelled_loss_applies(self, model: Any, inputs: dict[str, Any]) -> bool:
            return (
                # DDP/FSDP/torch.compile wrappers: their forward (labelled_loss would call around them)
                self.accelerator.unwrap_model(model, keep_torch_compile=False) is model
                and self.compute_loss_func is None
                and self.label_smoother is None
                and self.args.loss_type == "nll"
                and not self.aux_loss_enabled
                and "labels" in inputs
                and "shift_labels" not in inputs
                and unsupported_reason(model) is None
            )

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if return_outputs or not self._labelled_loss_applies(model, inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # the model's forward runs under accelerate's autocast (bf16 training); labelled_loss
            # calls the backbone and LM head around that forward, so it takes the same autocast
            with self.accelerator.autocast():
                loss, _ = labelled_loss(model, inputs, num_items_in_batch)
            # as SFTTrainer: num_items_in_batch counts every rank's tokens and DDP averages gradients
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if self.model.training:
                self._total_train_tokens += inputs["input_ids"].numel()
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            if self.step_timer is not None:
                self.step_timer.add_batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    return PipelineSFTTrainer


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors")


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint. Trainer writes a checkpoint file by file, so a kill during
    the save leaves a partial folder: it is set aside, and the one before it is used."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in found:
        has_rng = any(ckpt.glob("rng_state*.pth"))
        if has_rng and all((ckpt / f).is_file() for f in CHECKPOINT_FILES):
            return str(ckpt)
        console.print(f"[yellow]{ckpt.name} is incomplete (killed while saving); removing it")
        shutil.rmtree(ckpt)
    return None


def checkpoint_is_final(checkpoint: str) -> bool:
    state = read_json(Path(checkpoint) / "trainer_state.json")
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def take_final_checkpoint(trainer: Any, checkpoint: str) -> None:
    """The checkpoint's adapter and trainer state, as Trainer restores them when it resumes."""
    from transformers import TrainerState

    trainer.model.load_adapter(checkpoint, adapter_name=trainer.model.active_adapter, is_trainable=True)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


def speed_setup(model: Any, recipe: Recipe, hw: Any) -> dict[str, Any]:
    """What train changes on the prepared model for speed (recorded in metrics.json)."""
    from ..training.dropout import use_fast_dropout

    from ..training import attention

    causal = model.get_base_model()
    wanted = attention.choose(causal.config, recipe.model.attn_implementation, hw.device)
    done: dict[str, Any] = {"attention": attention.use(causal, wanted)}
    done["lora_input_cast"] = keep_lora_inputs(model) if precision_plan.plan(recipe, hw).autocast else "kept: no autocast"
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


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(run: RunDir, out: Path) -> None:
    import datasets
    import torch

    from ..training.collate import PackedCollator
    from ..model.loader import load_tokenizer
    from .prepare import build_model

    recipe = run.recipe
    hw = detect()
    prec = precision_plan.plan(recipe, hw)
    precision = prec.compute
    if prec.warning:
        console.print(f"[bold yellow]warning:[/] {prec.warning}")
    pack_dir, prep_dir = run.stage_dir("pack"), run.stage_dir("prepare")
    prep = read_json(prep_dir / "prepare.json")
    train_ds = datasets.load_from_disk(str(pack_dir / "train"))
    eval_ds = datasets.load_from_disk(str(pack_dir / "eval")) if (pack_dir / "eval").is_dir() else None
    if eval_ds is None and recipe.train.eval_strategy != "no":
        raise TrainConfigError("train.eval_strategy needs an eval split; set data.eval_split or eval_strategy: no")

    trackers, env = report_to(recipe)
    os.environ.update(env)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    if "wandb" in trackers:
        os.environ["WANDB_DIR"] = str(out)
    args = sft_config(recipe, out, prep["gradient_checkpointing"], precision, trackers, hw.device)
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe, hw, prep["gradient_checkpointing"], adapter=prep_dir / "adapter", trainable=True)
    speed = speed_setup(model, recipe, hw)

    stopper = StopOnSignal()
    stopper.install()
    timer = StepTimer(tokenizer.pad_token_id, cuda=hw.device == "cuda")
    trainer = trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=PackedCollator(tokenizer.pad_token_id, padding_free=speed["padding_free"]),
        callbacks=[stopper.callback(), timer.callback()],
    )
    trainer.step_timer = timer
    resume = last_checkpoint(out / "checkpoints")
    result = None
    if resume and checkpoint_is_final(resume):
        # killed after its last save, before the adapter was written: Trainer would run one more
        # step from here (at the schedule's last learning rate), so the checkpoint is the result
        console.print(f"[bold]Resuming from[/] {resume}: the last step, so it is the result")
        take_final_checkpoint(trainer, resume)
    else:
        if resume:
            console.print(f"[bold]Resuming[/] from {resume}")
        try:
            result = trainer.train(resume_from_checkpoint=resume)
        finally:
            if "wandb" in trackers:
                import wandb

                wandb.finish()
                wandb.teardown()  # wandb keeps its settings (the run folder) per process otherwise
    if stopper.received is not None:
        console.print(f"[yellow]stopped at step {trainer.state.global_step}; checkpoint saved; run train again to resume")
        raise Interrupted(128 + stopper.received)
    trainer.model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    peak = peak_rss_bytes() if hw.device == "cpu" else torch.cuda.max_memory_allocated()
    estimate_bytes = int(prep["memory_estimate_gib"] * GIB)
    metrics = {
        "train_runtime_s": result.metrics.get("train_runtime") if result else None,
        "steps": trainer.state.global_step,
        "precision": precision,
        "weights_dtype": prec.weights,
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": prep["gradient_checkpointing"],
        **speed,
        "final_train_loss": losses[-1] if losses else None,
        "mean_train_loss": result.training_loss if result else None,
        "eval_losses": evals,
        **timer.summary(),
        "step_seconds": [round(s, 4) for s in timer.seconds],
        "step_work": timer.work,
        "peak_rss_bytes": peak_rss_bytes() if hw.device == "cpu" else None,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if hw.device == "cuda" else None,
        "memory_estimate_gib": prep["memory_estimate_gib"],
        # measured peak (RSS on a CPU, allocated GPU memory on a GPU) over prepare's estimate
        "peak_over_estimate": round(peak / estimate_bytes, 3) if estimate_bytes else None,
        "resumed_from": resume,
        "trackers": trackers,
        "log_history": history,
    }
    write_json(out / "metrics.json", metrics)
    write_json(out / "summary.json", {k: metrics[k] for k in ("steps", "precision", "final_train_loss", "eval_losses", "train_runtime_s", "tokens_per_second")})
