"""The curves of a run as PNG files: loss, eval loss, learning rate and tokens/s against the
global step. matplotlib's Agg backend: no display is needed, and none is opened."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .collect import series

# file name -> (scalar, title, y label)
CURVES = {
    "loss.png": ("train/loss", "training loss", "loss"),
    "eval_loss.png": ("eval/loss", "eval loss", "loss"),
    "learning_rate.png": ("train/learning_rate", "learning rate", "learning rate"),
    "tokens_per_second.png": ("train/tokens_per_second", "training speed", "tokens/s"),
}


def draw(rows: list[dict[str, Any]], folder: Path) -> tuple[dict[str, Path], list[str]]:
    """One PNG per curve that has points; (written files by name, a note for each left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written, notes = {}, []
    for name, (key, title, ylabel) in CURVES.items():
        steps, values = series(rows, key)
        if not steps:
            notes.append(f"no {title} to draw ({key} was never logged)")
            continue
        fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.5)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = folder / f".{name}.tmp.png"  # readers see the old plot or the new one, never half of one
        fig.savefig(tmp, format="png")
        plt.close(fig)
        os.replace(tmp, folder / name)
        written[name] = folder / name
    return written, notes
