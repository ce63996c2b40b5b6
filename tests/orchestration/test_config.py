"""The recipe schema: defaults, shipped recipes, one-line errors, --set overrides, and `validate`."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sft_pipeline.cli import app
from sft_pipeline.config import Recipe, RecipeError, load_recipe, parse_overrides, recipe_from_dict, recipe_to_yaml

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


# ---- defaults and shipped recipes ---------------------------------------------------------

def test_default_recipe_validates():
    recipe = Recipe()
    assert Recipe.model_validate(recipe.model_dump()) == recipe
    assert recipe.data.source == "bundled:lima_house_style"
    assert recipe.model.ref == "bundled:smollm2-135m-instruct"
    assert recipe.resolved_run_dir() == Path("runs") / "run"


def test_default_recipe_round_trips_through_yaml():
    recipe = Recipe()
    assert recipe_from_dict(yaml.safe_load(recipe_to_yaml(recipe))) == recipe


# sweep-*.yaml are sweep files (a base recipe and values per key): tests/orchestration/test_sweep_plan.py loads them
SHIPPED = [p for p in sorted(RECIPES.rglob("*.yaml")) + sorted(RECIPES.rglob("*.yml")) if not p.name.startswith("sweep-")]


def test_there_are_shipped_recipes():
    assert len(SHIPPED) >= 1


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == (yaml.safe_load(path.read_text()) or {}).get("name", path.stem)


def test_name_defaults_to_the_file_stem(tmp_path):
    assert load_recipe(write(tmp_path, "", "my-run.yaml")).name == "my-run"
    assert load_recipe(write(tmp_path, "name: other\n", "my-run.yaml")).name == "other"


# ---- one-line errors ---------------------------------------------------------------------

def test_unknown_key_names_dotted_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  learnin_rate: 0.1\n")
    assert load_error(path) == f"{path}: train.learnin_rate: unknown key"


def test_unknown_top_level_section(tmp_path):
    path = write(tmp_path, "trian:\n  max_steps: 1\n")
    assert load_error(path) == f"{path}: trian: unknown key"


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: fast\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}: train.learning_rate: ")
    assert "'fast'" in msg


def test_bad_enum_names_key_and_value(tmp_path):
    path = write(tmp_path, "pack:\n  strategy: greedy\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}: pack.strategy: ")
    assert "'greedy'" in msg and "'bfd'" in msg


def test_out_of_range_value(tmp_path):
    msg = load_error(write(tmp_path, "lora:\n  lora_dropout: 1.5\n"))
    assert ": lora.lora_dropout: " in msg and "1.5" in msg


def test_more_errors_are_counted_not_listed(tmp_path):
    msg = load_error(write(tmp_path, "train:\n  learning_rate: fast\n  max_steps: x\n"))
    assert msg.endswith("(1 more)")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  max_steps: 1\n  a: b\n    c: d\n")
    msg = load_error(path)
    assert msg.startswith(f"{path}:5: not valid YAML: ")


def test_recipe_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- 1\n- 2\n")
    assert load_error(path) == f"{path}: a recipe is a mapping of sections, got list"


def test_missing_recipe_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert load_error(path) == f"{path}: recipe file not found"


def test_template_user_without_content_is_refused(tmp_path):
    msg = load_error(write(tmp_path, "template:\n  user: 'Q: {question}'\n"))
    assert ": template.user: " in msg and "{content}" in msg


def test_template_content_twice_is_refused():
    with pytest.raises(RecipeError, match=r"template\.assistant: .*exactly once"):
        recipe_from_dict({"template": {"assistant": "{content} {content}"}})


def test_style_regex_must_compile(tmp_path):
    msg = load_error(write(tmp_path, "evaluate:\n  style_regex: '(unclosed'\n"))
    assert ": evaluate.style_regex: " in msg and "not a valid regex" in msg


def test_style_regex_null_is_allowed(tmp_path):
    assert load_recipe(write(tmp_path, "evaluate:\n  style_regex: null\n")).evaluate.style_regex is None


def test_eval_strategy_needs_eval_split(tmp_path):
    msg = load_error(write(tmp_path, "data:\n  eval_split: null\ntrain:\n  eval_strategy: steps\n"))
    assert "train.eval_strategy needs an eval set: data.eval_split, eval_size or eval_source" in msg


def test_no_eval_split_is_fine_without_evaluation(tmp_path):
    # a bare YAML `no` is read as False; the validator makes it "no"
    recipe = load_recipe(write(tmp_path, "data:\n  eval_split: null\ntrain:\n  eval_strategy: no\n"))
    assert recipe.data.eval_split is None and recipe.train.eval_strategy == "no"


# ---- YAML 1.1 booleans --------------------------------------------------------------------

def test_yaml_bare_off_and_on(tmp_path):
    recipe = load_recipe(write(tmp_path, "tracking:\n  wandb: off\nmodel:\n  gradient_checkpointing: on\n"))
    assert recipe.tracking.wandb == "off"
    assert recipe.model.gradient_checkpointing == "on"


def test_yaml_true_false_for_gradient_checkpointing(tmp_path):
    assert load_recipe(write(tmp_path, "model:\n  gradient_checkpointing: true\n")).model.gradient_checkpointing == "on"
    assert load_recipe(write(tmp_path, "model:\n  gradient_checkpointing: off\n")).model.gradient_checkpointing == "off"


def test_yaml_on_for_wandb_means_auto(tmp_path):
    assert load_recipe(write(tmp_path, "tracking:\n  wandb: on\n")).tracking.wandb == "auto"


# ---- --set overrides ----------------------------------------------------------------------

def test_parse_overrides():
    assert parse_overrides(["train.max_steps=5", " pack.strategy =wrapped", "a.b=x=y"]) == [
        ("train.max_steps", "5"), ("pack.strategy", "wrapped"), ("a.b", "x=y"),
    ]
    assert parse_overrides(None) == []


def test_overrides_apply_with_yaml_typing(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 100\n")
    recipe = load_recipe(path, overrides=["train.max_steps=5", "pack.strategy=wrapped",
                                           "lora.target_modules=[q_proj, v_proj]", "train.learning_rate=1e-3",
                                           "tracking.wandb=off", "name=renamed"])
    assert recipe.train.max_steps == 5 and isinstance(recipe.train.max_steps, int)
    assert recipe.pack.strategy == "wrapped"
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.train.learning_rate == pytest.approx(1e-3)
    assert recipe.tracking.wandb == "off"
    assert recipe.name == "renamed"


def test_override_without_equals_errors(tmp_path):
    path = write(tmp_path, "")
    msg = load_error(path, ["train.max_steps"])
    assert "--set 'train.max_steps'" in msg and "KEY=VALUE" in msg
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_overrides(["oops"])


def test_override_is_validated_like_the_file(tmp_path):
    path = write(tmp_path, "")
    assert load_error(path, ["train.max_stepz=5"]) == f"{path}: train.max_stepz: unknown key"
    msg = load_error(path, ["train.max_steps=abc"])
    assert msg.startswith(f"{path}: train.max_steps: ") and "'abc'" in msg


def test_override_through_a_non_section_errors(tmp_path):
    msg = load_error(write(tmp_path, "name: x\n"), ["name.sub=1"])
    assert msg == "--set name.sub: 'name' is not a section"


# ---- the CLI `validate` command -----------------------------------------------------------

def test_cli_validate_unknown_key_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  learnin_rate: 0.1\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "train.learnin_rate" in lines[0] and str(path) in lines[0]


def test_cli_validate_bad_set_exits_2(tmp_path):
    path = write(tmp_path, "name: x\n")
    result = CliRunner().invoke(app, ["validate", str(path), "--set", "train.max_steps"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --set 'train.max_steps'")


def test_cli_validate_missing_local_model_exits_2(tmp_path):
    path = write(tmp_path, f"model:\n  ref: {tmp_path / 'no-such-model'}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: model.ref: ") and "folder not found" in result.output


def test_cli_validate_good_recipe_with_tiny_model(tmp_path, tiny_model_dir):
    path = write(tmp_path, f"name: tiny\nmodel:\n  ref: {tiny_model_dir}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich may wrap the line at the console width
    assert "ok (tiny" in text and "error" not in text


def test_cli_validate_bundled_model_ref(tmp_path):
    path = write(tmp_path, "name: demo\nmodel:\n  ref: bundled:smollm2-135m-instruct\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (demo" in " ".join(result.output.split())


def test_cli_validate_unknown_bundled_model(tmp_path):
    path = write(tmp_path, "model:\n  ref: bundled:nope\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "unknown bundled model 'nope'" in result.output


def test_union_field_error_names_the_key_not_the_branch():
    from sft_pipeline.config import RecipeError, recipe_from_dict

    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"lora": {"target_modules": 5}}, "r.yaml")
    assert str(info.value).startswith("r.yaml: lora.target_modules: ")
