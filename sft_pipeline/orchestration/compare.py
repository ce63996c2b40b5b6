"""Run directories side by side: what `sft-pipeline compare RUN_DIR ...` prints.

It reads only what the stages wrote (prepare's record, train's metrics, evaluate's report, the
frozen recipe.yaml), never a model, so it answers in a second for runs trained anywhere. A value a
run does not have (a stage not run, a run from before a field existed, a file cut off) prints as
'-': a sweep's half-finished trials compare as well as finished ones. Only a folder that is not a
run directory at all is an error.

The warning it adds: LoRA usually wants about 10x the learning rate of full fine-tuning (the
adapter starts at zero and has few parameters to move; full fine-tuning moves every weight of a
trained model), so runs of different methods that share one learning rate likely give one of them
the wrong one and compare the learning rate rather than the method.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import method_for
from ..errors import PipelineError
from ..rundir.stage_spec import METRICS, PREPARED
from ..training.step_scalars import perplexity

GIB = 1024**3
LORA_FAMILY = ("lora", "qlora")
MISSING = "-"


class CompareError(PipelineError, ValueError):
    """A folder given to compare that is not a run directory; one line naming it."""


@dataclass
class RunFacts:
    """What compare shows of one run; None where the run does not have it."""

    path: Path
    method: str | None = None
    learning_rate: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    steps: int | None = None
    precision: str | None = None
    seconds_per_step: float | None = None
    tokens_per_second: float | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None  # RSS (CPU) or GPU (allocated)
    eval_loss: float | None = None
    eval_loss_from: str | None = None  # evaluate (its 'after' pass over the eval split) or train (its last eval)
    style_share: float | None = None
    unreadable: list[str] = field(default_factory=list)  # files present but not parseable


def _read(path: Path, facts: RunFacts, parse: Callable[[str], Any] = json.loads) -> dict[str, Any]:
    """A stage file as a dict; {} when it is missing, and noted when it is there but unreadable."""
    if not path.is_file():
        return {}
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        facts.unreadable.append(str(path))
        return {}
    return data if isinstance(data, dict) else {}


def _get(tree: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
        if tree is None:
            return None
    return tree


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def read_run(path: Path) -> RunFacts:
    """The facts of one run directory (CompareError when `path` is not one)."""
    from ..stages.evaluate import REPORT

    path = Path(path)
    if not path.is_dir():
        raise CompareError(f"compare: {path}: no such folder")
    if not (path / "recipe.yaml").is_file() and not (path / "manifest.json").is_file():
        raise CompareError(f"compare: {path}: not a run directory (no recipe.yaml or manifest.json)")
    facts = RunFacts(path)
    recipe = _read(path / "recipe.yaml", facts, yaml.safe_load) or _get(_read(path / "manifest.json", facts), "recipe") or {}
    # by path: a run directory from anywhere, with no recipe to check its stages' state against
    prepare = _read(path / "prepare" / PREPARED, facts)
    metrics = _read(path / "train" / METRICS, facts)
    report = _read(path / "evaluate" / REPORT, facts)

    # a run from before `method` existed says it through model.quantization
    facts.method = metrics.get("method") or prepare.get("method") or recipe.get("method") \
        or method_for(_get(recipe, "model", "quantization"))
    facts.learning_rate = _number(metrics.get("learning_rate")) or _number(_get(recipe, "train", "learning_rate"))
    facts.trainable_params = prepare.get("trainable_params")
    facts.total_params = prepare.get("total_params")
    facts.steps = metrics.get("steps")
    facts.precision = metrics.get("precision") or _get(prepare, "precision", "compute")
    facts.seconds_per_step = _number(metrics.get("seconds_per_step"))
    facts.tokens_per_second = _number(metrics.get("tokens_per_second"))
    for key, kind in (("peak_rss_bytes", "RSS"), ("peak_gpu_bytes", "GPU")):
        if _number(metrics.get(key)) is not None:
            facts.peak_bytes, facts.peak_kind = int(metrics[key]), kind
    after_eval = _number(_get(report, "after", "loss", "eval"))
    trained_evals = [v for v in metrics.get("eval_losses") or [] if _number(v) is not None]
    if after_eval is not None:
        facts.eval_loss, facts.eval_loss_from = after_eval, "evaluate"
    elif trained_evals:
        facts.eval_loss, facts.eval_loss_from = float(trained_evals[-1]), "train"
    facts.style_share = _number(_get(report, "after", "style_share"))
    return facts


def _params(n: Any, of: Any = None) -> str:
    if not isinstance(n, int):
        return MISSING
    share = f" ({100 * n / of:.2f}%)" if isinstance(of, int) and of > 0 else ""
    return f"{n:,}{share}"


def _fmt(value: Any, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def rows(runs: list[RunFacts]) -> list[tuple[str, list[str]]]:
    """(metric, one cell per run), in the order printed."""
    def row(label: str, cell: Callable[[RunFacts], str]) -> tuple[str, list[str]]:
        return label, [cell(r) for r in runs]

    return [
        row("method", lambda r: r.method or MISSING),
        row("learning rate", lambda r: _fmt(r.learning_rate, "g")),
        row("trainable params", lambda r: _params(r.trainable_params, r.total_params)),
        row("total params", lambda r: _params(r.total_params)),
        row("steps", lambda r: _fmt(r.steps, "d") if isinstance(r.steps, int) else MISSING),
        row("precision", lambda r: r.precision or MISSING),
        row("seconds / step", lambda r: _fmt(r.seconds_per_step, ".2f")),
        row("tokens / s", lambda r: _fmt(r.tokens_per_second, ".1f")),
        row("peak memory", lambda r: MISSING if r.peak_bytes is None else f"{r.peak_bytes / GIB:.2f} GiB {r.peak_kind}"),
        row("eval loss", lambda r: _fmt(r.eval_loss, ".4f")),
        row("perplexity", lambda r: _fmt(perplexity(r.eval_loss), ".2f")),
        row("style share", lambda r: _fmt(r.style_share, ".0%")),
        row("eval loss from", lambda r: r.eval_loss_from or MISSING),
    ]


def column_names(runs: list[RunFacts]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [r.path.name or str(r.path) for r in runs]
    return [str(r.path) if names.count(n) > 1 else n for r, n in zip(runs, names)]


def warnings(runs: list[RunFacts]) -> list[str]:
    """One line per learning rate that LoRA-family runs and full fine-tuning runs share, and one
    per file that was there but could not be read."""
    names = dict(zip((id(r) for r in runs), column_names(runs)))
    out = []
    by_rate: dict[float, list[RunFacts]] = {}
    for r in runs:
        if r.learning_rate is not None and r.method is not None:
            by_rate.setdefault(r.learning_rate, []).append(r)
    for rate, group in by_rate.items():
        methods = {r.method for r in group}
        if "full" in methods and methods & set(LORA_FAMILY):
            listed = ", ".join(f"{names[id(r)]} ({r.method})" for r in group)
            out.append(f"{listed} share learning rate {rate:g} across methods: LoRA usually wants about 10x the "
                       "learning rate of full fine-tuning, so one of them is likely off its best")
    for r in runs:
        out += [f"{names[id(r)]}: {f} could not be read; its values show as '-'" for f in r.unreadable]
    return out
