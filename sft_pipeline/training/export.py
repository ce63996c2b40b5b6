"""What train leaves as its result: the trained adapter (LoRA, QLoRA), or under method full the
whole model, with the tokenizer; and the check, after saving, that what was saved is there.

Sharded training (FSDP2, ZeRO-3) holds each weight split over the processes: every process takes
part in the save (the Trainer gathers the full state dict), and rank 0 writes. Under ZeRO-3 the
saved adapter has been seen empty (TRL #4416, PEFT #2500), so the check reads the file back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PipelineError


class ExportError(PipelineError, RuntimeError):
    pass


def save_trained(trainer: Any, tokenizer: Any, folder: Path, full: bool, sharded: bool, main: bool) -> None:
    """The adapter, or under full the whole model as a standalone checkpoint. Its config gets the
    KV cache back (training turns it off), so generation from the exported model is not slowed."""
    model = trainer.model
    if full:
        model.config.use_cache = True
    if sharded:
        trainer.save_model(str(folder))  # a collective: every process, rank 0 writes
    elif main:
        model.save_pretrained(str(folder), safe_serialization=True)
    if main:
        tokenizer.save_pretrained(str(folder))
        check_saved(folder, full, model)


def check_saved(folder: Path, full: bool, model: Any) -> None:
    """No saved tensor is empty; an adapter holds one tensor per trained one and its config loads,
    a full model has its config.json (ExportError otherwise, naming the folder)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{folder}: no safetensors file was saved")
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), "pt") as fh:
            shapes.update({k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
    empty = sorted(k for k, s in shapes.items() if 0 in s)
    if empty:
        raise ExportError(f"{folder}: {len(empty)} saved tensors are empty (e.g. {empty[0]}): the weights were "
                          "not gathered from the processes holding them")
    if full:
        if not (folder / "config.json").is_file():
            raise ExportError(f"{folder}: the model's config.json was not saved")
        return
    from peft import PeftConfig

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if len(shapes) != len(trainable):
        raise ExportError(f"{folder}: {len(shapes)} adapter tensors saved, {len(trainable)} trained")
    PeftConfig.from_pretrained(str(folder))  # the adapter_config.json loads
