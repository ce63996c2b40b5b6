"""What one Trainer log becomes on the dashboards: the same named scalars for W&B, TensorBoard
and the run directory's scalars.jsonl (which `sft-pipeline report` draws).

transformers' own callbacks log Trainer's dict as it is: no perplexity, and tokens/s only at
the end of training. Here each logging step also gets perplexity (exp of the loss, the same
labelled-token mean), tokens/s over the optimizer steps since the previous log, and MFU: the
model FLOPs of those steps (flops.py) over their time, against the device's rate.
"""

from __future__ import annotations

import math
from typing import Any

STEP = "train/global_step"  # every scalar's x axis


def kind(logs: dict[str, Any]) -> str | None:
    """train (a logging step), eval (an evaluation), or None (the end-of-training totals, which
    go to the summary, not the history)."""
    if "eval_loss" in logs:
        return "eval"
    if "loss" in logs:
        return "train"
    return None


def perplexity(loss: float | None) -> float | None:
    """exp(loss); inf past what a float holds (a diverged run), None without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def window_rate(seconds: list[float], work: list[dict[str, int]], flops: Any, rate: float | None) -> dict[str, float]:
    """tokens/s and MFU over a window of optimizer steps (StepTimer's seconds and work)."""
    spent = sum(seconds)
    if not seconds or spent <= 0:
        return {}
    out = {"train/tokens_per_second": sum(w.get("tokens", 0) for w in work) / spent}
    if flops is not None and rate:
        out["train/mfu"] = sum(flops.step(w) for w in work) / spent / rate
    return out


def scalars(logs: dict[str, Any], step: int, window: dict[str, float] | None = None) -> dict[str, float]:
    """One Trainer log as named scalars, with the global step; window: window_rate's output."""
    which = kind(logs)
    out: dict[str, float] = {STEP: step}
    if which == "train":
        out["train/loss"] = logs["loss"]
        out["train/perplexity"] = perplexity(logs["loss"])
        for key in ("learning_rate", "grad_norm", "epoch"):
            if logs.get(key) is not None:
                out[f"train/{key}"] = float(logs[key])
        out.update(window or {})
    elif which == "eval":
        out["eval/loss"] = logs["eval_loss"]
        out["eval/perplexity"] = perplexity(logs["eval_loss"])
        for key in ("eval_runtime", "epoch"):
            if logs.get(key) is not None:
                out[f"eval/{key.removeprefix('eval_')}"] = float(logs[key])
    return out
