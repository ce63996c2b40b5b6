"""Trainer checkpoints in the train stage's work folder: which one to resume from, and the
final one as the result of a run killed after its last save."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from ..run.files import read_json

console = Console(stderr=True)


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors")


def resumable_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint, removing the incomplete ones newer than it. Trainer writes
    a checkpoint file by file, so a kill during the save leaves a partial folder: it is deleted,
    and the one before it is used."""
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
