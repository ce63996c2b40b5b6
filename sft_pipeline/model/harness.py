"""lm-evaluation-harness tasks on a model already in memory (evaluate's "before" and "after"):
lm-eval's HFLM wraps the loaded model and tokenizer instead of loading its own copy, so "before"
is exactly the base evaluate scores (the LoRA adapter disabled) and nothing is loaded twice.

Tasks are found by lm-eval's TaskManager: the bundled ones (TASKS, found offline) first, lm-eval's
own only when a recipe names one the bundle lacks (indexing its hundreds of task folders takes
seconds, and their datasets come from the Hub).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PipelineError

TASKS = Path(__file__).resolve().parent.parent / "harness_tasks"  # the bundled task YAMLs


class HarnessError(PipelineError, ValueError):
    """A harness task that cannot be found or scored."""


def task_manager(tasks: list[str]) -> Any:
    from lm_eval.tasks import TaskManager

    bundled = TaskManager(include_path=str(TASKS), include_defaults=False)
    if all(t in bundled.all_tasks for t in tasks):
        return bundled
    manager = TaskManager(include_path=str(TASKS))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HarnessError(f"evaluate.harness.tasks: unknown lm-eval task {', '.join(unknown)} "
                           f"(bundled: {', '.join(sorted(bundled.all_tasks))}; `lm-eval ls tasks` lists lm-eval's)")
    return manager


def main_metric(task_results: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The task's first listed metric (its headline), as lm-eval keys results: "<metric>,<filter>"."""
    listed = [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)]
    for name in listed:
        for key in task_results:
            if key.split(",")[0] == name and "_stderr" not in key:
                return name
    return None


def scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's results as {task: {"main": metric, "metrics": {metric: value}, "samples": n,
    "num_fewshot": k, "version": v}}; a filter other than "none" keeps its name (metric,filter)."""
    out = {}
    for task, values in results["results"].items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            metrics[metric if filt == "none" else key] = float(value)
        config = results.get("configs", {}).get(task, {})
        out[task] = {"main": main_metric(values, config), "metrics": metrics,
                     "samples": (results.get("n-samples", {}).get(task) or {}).get("effective"),
                     "num_fewshot": results.get("n-shot", {}).get(task),
                     "version": results.get("versions", {}).get(task)}
    return out


def headline(harness: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each task's main metric alone, for evaluate's summary: {task: {metric: value}}."""
    return {task: {s["main"]: s["metrics"].get(s["main"])} if s["main"] else {} for task, s in harness.items()}


def run_harness(model: Any, tokenizer: Any, cfg: Any, compute: Any = None) -> dict[str, Any]:
    """The recipe's harness tasks (evaluate.harness: tasks, limit, num_fewshot, batch_size,
    apply_chat_template) on `model` as it is now. `compute` (precision.Precision): the autocast
    training computed in, which HFLM must be given itself (its forward opens its own autocast,
    disabled unless told a dtype, which would switch off one opened around it).

    Log-probabilities are summed in fp32 (softmax_dtype): left to the model's bf16, a 200-token
    answer's sum is rounded to a multiple of 8 nats, and a fine-tuned adapter scored the same as
    its base to every digit. Stderr bootstrapping is off (bootstrap_iters=0): on a few dozen
    documents it costs more than the scoring, and evaluate compares two numbers."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(list(cfg.tasks))
    mixed = compute.compute_dtype if compute is not None and compute.autocast else None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, softmax_dtype=torch.float32,
              mixed_precision_dtype=mixed)
    results = lm_eval.simple_evaluate(model=lm, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                                      task_manager=manager, bootstrap_iters=0, log_samples=False,
                                      apply_chat_template=cfg.apply_chat_template, verbosity="WARNING")
    if results is None:
        raise HarnessError("evaluate.harness: lm-eval returned no results (not the main process?)")
    return scores(results)
