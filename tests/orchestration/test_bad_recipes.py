"""Bad recipes: every key with a wrong value is refused in one line naming the key, before any
stage runs, any model or dataset loads, or any heavy library (torch, transformers, ...) is imported:
what keeps the refusal under a second. That is asserted, not the seconds, which a loaded machine
can stretch.

The cases are generated from the pydantic schema (config.Recipe), so a key added later is covered
by itself: a wrong type for every key, a bad choice for every enum, the bound for every range.
Keys that name something outside the recipe (files, the model) get hand-written cases below.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types as at
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from sft_pipeline.cli import app
from sft_pipeline.config import LR_SCHEDULERS, Recipe

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "deeplake")


# ---- cases from the schema ----------------------------------------------------------------

def _leaves(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _flat(ann) -> list:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(ann) for a in _flat(arg)]
    return [ann]


def _wrong_type(ann):
    """A value of the wrong type (or not among the choices) for this annotation, or None."""
    kinds = [a for a in _flat(ann) if a is not type(None)]
    if any(typing.get_origin(a) is typing.Literal for a in kinds):
        return "enum", "zzz-not-a-choice"
    if bool in kinds:
        return "type", "maybe"
    if int in kinds:
        return "type", "many"
    if float in kinds:
        return "type", "fast"
    if str in kinds:
        return "type", {"not": "a string"}  # also not a list, for str | list[str]
    if any(a is dict or typing.get_origin(a) is dict for a in kinds):
        return "type", "not-a-mapping"
    if any(typing.get_origin(a) is list for a in kinds):
        return "type", "not-a-list"
    return None


def _out_of_range(field, ann):
    is_int = int in _flat(ann) and float not in _flat(ann)
    step = 1 if is_int else 0.5
    for meta in field.metadata:
        if isinstance(meta, at.Ge):
            yield "range", meta.ge - step
        elif isinstance(meta, at.Gt):
            yield "range", meta.gt  # the bound itself is out
        elif isinstance(meta, at.Lt):
            yield "range", meta.lt
        elif isinstance(meta, at.Le):
            yield "range", meta.le + step


def schema_cases() -> list[tuple[str, str, object]]:
    cases = []
    for key, field in _leaves(Recipe):
        wrong = _wrong_type(field.annotation)
        assert wrong is not None, f"{key}: no wrong-type value for {field.annotation}; teach _wrong_type this type"
        cases.append((key, *wrong))
        cases.extend((key, kind, value) for kind, value in _out_of_range(field, field.annotation))
    for name, field in Recipe.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            cases.append((name, "type", 5))  # a section that is not a mapping
            cases.append((f"{name}.no_such_key", "unknown", 1))
    cases.append(("no_such_section", "unknown", {"a": 1}))
    return cases


# Keys whose values name something outside the recipe, or need more than the type to be wrong.
def semantic_cases(tmp: Path) -> list[tuple[str, str, object]]:
    a_file = tmp / "a-file"
    a_file.write_text("x")
    return [
        ("data.source", "missing file", str(tmp / "no-such-data.jsonl")),
        ("data.source", "missing file", str(tmp / "no-such-folder")),
        ("data.source", "missing file", str(tmp / "nothing-*.jsonl")),
        ("data.source", "unknown ref", "bundled:no_such_dataset"),
        ("data.eval_source", "missing file", str(tmp / "no-such-eval.jsonl")),
        ("data.sources", "missing file", [{"source": "bundled:lima_house_style"}, {"source": str(tmp / "no-such.jsonl")}]),
        ("data.sources", "unknown ref", [{"source": "bundled:no_such_dataset", "weight": 1}]),
        ("data.sources", "value", [{"source": "bundled:lima_house_style", "weight": 1}, {"source": str(a_file)}]),
        ("data.sources", "value", []),
        ("model.ref", "missing file", str(tmp / "no-such-model")),
        ("model.ref", "missing file", str(tmp / "no-such.gguf")),
        ("model.ref", "unknown ref", "bundled:no-such-model"),
        ("model.ref", "unknown ref", "not a model id!"),
        ("run_dir", "missing file", str(a_file)),  # a file where the run directory should be
        ("template.user", "value", "Q: {question}"),
        ("template.assistant", "value", "{content} {content}"),
        ("evaluate.style_regex", "value", "(unclosed"),
        ("train.lr_scheduler_type", "enum", "cosine_annealing"),
        ("data.eval_split", "value", None),  # with eval_strategy: epoch, an eval split is needed
    ]


SCHEMA_CASES = schema_cases()


def _tree(tmp: Path, key: str, value) -> dict:
    tree: dict = {"name": "bad", "run_dir": str(tmp / "run")}
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    if key == "data.eval_split":
        tree.setdefault("train", {})["eval_strategy"] = "epoch"
    return tree


def _write(tmp: Path, key: str, value, i: int) -> Path:
    path = tmp / f"case{i}.yaml"
    path.write_text(yaml.safe_dump(_tree(tmp, key, value)))
    return path


def _names_key(line: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", line) is not None


runner = CliRunner()


def _check(path: Path, key: str, command: str = "validate") -> None:
    result = runner.invoke(app, [command, str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, f"{key}: exit {result.exit_code}, output: {result.output!r}"
    assert len(lines) == 1, f"{key}: not one line: {result.output!r}"
    assert lines[0].startswith("error: ") and _names_key(lines[0], key), f"{key} not named in {lines[0]!r}"


@pytest.fixture
def no_work(monkeypatch) -> list[str]:
    """What would make a refusal slow, each made to fail and recorded: a stage's produce (every
    stage runs through stages.producer), a model, tokenizer or config from transformers, a dataset
    from datasets. The list it returns must stay empty."""
    import datasets
    import transformers

    from sft_pipeline import stages

    done: list[str] = []

    def refuse(what: str):
        def call(*args, **kwargs):
            done.append(what)
            raise AssertionError(f"{what} was called for a bad recipe")
        return call

    monkeypatch.setattr(stages, "producer", lambda name: refuse(f"stage {name}"))
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        monkeypatch.setattr(auto, "from_pretrained", refuse(f"{auto.__name__}.from_pretrained"))
    for name in ("load_dataset", "load_from_disk"):
        monkeypatch.setattr(datasets, name, refuse(f"datasets.{name}"))
    return done


def test_the_base_recipe_of_the_cases_is_valid(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "run_dir": str(tmp_path / "run")}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_every_key_has_a_case():
    covered = {key for key, _, _ in SCHEMA_CASES}
    assert covered >= {key for key, _ in _leaves(Recipe)}
    assert len(SCHEMA_CASES) > 60


@pytest.mark.parametrize("key, kind, value", SCHEMA_CASES, ids=[f"{k}-{kind}" for k, kind, _ in SCHEMA_CASES])
def test_wrong_value_from_the_schema_is_one_line_naming_the_key(tmp_path, no_work, key, kind, value):
    _check(_write(tmp_path, key, value, 0), key)
    assert no_work == [], f"{key}: {no_work}"


def _commands(key: str) -> tuple[str, ...]:
    """validate, run, and the stage that reads the key first."""
    return ("validate", "run", "load" if key.startswith("data.") else "prepare")


def test_wrong_file_or_model_ref_is_one_line_naming_the_key(tmp_path, no_work):
    for i, (key, kind, value) in enumerate(semantic_cases(tmp_path)):
        path = _write(tmp_path, key, value, i)
        for command in _commands(key):
            _check(path, key, command)
            assert no_work == [], f"{key} ({kind}) via {command}: {no_work}"
        assert not (tmp_path / "run").exists(), f"{key}: the run directory was written to"


def test_scheduler_names_match_the_installed_transformers():
    from transformers.trainer_utils import SchedulerType

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}


def test_unknown_extra_arg_is_refused_before_the_model_loads(tmp_path, no_work):
    # train.extra_args is checked against TRL's SFTConfig, which takes seconds to import, so this
    # one key may import the training stack; it still fails before any stage runs or model loads.
    path = _write(tmp_path, "train.extra_args", {"not_an_sft_argument": 1}, 0)
    for command in ("validate", "run", "train"):
        _check(path, "train.extra_args.not_an_sft_argument", command)
        assert no_work == [], f"via {command}: {no_work}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, why", [
    ("output_dir", "/tmp/elsewhere", "set by the pipeline"),
    ("dataset_kwargs", {}, "set by the pipeline"),
    ("bf16", True, "set train.precision"),
    ("gradient_checkpointing", True, "set model.gradient_checkpointing"),
    ("learning_rate", 0.1, "set train.learning_rate instead"),
])
def test_extra_args_cannot_replace_what_the_pipeline_or_the_recipe_sets(tmp_path, key, value, why):
    """SFTConfig(**{..., **extra_args}) let extra_args silently win: an output_dir elsewhere broke
    resume, dataset_kwargs re-tokenized the packed blocks, learning_rate hid train.learning_rate."""
    path = _write(tmp_path, "train.extra_args", {key: value}, 0)
    _check(path, f"train.extra_args.{key}")
    assert why in runner.invoke(app, ["validate", str(path)]).output


# One process runs every case through the real CLI entry point, then reports which heavy modules
# it imported: none may be, so no model can have been loaded.
DRIVER = r"""
import json, sys
from typer.testing import CliRunner
from sft_pipeline.cli import app
runner = CliRunner()
out = []
for key, path, command in json.load(open(sys.argv[1])):
    r = runner.invoke(app, [command, path])
    out.append({"key": key, "command": command, "code": r.exit_code, "output": r.output})
