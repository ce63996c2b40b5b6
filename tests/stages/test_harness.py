"""evaluate.harness: lm-evaluation-harness tasks before and after training, offline, on the tiny
model; the bundled lima_house_style task; lm-eval's results as evaluate keeps them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose code the child process runs


def test_scores_keep_each_metric_and_name_the_first_listed_as_main():
    from sft_pipeline.model.harness import headline, scores

    results = {"results": {"t": {"alias": "t", "word_perplexity,none": 12.0, "word_perplexity_stderr,none": "N/A",
                                 "bits_per_byte,none": 1.5, "acc,strict": 0.25}},
               "configs": {"t": {"metric_list": [{"metric": "bits_per_byte"}, {"metric": "word_perplexity"}]}},
               "n-samples": {"t": {"original": 40, "effective": 3}}, "n-shot": {"t": 0}, "versions": {"t": 1.0}}
    got = scores(results)
    assert got == {"t": {"main": "bits_per_byte", "metrics": {"word_perplexity": 12.0, "bits_per_byte": 1.5,
                                                              "acc,strict": 0.25},
                         "samples": 3, "num_fewshot": 0, "version": 1.0}}
    assert headline(got) == {"t": {"bits_per_byte": 1.5}}


@pytest.fixture
def few_default_tasks(monkeypatch) -> list[str]:
    """lm-eval's own task folder indexed as two of its real subfolders, not all of it: indexing
    the 14,684 default tasks takes seconds, and what is checked here (a default task is found,
    an unknown one is refused) needs only some of them. lm-eval's indexer itself runs unchanged."""
    from lm_eval.tasks import _index, manager

    defaults = Path(manager.__file__).parent
    kept = ["hellaswag", "lambada"]
    real = _index.TaskIndex.build

    def build(paths, **kwargs):
        paths = [q for p in paths for q in ([defaults / k for k in kept] if Path(p) == defaults else [p])]
        return real(paths, **kwargs)

    monkeypatch.setattr(_index.TaskIndex, "build", staticmethod(build))
    return kept


def test_an_unknown_task_is_one_line_naming_the_bundled_ones(few_default_tasks):
    from sft_pipeline.model.harness import HarnessError, task_manager

    assert "lima_house_style" in task_manager(["lima_house_style"]).all_tasks
    # a task of lm-eval's own is looked up among its defaults, with the bundled ones still there
    both = task_manager(["hellaswag", "lima_house_style"]).all_tasks
    assert {"hellaswag", "lima_house_style"} <= set(both)
    with pytest.raises(HarnessError, match=r"unknown lm-eval task no_such_task \(bundled: lima_house_style"):
        task_manager(["no_such_task", "hellaswag"])


def test_harness_runs_offline_before_and_after(recipe_factory):
    """The bundled task over a few documents, through `sft-pipeline evaluate` in a process with the
    Hub and datasets offline: scores before and after, finite, in report.json, summary.json, the
    printed table and the report page; the trained adapter changes them."""
    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.report.write import write_report
    from sft_pipeline.stages import open_run_directory

    recipe = recipe_factory(evaluate={"max_prompts": 2, "pairs": 1,
                                      "harness": {"tasks": ["lima_house_style"], "limit": 3, "batch_size": 4}},
                            train={"max_steps": 4, "learning_rate": 5e-3})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    for stage in ("load", "template", "pack", "prepare", "train"):
        update_stage(run, stage)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sft_pipeline.cli", "evaluate", str(run.path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run.path / "evaluate" / "report.json").read_text())
    for phase in ("before", "after"):
        task = report[phase]["harness"]["lima_house_style"]
        assert task["main"] == "bits_per_byte" and task["samples"] == 3
        assert set(task["metrics"]) == {"bits_per_byte", "word_perplexity"}
        assert all(math.isfinite(v) and v > 0 for v in task["metrics"].values())
    before = report["before"]["harness"]["lima_house_style"]["metrics"]["bits_per_byte"]
    after = report["after"]["harness"]["lima_house_style"]["metrics"]["bits_per_byte"]
    assert before != after  # "after" is the trained adapter, not the base twice
    summary = json.loads((run.path / "evaluate" / "summary.json").read_text())
    assert summary["before"]["harness"] == {"lima_house_style": {"bits_per_byte": before}}
    assert summary["after"]["harness"] == {"lima_house_style": {"bits_per_byte": after}}
    assert "lm-eval lima_house_style: bits_per_byte" in done.stdout
    page, _ = write_report(run)
    assert "lm-eval lima_house_style: bits_per_byte (3 docs, 0-shot)" in page.read_text()
