"""Trainer checkpoints in the train stage's work folder: which one to resume from, and the
final one as the result of a run killed after its last save.

A LoRA checkpoint holds the adapter (adapter_model.safetensors); a full fine-tuning one the whole
model (model.safetensors, or shards listed in model.safetensors.index.json). Either way the
optimizer, scheduler, RNG and trainer state sit beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from ..rundir.files import read_json

console = Console(stderr=True)


STATE_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "model.safetensors"
FULL_INDEX = "model.safetensors.index.json"


def weights_complete(ckpt: Path, full: bool) -> bool:
    """The checkpoint's weights are all there: the adapter file, or the model file, or every shard
    its index names (a kill between two shards leaves the index's list short of files)."""
    if not full:
        return (ckpt / ADAPTER_WEIGHTS).is_file()
    if (ckpt / FULL_WEIGHTS).is_file():
        return True
    if not (ckpt / FULL_INDEX).is_file():
        return False
    try:
        shards = set(read_json(ckpt / FULL_INDEX)["weight_map"].values())
    except (ValueError, KeyError, TypeError):  # cut off while being written
        return False
    return bool(shards) and all((ckpt / shard).is_file() for shard in shards)


def rng_files(processes: int) -> list[str]:
    """The RNG states a checkpoint holds: Trainer saves one per process (rng_state_<rank>.pth)
    when there are several, else rng_state.pth."""
    return [f"rng_state_{r}.pth" for r in range(processes)] if processes > 1 else ["rng_state.pth"]


def resumable_checkpoint(folder: Path, full: bool = False, processes: int = 1) -> str | None:
    """The newest complete checkpoint, removing the incomplete ones newer than it. Trainer writes
    a checkpoint file by file, so a kill during the save leaves a partial folder: it is deleted,
    and the one before it is used. full: the checkpoints hold the whole model (method full).
    processes: how many processes' RNG states it must hold (Trainer saves one per process); 1
    takes any (one process, or several nodes each saving on its own disk). Under several
    processes each node's first process alone calls this."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in found:
        has_rng = (any(ckpt.glob("rng_state*.pth")) if processes == 1
                   else all((ckpt / f).is_file() for f in rng_files(processes)))
        if has_rng and all((ckpt / f).is_file() for f in STATE_FILES) and weights_complete(ckpt, full):
            return str(ckpt)
        console.print(f"[yellow]{ckpt.name} is incomplete (killed while saving); removing it")
        shutil.rmtree(ckpt)
    return None


def checkpoint_is_final(checkpoint: str) -> bool:
    state = read_json(Path(checkpoint) / "trainer_state.json")
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def take_final_checkpoint(trainer: Any, checkpoint: str) -> None:
    """The checkpoint's weights (adapter, or the whole model under full) and trainer state, as
    Trainer restores them when it resumes."""
    from transformers import TrainerState

    if hasattr(trainer.model, "load_adapter") and hasattr(trainer.model, "active_adapter"):
        trainer.model.load_adapter(checkpoint, adapter_name=trainer.model.active_adapter, is_trainable=True)
    else:
        load_full_weights(trainer.model, Path(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


def load_full_weights(model: Any, checkpoint: Path) -> None:
    """Every weight of a full fine-tuning checkpoint into `model`. The file names a tied weight
    (SmolLM2's LM head is its embedding) once; any other missing or unexpected name is an error."""
    from safetensors.torch import load_file

    if (checkpoint / FULL_WEIGHTS).is_file():
        files = [FULL_WEIGHTS]
    else:
        files = sorted(set(read_json(checkpoint / FULL_INDEX)["weight_map"].values()))
    state: dict[str, Any] = {}
    for name in files:
        state.update(load_file(str(checkpoint / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(p) for n, p in params.items() if n in state}
    untied = [n for n in missing if n not in params or id(params[n]) not in loaded]
    if untied or unexpected:
        raise RuntimeError(f"{checkpoint}: weights do not match the model (missing {untied[:3]}, "
                           f"unexpected {list(unexpected)[:3]})")
