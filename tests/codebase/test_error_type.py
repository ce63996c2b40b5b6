"""One error type: every error class of the package is a PipelineError, and the CLI prints any
PipelineError (one it has never heard of included) as one line, status 2, led by its stage."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import typer

import sft_pipeline
from sft_pipeline.cli import guarded
from sft_pipeline.errors import PipelineError

# the classes the package had before the one type: the walk below must find at least these
NAMED = {"RecipeError", "StageError", "LockedError", "FormatError", "SourceError", "TemplateError", "PackError",
         "ModelRefError", "HardwareError", "MergeError", "IsolationError", "TrainConfigError"}


def _package_error_classes() -> list[type[Exception]]:
    """Every Exception subclass defined in a module of the package (imported here: a module that
    cannot be imported fails the test, since its classes would go unchecked). A deliberate exit
    (train's StoppedBySignal, a SystemExit) is a BaseException, not an Exception: not an error."""
    found = []
    for info in pkgutil.walk_packages(sft_pipeline.__path__, "sft_pipeline."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, Exception):
                found.append(cls)
    return found


ERRORS = _package_error_classes()


def _printed(capsys, exc: BaseException) -> tuple[int, list[str]]:
    def fail() -> None:
        raise exc

    capsys.readouterr()  # what ran before: not the error's output
    with pytest.raises(typer.Exit) as info:
        guarded(fail)
    return info.value.exit_code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_the_walk_finds_every_named_error_class():
    assert {cls.__name__ for cls in ERRORS} >= NAMED


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_class_is_a_pipeline_error_and_keeps_its_builtin_base(cls):
    assert issubclass(cls, PipelineError), f"{cls.__module__}.{cls.__name__} is not a PipelineError"
    # `except ValueError` / `except RuntimeError` around the package's calls still catches them
    assert cls is PipelineError or issubclass(cls, (ValueError, RuntimeError)), cls.__mro__


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_class_prints_one_line_and_status_2(cls, capsys):
    code, lines = _printed(capsys, cls("model.ref: something is wrong\n  and this is how"))
    assert code == 2
    assert lines == ["error: model.ref: something is wrong and this is how"]


def test_a_new_error_class_needs_no_change_to_the_cli(capsys):
    class BrandNewError(PipelineError, ValueError):
        pass

    code, lines = _printed(capsys, BrandNewError("data.source: a problem nobody listed"))
    assert (code, lines) == (2, ["error: data.source: a problem nobody listed"])


@pytest.mark.parametrize("message, line", [("no blocks of 64 tokens", "error: pack: no blocks of 64 tokens"),
                                           ("pack: no blocks", "error: pack: no blocks")])
def test_the_line_is_led_by_its_stage_once(message, line, capsys):
    assert _printed(capsys, PipelineError(message, stage="pack")) == (2, [line])


def test_anything_else_is_still_an_unexpected_error(capsys):
    code, lines = _printed(capsys, ValueError("a plain bug"))
    assert code == 1 and lines == ["error: ValueError: a plain bug (run with --debug for the full traceback)"]


def test_an_error_raised_inside_a_stage_gets_that_stage(tmp_path, recipe_factory, monkeypatch, capsys):
    import sft_pipeline.orchestration.pipeline as pipeline
    from sft_pipeline.data.prompts import TemplateError
    from sft_pipeline.stages import open_run_directory

    def runner(stage):
        def run(run, out):
            raise TemplateError("template.user: no {content} placeholder")
        return run

    monkeypatch.setattr(pipeline, "_producer", runner)
    recipe = recipe_factory()
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    with pytest.raises(TemplateError) as info:
        pipeline.update_stage(run, "template")
    assert info.value.stage == "template"
    assert _printed(capsys, info.value) == (2, ["error: template: template.user: no {content} placeholder"])


def test_a_stage_the_raiser_named_is_kept(tmp_path, recipe_factory, monkeypatch):
    import sft_pipeline.orchestration.pipeline as pipeline
    from sft_pipeline.stages import open_run_directory

    def runner(stage):
        def run(run, out):
            raise PipelineError("an upstream stage's problem", stage="load")
        return run

    monkeypatch.setattr(pipeline, "_producer", runner)
    recipe = recipe_factory()
    with pytest.raises(PipelineError) as info:
        pipeline.update_stage(open_run_directory(recipe.resolved_run_dir(), recipe), "template")
    assert info.value.stage == "load"


def test_a_refusal_before_any_stage_has_no_stage():
    """validate and preflight refuse a recipe before any stage runs: no stage to name."""
    from sft_pipeline.config import RecipeError

    assert RecipeError("train.seed: not an integer").stage is None
    assert RecipeError("train.seed: not an integer").line == "train.seed: not an integer"