heavy = sorted(m for m in sys.argv[2].split(",") if m in sys.modules)
print(json.dumps({"cases": out, "heavy": heavy}))
"""


def test_no_heavy_import_and_no_model_load_for_any_bad_recipe(tmp_path):
    jobs = [(key, str(_write(tmp_path, key, value, i)), "validate") for i, (key, _, value) in enumerate(SCHEMA_CASES)]
    jobs += [(key, jobs[i][1], "run") for i, (key, _, _) in enumerate(SCHEMA_CASES)]
    for i, (key, _, value) in enumerate(semantic_cases(tmp_path), start=len(SCHEMA_CASES)):
        path = str(_write(tmp_path, key, value, i))
        jobs += [(key, path, command) for command in _commands(key)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "jobs.json"), ",".join(HEAVY)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["heavy"] == [], f"a bad recipe imported {report['heavy']}"
    for case in report["cases"]:
        lines = [line for line in case["output"].splitlines() if line.strip()]
        assert case["code"] == 2 and len(lines) == 1 and _names_key(lines[0], case["key"]), case
    assert [(c["key"], c["command"]) for c in report["cases"]] == [(key, command) for key, _, command in jobs]
    assert not (tmp_path / "run").exists()


def test_cli_process_refuses_a_bad_recipe_without_a_heavy_import(tmp_path):
    """The whole `sft-pipeline validate` process, interpreter start and imports included: what
    makes it take well under a second (0.6-0.7 s on this project's idle 2-core machine) is that
    no heavy library is imported. -X importtime lists every module the process imports, on
    stderr, besides the one error line."""
    cases = [("train.learning_rate", "fast"), ("pack.strategy", "zigzag"),
             ("model.ref", "bundled:no-such-model"), ("data.source", str(tmp_path / "missing.jsonl"))]
    for i, (key, value) in enumerate(cases):
        path = _write(tmp_path, key, value, i)
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sft_pipeline.cli", "validate", str(path)],
                              capture_output=True, text=True, timeout=60)
        imports = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
        assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr[-2000:])
        assert len(lines) == 1 and _names_key(lines[0], key), lines
        assert "sft_pipeline.config" in imports, imports[-20:]  # the list is of this process's imports
        heavy = sorted({name.split(".")[0] for name in imports} & set(HEAVY))
        assert heavy == [], f"{key}: the validate process imported {heavy}"
