"""SFTTrainer with its loss replaced by loss.labelled_loss where that is the same loss (the LM
head only on labelled positions), and the step timer fed with each batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .callbacks import StepTimer
from .checkpoints import checkpoint_is_final, resumable_checkpoint, take_final_checkpoint

console = Console(stderr=True)


def trainer_class() -> Any:
    """SFTTrainer with its loss replaced by loss.labelled_loss where that is the same loss."""
    from trl import SFTTrainer

    from .loss import forward_takes_positions, labelled_loss, labelled_loss_by_forward, unsupported_reason

    class PipelineSFTTrainer(SFTTrainer):
        step_timer: StepTimer | None = None

        def labelled_loss_off(self, model: Any) -> str | None:
            """Why the labelled-positions loss is not the same loss here (None: it is used); for
            metrics.json and for every batch."""
            inner = self.accelerator.unwrap_model(model, keep_torch_compile=False)
            if self._through_forward(model) and not forward_takes_positions(inner):
                # DDP/FSDP wrappers must run their forward, which cannot be asked for chosen positions
                return "the model is wrapped (DDP, FSDP or torch.compile) and its forward has no logits_to_keep"
            if self.compute_loss_func is not None:
                return "a custom compute_loss_func is set"
            if self.label_smoother is not None:
                return "label smoothing is on"
            if self.args.loss_type != "nll":
                return f"loss_type is {self.args.loss_type}"
            if self.aux_loss_enabled:
                return "the model adds an auxiliary loss"
            return unsupported_reason(inner)

        def _through_forward(self, model: Any) -> bool:
            """A wrapper (DDP) or sharding (FSDP2 hooks the top module's forward) whose forward must run."""
            return self.accelerator.unwrap_model(model, keep_torch_compile=False) is not model or self.is_fsdp_enabled

        def _labelled_loss_applies(self, model: Any, inputs: dict[str, Any]) -> bool:
            return "labels" in inputs and "shift_labels" not in inputs and self.labelled_loss_off(model) is None

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if return_outputs or not self._labelled_loss_applies(model, inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # the model's forward runs under accelerate's autocast (bf16 training); labelled_loss
            # calls the backbone and LM head around that forward, so it takes the same autocast
            with self.accelerator.autocast():
                if self._through_forward(model):
                    loss, _ = labelled_loss_by_forward(model, inputs, num_items_in_batch)
                else:
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


def fit(trainer: Any, checkpoints: Path, full: bool = False) -> tuple[Any, str | None]:
    """Train, resuming from the newest complete checkpoint; (TrainOutput or None, checkpoint).
    full: method full, whose checkpoints hold the whole model rather than an adapter."""
    # several processes: each node's first process removes incomplete checkpoints from its disk,
    # the others look once it has
    with trainer.args.main_process_first(local=True, desc="checkpoint triage"):
        # each node's disk holds the RNG states of its own processes only when several nodes save
        writers = 1 if trainer.args.save_on_each_node else trainer.args.world_size
        resume = resumable_checkpoint(checkpoints, full, writers)
    if resume and checkpoint_is_final(resume):
        # killed after its last save, before the adapter was written: Trainer would run one more
        # step from here (at the schedule's last learning rate), so the checkpoint is the result
        console.print(f"[bold]Resuming from[/] {resume}: the last step, so it is the result")
        take_final_checkpoint(trainer, resume)
        return None, resume
    if resume:
        console.print(f"[bold]Resuming[/] from {resume}")
    return trainer.train(resume_from_checkpoint=resume), resume
