"""`sft-pipeline compare RUN_DIR ...`: runs side by side from what their stages wrote, '-' for what
a run lacks, one line for a folder that is not a run, and the shared-learning-rate warning."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from helpers import printed_table
from typer.testing import CliRunner

from sft_pipeline.cli import app
from sft_pipeline.orchestration.compare import CompareError, read_run, rows, warnings

runner = CliRunner()


def fake_run(root: Path, name: str, method: str | None = "lora", lr: float = 1e-3, trained: bool = True,
             evaluated: bool = True, **metrics) -> Path:
    """A run directory as the stages leave it, without training anything."""
    path = root / name
    path.mkdir(parents=True)
    recipe = {"name": name, "model": {"quantization": "nf4" if method == "qlora" else "none"},
              "train": {"learning_rate": lr}}
    if method is not None:
        recipe["method"] = method
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    total = 1_000_000
    (path / "prepare").mkdir()
    (path / "prepare" / "prepare.json").write_text(json.dumps(
        {"trainable_params": total if method == "full" else 16_000, "total_params": total}))
    if trained:
        (path / "train").mkdir()
        (path / "train" / "metrics.json").write_text(json.dumps({
            "steps": 14, "precision": "bf16", "seconds_per_step": 2.5, "tokens_per_second": 390.0,
            "peak_rss_bytes": 3 * 1024**3, "eval_losses": [2.5, 2.1], **metrics}))
    if evaluated:
        (path / "evaluate").mkdir()
        (path / "evaluate" / "report.json").write_text(json.dumps(
            {"after": {"loss": {"train": 1.9, "eval": 2.0}, "style_share": 0.8}}))
    return path


def test_side_by_side(tmp_path):
    lora = fake_run(tmp_path, "lora", lr=1e-3)
    full = fake_run(tmp_path, "full", method="full", lr=5e-5, seconds_per_step=4.0, tokens_per_second=250.0,
                    peak_rss_bytes=None, peak_gpu_bytes=int(12.5 * 1024**3))
    result = runner.invoke(app, ["compare", str(lora), str(full)])
    assert result.exit_code == 0, result.output
    got = printed_table(result.output)
    assert got["method"] == ["lora", "full"]
    assert got["learning rate"] == ["0.001", "5e-05"]
    assert got["trainable params"] == ["16,000 (1.60%)", "1,000,000 (100.00%)"]
    assert got["total params"] == ["1,000,000", "1,000,000"]
    assert got["seconds / step"] == ["2.50", "4.00"] and got["tokens / s"] == ["390.0", "250.0"]
    assert got["peak memory"] == ["3.00 GiB RSS", "12.50 GiB GPU"]
    assert got["eval loss"] == ["2.0000", "2.0000"] and got["eval loss from"] == ["evaluate", "evaluate"]
    assert got["perplexity"] == [f"{math.exp(2.0):.2f}"] * 2
    assert got["style share"] == ["80%", "80%"]
    assert "warning" not in result.output  # different learning rates


def test_a_diverged_run_has_infinite_perplexity_not_a_dash(tmp_path):
    """exp of a loss past what a float holds is inf, as W&B and evaluate's report have it (one
    perplexity(), training/step_scalars.py): a run that diverged is not one that lacks the figure."""
    diverged = fake_run(tmp_path, "diverged", evaluated=False, eval_losses=[2.5, 1000.0])
    result = runner.invoke(app, ["compare", str(diverged)])
    assert result.exit_code == 0, result.output
    got = printed_table(result.output)
    assert got["eval loss"] == ["1000.0000"] and got["perplexity"] == ["inf"]


def test_missing_values_are_a_dash(tmp_path):
    bare = fake_run(tmp_path, "bare", trained=False, evaluated=False)
    no_eval = fake_run(tmp_path, "no-eval", evaluated=False)
    result = runner.invoke(app, ["compare", str(bare), str(no_eval)])
    assert result.exit_code == 0, result.output
    got = printed_table(result.output)
    for metric in ("steps", "seconds / step", "tokens / s", "peak memory", "eval loss", "perplexity", "style share"):
        assert got[metric][0] == "-", metric
    # without evaluate, the trainer's last eval loss
    assert got["eval loss"][1] == "2.1000" and got["eval loss from"][1] == "train" and got["style share"][1] == "-"
    assert got["trainable params"] == ["16,000 (1.60%)"] * 2


def test_a_cut_off_file_is_a_dash_and_a_warning(tmp_path):
    run = fake_run(tmp_path, "cut")
    (run / "train" / "metrics.json").write_text('{"steps": 1')
    facts = read_run(run)
    assert facts.steps is None and facts.eval_loss == 2.0  # evaluate's report still read
    assert any("metrics.json could not be read" in w for w in warnings([facts]))


def test_a_run_from_before_the_method_key(tmp_path):
    old_qlora = fake_run(tmp_path, "old", method=None)
    (old_qlora / "recipe.yaml").write_text(yaml.safe_dump({"model": {"quantization": "nf4"}, "train": {"learning_rate": 1e-3}}))
    assert read_run(old_qlora).method == "qlora"


@pytest.mark.parametrize("methods, warned", [
    (("lora", "full"), True), (("qlora", "full"), True), (("lora", "qlora"), False), (("full", "full"), False),
])
def test_warns_when_lora_and_full_share_a_learning_rate(tmp_path, methods, warned):
    runs = [read_run(fake_run(tmp_path, f"r{i}-{m}", method=m, lr=2e-4)) for i, m in enumerate(methods)]
    lines = warnings(runs)
    assert bool(lines) == warned
    if warned:
        assert len(lines) == 1 and "2e-04" not in lines[0] and "0.0002" in lines[0] and "10x" in lines[0]
        assert all(f"({m})" in lines[0] for m in methods)


def test_the_warning_is_printed(tmp_path):
    a, b = fake_run(tmp_path, "a"), fake_run(tmp_path, "b", method="full")
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0
    assert re.search(r"warning: a \(lora\), b \(full\) share learning rate 0.001 across methods", result.output)


def test_runs_with_one_name_are_told_apart_by_path(tmp_path):
    runs = [read_run(fake_run(tmp_path / side, "demo")) for side in ("x", "y")]
    from sft_pipeline.orchestration.compare import column_names

    assert column_names(runs) == [str(tmp_path / "x" / "demo"), str(tmp_path / "y" / "demo")]


@pytest.mark.parametrize("make, says", [
    (lambda p: p.mkdir(), "not a run directory (no recipe.yaml or manifest.json)"),
    (lambda p: None, "no such folder"),
    (lambda p: p.write_text("x"), "no such folder"),
])
def test_not_a_run_directory_is_one_line(tmp_path, make, says):
    good = fake_run(tmp_path, "good")
    bad = tmp_path / "bad"
    make(bad)
    result = runner.invoke(app, ["compare", str(good), str(bad)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines == [f"error: compare: {bad}: {says}"], result.output
    with pytest.raises(CompareError):
        read_run(bad)


def test_rows_cover_every_metric_the_issue_names(tmp_path):
    labels = [label for label, _ in rows([read_run(fake_run(tmp_path, "r"))])]
    for metric in ("method", "trainable params", "total params", "seconds / step", "tokens / s", "peak memory",
                   "eval loss", "perplexity", "style share", "learning rate"):
        assert metric in labels
