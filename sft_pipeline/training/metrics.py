"""What a training run measured, for metrics.json: losses, step times and work, peak memory
against prepare's estimate, and what was switched on for speed."""

from __future__ import annotations

import resource
from typing import Any

from .memory import GIB


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_metrics(trainer: Any, result: Any, timer: Any, device: str, prec: Any, checkpointing: dict[str, Any],
                  speed: dict[str, Any], estimate_gib: float, resumed_from: str | None, trackers: list[str]) -> dict[str, Any]:
    import torch

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    peak = peak_rss_bytes() if device == "cpu" else torch.cuda.max_memory_allocated()
    estimate_bytes = int(estimate_gib * GIB)
    return {
        "train_runtime_s": result.metrics.get("train_runtime") if result else None,
        "steps": trainer.state.global_step,
        "precision": prec.compute,
        "weights_dtype": prec.weights,
        "threads": torch.get_num_threads(),
        **checkpointing,
        **speed,
        "final_train_loss": losses[-1] if losses else None,
        "mean_train_loss": result.training_loss if result else None,
        "eval_losses": [h["eval_loss"] for h in history if "eval_loss" in h],
        **timer.summary(),
        "step_seconds": [round(s, 4) for s in timer.seconds],
        "step_work": timer.work,
        "peak_rss_bytes": peak if device == "cpu" else None,
        "peak_gpu_bytes": peak if device == "cuda" else None,
        "memory_estimate_gib": estimate_gib,
        # measured peak (RSS on a CPU, allocated GPU memory on a GPU) over prepare's estimate
        "peak_over_estimate": round(peak / estimate_bytes, 3) if estimate_bytes else None,
        "resumed_from": resumed_from,
        "trackers": trackers,
        "log_history": history,
    }
