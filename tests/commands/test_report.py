"""`sft-pipeline report R`: PNG curves and one self-contained HTML page in the run directory."""

from __future__ import annotations

import base64
import json
import re

import yaml
from typer.testing import CliRunner

from sft_pipeline.cli import app

runner = CliRunner()


def _recipe_file(tmp_path, recipe) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json())))
    return str(path)


def _lines(output):
    return [line for line in output.splitlines() if line.strip()]


def test_report_before_training_says_what_is_missing_in_one_line(tmp_path, recipe_factory):
    recipe_path = _recipe_file(tmp_path, recipe_factory())
    assert runner.invoke(app, ["run", recipe_path, "--until", "prepare"]).exit_code == 0
    result = runner.invoke(app, ["report", recipe_path])
    assert result.exit_code == 2
    (line,) = _lines(result.output)
    assert "stage 'train' has not run" in line and "sft-pipeline train" in line
    assert not (tmp_path / "run" / "report").exists()


def test_report_has_the_curves_stages_and_answers(tmp_path, recipe_factory):
    from PIL import Image

    from sft_pipeline.config import HOUSE_STYLE

    recipe = recipe_factory(train={"max_steps": 4, "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2},
                            evaluate={"max_prompts": 2, "style_regex": HOUSE_STYLE})
    recipe_path = _recipe_file(tmp_path, recipe)
    assert runner.invoke(app, ["run", recipe_path]).exit_code == 0
    # before evaluate: the curves, and a note that the answers are missing
    early = runner.invoke(app, ["report", recipe_path])
    assert early.exit_code == 0, early.output
    assert "evaluate has not run" in early.output
    assert runner.invoke(app, ["evaluate", recipe_path]).exit_code == 0
    result = runner.invoke(app, ["report", recipe_path])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "report"
    page = folder / "index.html"
    assert f"report: {page.resolve()}" in result.output.replace("\n", "")

    html = page.read_text()
    for name in ("loss.png", "eval_loss.png", "learning_rate.png", "tokens_per_second.png"):
        png = (folder / name).read_bytes()
        assert Image.open(folder / name).size == (600, 340)
        assert base64.b64encode(png).decode() in html, name  # inlined, byte for byte
    assert not re.search(r"""(src|href)=['"]?(https?:|//|[^'" >]*\.(png|css|js))""", html)  # nothing fetched
    for stage in ("load", "template", "pack", "prepare", "train", "merge", "evaluate"):
        assert f"<td>{stage}</td>" in html
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    assert f"{report['after']['perplexity']['eval']:.2f}" in html and "style share" in html
    from html import escape

    for row in json.loads((tmp_path / "run" / "evaluate" / "answers.json").read_text())["rows"]:
        assert escape(row["after"]) in html and escape(row["prompt"]) in html


def test_report_without_evaluation_during_training_says_so(tmp_path, recipe_factory):
    recipe_path = _recipe_file(tmp_path, recipe_factory(train={"max_steps": 2, "eval_strategy": "no"}))
    assert runner.invoke(app, ["run", recipe_path]).exit_code == 0
    result = runner.invoke(app, ["report", str(tmp_path / "run")])  # a run directory works as well as a recipe
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "report"
    assert (folder / "loss.png").is_file() and not (folder / "eval_loss.png").exists()
    assert "no eval loss to draw" in result.output
    assert "no eval loss to draw" in (folder / "index.html").read_text()
