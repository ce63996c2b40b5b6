"""Sweep files made into trials (orchestration/sweep_plan.py), results (orchestration/sweep_results.py) and the W&B
group: no model is loaded here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sft_pipeline.config import RecipeError
from sft_pipeline.orchestration.sweep import eval_numbers, share_plan
from sft_pipeline.orchestration.sweep_plan import load_sweep, trial_names
from sft_pipeline.orchestration.sweep_results import failures, plot, ranked, read_records, results_table, write_records

BASE = {"model": {"ref": "bundled:smollm2-135m-instruct"}, "train": {"max_steps": 2}}


def sweep_file(tmp_path, body: dict, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": BASE, "sweep_dir": str(tmp_path / "sw"), **body}, sort_keys=False))
    return path


def test_grid_zip_and_random_make_the_product_of_their_axes(tmp_path):
    plan = load_sweep(sweep_file(tmp_path, {
        "grid": {"lora.r": [4, 8]},
        "zip": [{"lora.lora_alpha": [8, 16], "lora.lora_dropout": [0.0, 0.1]}],
        "random": {"count": 3, "seed": 7, "params": {"train.learning_rate": {"log_uniform": [1e-5, 1e-2]}}},
    }))
    assert len(plan.trials) == 2 * 2 * 3
    assert plan.keys == ("lora.r", "lora.lora_alpha", "lora.lora_dropout", "train.learning_rate")
    pairs = {(t.values["lora.lora_alpha"], t.values["lora.lora_dropout"]) for t in plan.trials}
    assert pairs == {(8.0, 0.0), (16.0, 0.1)}  # zip: taken together, never crossed
    rates = {t.values["train.learning_rate"] for t in plan.trials}
    assert len(rates) == 3 and all(1e-5 <= lr <= 1e-2 for lr in rates)
    # each grid point is crossed with the same three draws
    for r in (4, 8):
        assert {t.values["train.learning_rate"] for t in plan.trials if t.values["lora.r"] == r} == rates
    names = [t.name for t in plan.trials]
    assert len(set(names)) == len(names)
    for t in plan.trials:  # every trial: its own run dir under the sweep's, its name, the sweep's group
        assert t.run_dir == tmp_path / "sw" / t.name
        assert t.recipe.name == t.name and t.recipe.tracking.group == "s"
        assert t.recipe.lora.r == t.values["lora.r"] and t.recipe.train.max_steps == 2


def test_the_same_file_makes_the_same_trials_and_another_seed_other_draws(tmp_path):
    body = {"random": {"count": 4, "seed": 1, "params": {"lora.r": {"log_uniform": [4, 64]},
                                                         "lora.lora_dropout": {"uniform": [0.0, 0.2]},
                                                         "train.lr_scheduler_type": {"choice": ["cosine", "linear"]}}}}
    first = load_sweep(sweep_file(tmp_path, body))
    again = load_sweep(sweep_file(tmp_path, body))
    assert [(t.name, t.values) for t in first.trials] == [(t.name, t.values) for t in again.trials]
    for t in first.trials:
        assert isinstance(t.values["lora.r"], int) and 4 <= t.values["lora.r"] <= 64  # an int key draws ints
        assert isinstance(t.values["lora.lora_dropout"], float)
        assert t.values["lora.lora_dropout"] == float(f"{t.values['lora.lora_dropout']:.3g}")  # 3 digits kept
    body["random"]["seed"] = 2
    other = load_sweep(sweep_file(tmp_path, body))
    assert [t.values for t in other.trials] != [t.values for t in first.trials]


def test_trial_names_are_short_safe_and_unique():
    keys = ["lora.r", "lora.lora_alpha"]
    assert trial_names([{"lora.r": 8, "lora.lora_alpha": 16.0}], keys) == ["r8-alpha16"]
    names = trial_names([{"train.learning_rate": 1e-5}, {"train.learning_rate": 0.0002}], ["train.learning_rate"])
    assert names == ["lr1e-5", "lr0.0002"]
    weird = trial_names([{"lora.target_modules": ["q_proj", "v_proj"]}, {"lora.target_modules": "a/b c"}],
                        ["lora.target_modules"])
    assert weird == ["targets_q_proj_v_proj", "targets_a_b_c"]
    # two keys with one last part are told apart by their sections
    assert trial_names([{"model.dtype": "float32", "merge.dtype": "bfloat16"}], ["model.dtype", "merge.dtype"]) == \
        ["model_dtype_float32-merge_dtype_bfloat16"]
    # values that shorten to one name get a digest of their values; a long name is cut with one
    same = trial_names([{"x.k": "a b"}, {"x.k": "a/b"}], ["x.k"])
    assert len(set(same)) == 2 and all(n.startswith("k_a_b-") for n in same)
    long = trial_names([{"x.k": "v" * 200}], ["x.k"])[0]
    assert len(long) <= 64
    for name in same + [long]:
        assert all(c.isalnum() or c in "._-" for c in name)


@pytest.mark.parametrize("body, message", [
    ({"grid": {"lora.rr": [1, 2]}}, r"s\.yaml: grid: lora\.rr: unknown key$"),
    ({"grid": {"lora.r": [8, 0]}}, r"s\.yaml: trial 2 \(lora\.r=0\): lora\.r: Input should be greater than or equal to 1"),
    ({"grid": {"train.lr_scheduler_type": ["cosine", "cosinee"]}},
     r"trial 2 \(train\.lr_scheduler_type=cosinee\): train\.lr_scheduler_type: .*unknown scheduler"),
    ({"gird": {"lora.r": [8]}}, r"s\.yaml: gird: unknown key$"),
    ({}, r"nothing to sweep"),
    ({"grid": {"lora.r": 8}}, r"grid.*lora\.r: Input should be a valid list"),
    ({"zip": [{"lora.r": [8, 16], "lora.lora_alpha": [16]}]}, r"zip: .*lora\.r: 2, lora\.lora_alpha: 1"),
    ({"grid": {"lora.r": [8, 8]}}, r"trials 1 and 2 have the same values \(lora\.r=8\)"),
    ({"grid": {"lora.r": [8]}, "zip": [{"lora.r": [4]}]}, r"zip: lora\.r: swept twice"),
    ({"grid": {"lora.r": [8]}, "set": {"lora.r": 4}}, r"grid: lora\.r: swept twice \(or also in set\)"),
    ({"grid": {"run_dir": ["a", "b"]}}, r"grid: run_dir: set by the sweep"),
    ({"grid": {"tracking.group": ["a"]}}, r"grid: tracking\.group: set by the sweep"),
    ({"grid": {"lora.r.x": [1]}}, r"grid: lora\.r\.x: 'r' is not a section"),
    ({"grid": {"lora.r": [8]}, "set": {"trian.seed": 1}}, r"set: trian\.seed: unknown key"),
    ({"grid": {"lora.r": [8]}, "until": "pak"}, r"until: 'pak' is not a stage"),
    ({"random": {"count": 3, "params": {"lora.r": {"choice": [4, 8]}}}}, r"only 2 different draws"),
    ({"random": {"count": 1, "params": {"train.learnin_rate": {"uniform": [0, 1]}}}},
     r"random\.params: train\.learnin_rate: unknown key"),
    ({"random": {"count": 1, "params": {"lora.lora_dropout": {"uniform": [0.2, 0.1]}}}}, r"low end must be below"),
    ({"random": {"count": 1, "params": {"train.learning_rate": {"log_uniform": [0, 1]}}}}, r"positive low end"),
    ({"random": {"count": 1, "params": {"lora.r": {"uniform": [1, 2], "choice": [3]}}}}, r"exactly one of"),
    ({"grid": {"lora.r": [8]}, "base": "missing.yaml"}, r"missing\.yaml: base recipe file not found"),
    ({"grid": {"lora.r": [8]}, "base": {"lora": {"rr": 1}}}, r"s\.yaml: lora\.rr: unknown key"),
])
def test_a_bad_sweep_is_one_line_naming_the_key_before_any_work(tmp_path, body, message):
    with pytest.raises(RecipeError) as err:
        load_sweep(sweep_file(tmp_path, body))
    line = str(err.value)
    assert "\n" not in line
    assert re.search(message, line), line
    assert not (tmp_path / "sw").exists()


def test_broken_yaml_in_a_sweep_or_its_base_names_file_and_line_as_for_a_recipe(tmp_path):
    broken = "grid:\n  lora.r: [8]\n  a: b\n    c: d\n"
    (tmp_path / "s.yaml").write_text(broken)
    with pytest.raises(RecipeError) as err:
        load_sweep(tmp_path / "s.yaml")
    assert str(err.value).startswith(f"{tmp_path / 's.yaml'}:4: not valid YAML: ")
    (tmp_path / "base.yaml").write_text(broken)
    with pytest.raises(RecipeError) as err:
        load_sweep(sweep_file(tmp_path, {"grid": {"lora.r": [8]}, "base": "base.yaml"}))
    assert str(err.value).startswith(f"{tmp_path / 'base.yaml'}:4: not valid YAML: ")
    with pytest.raises(RecipeError) as err:
        load_sweep(tmp_path / "nope.yaml")
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: sweep file not found"


def test_set_overrides_and_a_base_file_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text(yaml.safe_dump({"name": "ignored", "lora": {"r": 2}}))
    path = tmp_path / "recipes" / "sw.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"lora.lora_alpha": [4, 8]},
                                    "set": {"train.seed": 3}}))
    plan = load_sweep(path, ["train.max_steps=5"], sweep_dir=tmp_path / "out")
    assert plan.name == "sw" and plan.folder == tmp_path / "out"
    assert [t.name for t in plan.trials] == ["alpha4", "alpha8"]
    for t in plan.trials:
        assert (t.recipe.lora.r, t.recipe.train.seed, t.recipe.train.max_steps) == (2, 3, 5)
    with pytest.raises(RecipeError, match=r"--set lora\.lora_alpha: a swept key"):
        load_sweep(path, ["lora.lora_alpha=2"])


def test_what_is_computed_once_follows_the_fingerprints(tmp_path):
    lora = load_sweep(sweep_file(tmp_path, {"grid": {"lora.r": [4, 8, 16]}, "until": "merge"}))
    assert share_plan(lora) == {"load": 1, "template": 1, "pack": 1, "prepare": 3, "train": 3, "merge": 3}
    seq = load_sweep(sweep_file(tmp_path, {"grid": {"pack.seq_length": [64, 128]}}))
    assert share_plan(seq) == {"load": 1, "template": 1, "pack": 2, "prepare": 2, "train": 2}
    # a key only merge reads: everything up to train is shared, train included
    dtype = load_sweep(sweep_file(tmp_path, {"grid": {"merge.dtype": ["float32", "bfloat16"]}, "until": "merge"}))
    assert share_plan(dtype) == {"load": 1, "template": 1, "pack": 1, "prepare": 1, "train": 1, "merge": 2}
    with_eval = load_sweep(sweep_file(tmp_path, {"grid": {"generate.max_new_tokens": [8, 16]}, "evaluate": True}))
    assert with_eval.stages[-1] == "evaluate" and share_plan(with_eval)["train"] == 1
    assert share_plan(with_eval)["evaluate"] == 2


def test_the_sweep_group_reaches_wandb_as_its_run_group(tmp_path):
    import wandb

    from sft_pipeline.training.trackers import report_to

    plan = load_sweep(sweep_file(tmp_path, {"grid": {"lora.r": [4]}, "set": {"tracking.wandb": "offline"}}))
    _, env = report_to(plan.trials[0].recipe)
    assert env["WANDB_RUN_GROUP"] == "s"
    settings = wandb.Settings()
    settings.update_from_env_vars({**env})
    assert settings.run_group == "s"
    _, env = report_to(plan.trials[0].recipe.model_copy(update={"tracking": plan.trials[0].recipe.tracking.model_copy(
        update={"group": None})}))
    assert "WANDB_RUN_GROUP" not in env


def test_eval_loss_comes_from_evaluate_when_it_ran_else_from_train(tmp_path):
    from sft_pipeline.stages import open_run_directory

    plan = load_sweep(sweep_file(tmp_path, {"grid": {"lora.r": [4]}, "evaluate": True}))
    trial = plan.trials[0]
    run = open_run_directory(trial.run_dir, trial.recipe)
    with run.stage_output("train") as out:  # recorded complete, as a finished trial's stages are
        (out / "metrics.json").write_text(json.dumps({"eval_losses": [3.0, 2.5]}))
    assert eval_numbers(run, plan) == {"eval_loss": 2.5}
    with run.stage_output("evaluate") as out:
        (out / "report.json").write_text(json.dumps({"after": {"loss": {"eval": 2.25, "train": 2.0}, "style_share": 0.5}}))
    assert eval_numbers(run, plan) == {"eval_loss": 2.25, "style_share": 0.5}


def _records():
    def rec(name, r, loss, status="done", error=None):
        return {"trial": name, "values": {"lora.r": r, "train.lr_scheduler_type": "cosine" if r < 8 else "linear"},
                "status": status, "eval_loss": loss, "seconds": 1.5, "computed": ["train"],
                "shared": {"load": "r4", "pack": "r4"}, "error": error}
    return [rec("r4", 4, 2.5), rec("r8", 8, None, "failed", "train: ValueError: boom"), rec("r16", 16, 2.25)]


def test_records_round_trip_and_the_table_is_sorted_by_eval_loss(tmp_path):
    from rich.console import Console

    records = _records()
    write_records(tmp_path, records)
    assert read_records(tmp_path) == records
    assert len((tmp_path / "sweep.jsonl").read_text().splitlines()) == 3
    assert [r["trial"] for r in ranked(records)] == ["r16", "r4", "r8"]
    console = Console(width=200, record=True)
    console.print(results_table(records, ["lora.r", "train.lr_scheduler_type"], "t"))
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith("│ r")]
    assert [row.split()[1] for row in rows] == ["r16", "r4", "r8"]
    assert "2.2500" in rows[0] and "load, pack (r4)" in rows[0] and "failed" in rows[2]
    header = next(line for line in text.splitlines() if "trial" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")][:4] == ["trial", "r", "sched", "eval loss"]
    assert failures(records) == ["r8: train: ValueError: boom"]


def test_the_plot_is_a_png_with_a_panel_per_swept_key(tmp_path):
    import matplotlib

    path = plot(_records(), ["lora.r", "train.lr_scheduler_type"], tmp_path / "sweep.png")
    assert path == tmp_path / "sweep.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    assert width > 1.8 * height  # two panels side by side
    assert matplotlib.get_backend().lower() == "agg"
    assert not list(tmp_path.glob(".*tmp*"))
    # nothing to plot: no file
    assert plot([{**r, "eval_loss": None} for r in _records()], ["lora.r"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


SWEEPS = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("sweep-*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_loads_and_shares_the_data_stages(path):
    plan = load_sweep(path)
    assert len(plan.trials) >= 2
    assert all(n == 1 for stage, n in share_plan(plan).items() if stage in ("load", "template", "pack"))


def test_the_lora_r_example_names_its_trials_from_their_values():
    plan = load_sweep(SWEEPS[0].with_name("sweep-lora-r.yaml"))
    assert [t.name for t in plan.trials] == ["r8-alpha16", "r16-alpha32"]
    assert plan.folder == Path("runs/sweeps/lora-r") and plan.stages[-1] == "train"


def test_dry_run_lists_the_trials_and_what_they_share_and_runs_nothing(tmp_path):
    from typer.testing import CliRunner

    from sft_pipeline.cli import app

    path = sweep_file(tmp_path, {"grid": {"lora.r": [4, 8]}})
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("r4  {\"lora.r\": 4}  -> ") and lines[1].startswith("r8  ")
    assert lines[2] == "computed once for all trials: load, template, pack; prepare: 2 times, train: 2 times"
    assert not (tmp_path / "sw").exists()
    # what the stages would read is checked too: a data file that is not there
    bad = sweep_file(tmp_path, {"grid": {"lora.r": [4]}, "set": {"data.source": str(tmp_path / "none.jsonl")}})
    result = CliRunner().invoke(app, ["sweep", str(bad), "--dry-run"])
    assert result.exit_code == 2 and "data.source: " in result.output and "no such file" in result.output
