"""The command line: one command per stage, plus run, status, generate, evaluate and validate.

Every command takes a recipe file (or a run directory, whose frozen recipe.yaml is used) and
`--set section.key=value` overrides. Known failures print one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import Recipe, RecipeError, load_recipe
from .rundir import STAGES, RunDir, StageError

# PEFT reads transformers' deprecated `is_gradient_checkpointing` on every model it wraps: a
# warning about library code that a user of this command can do nothing about
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Staged supervised fine-tuning with TRL, LoRA and QLoRA, driven by YAML recipes.")
out = Console()
err = Console(stderr=True)

TargetArg = typer.Argument(..., help="recipe YAML, or a run directory (uses its recipe.yaml)")
SetOpt = typer.Option(None, "--set", help="override a recipe key: section.key=value (repeatable)")
RunDirOpt = typer.Option(None, "--run-dir", help="run directory (default: the recipe's run_dir or runs/<name>)")


def _known_errors() -> tuple[type[BaseException], ...]:
    from .formats import FormatError
    from .isolation import IsolationError
    from .models import ModelRefError
    from .sources import SourceError
    from .stages.merge import MergeError
    from .stages.pack import PackError
    from .stages.template import TemplateError
    from .stages.train import TrainConfigError

    return (RecipeError, StageError, SourceError, ModelRefError, FormatError, TemplateError,
            TrainConfigError, MergeError, PackError, IsolationError, OSError)


def close_progress_bars() -> None:
    """A stage that fails inside a loop leaves its tqdm bar (Trainer's, datasets') open and
    mid-line; closing it ends that line, so the error gets a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except _known_errors() as exc:
        close_progress_bars()
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def resolve_recipe(target: Path, overrides: Optional[list[str]], run_dir: Optional[Path]) -> Recipe:
    if target.is_dir():
        frozen = target / "recipe.yaml"
        if not frozen.is_file():
            raise RecipeError(f"{target}: not a run directory (no recipe.yaml)")
        recipe = load_recipe(frozen, overrides)
        recipe.run_dir = str(target)
    else:
        recipe = load_recipe(target, overrides)
    if run_dir is not None:
        recipe.run_dir = str(run_dir)
    return recipe


def _stage_command(stage: str) -> Callable:
    def command(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
                force: bool = typer.Option(False, "--force", help="redo the stage even if up to date")) -> None:
        from .pipeline import run_stage

        def go() -> None:
            recipe = resolve_recipe(target, set_, run_dir)
            run_stage(RunDir(recipe.resolved_run_dir(), recipe), stage, force=force)

        guarded(go)

    command.__name__ = stage
    return command


STAGE_HELP = {
    "load": "1. Read the data source; normalize records to conversations; count drops by reason.",
    "template": "2. Render conversations to text, recording where each assistant turn lies.",
    "pack": "3. Tokenize and pack into blocks of seq_length (wrapped, bfd or none).",
    "prepare": "4. Prepare the model: freeze, fp32 norms, checkpointing, NF4, LoRA; estimate memory.",
    "train": "5. Train the adapter with TRL's SFTTrainer (resumes from the last checkpoint).",
    "merge": "6. Merge the adapter into the base, save safetensors, verify logits.",
}
for _stage in STAGES:
    app.command(_stage, help=STAGE_HELP[_stage])(_stage_command(_stage))


@app.command("run")
def run_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
            force: bool = typer.Option(False, "--force", help="redo every stage"),
            until: Optional[str] = typer.Option(None, help="stop after this stage")) -> None:
    """Run every stage that is not up to date, in order."""
    from .pipeline import run_all

    def go() -> None:
        if until is not None and until not in STAGES:
            raise RecipeError(f"--until {until}: not a stage ({', '.join(STAGES)})")
        recipe = resolve_recipe(target, set_, run_dir)
        run = run_all(recipe, force=force, until=until)
        _print_status(run)

    guarded(go)


def _print_status(run: RunDir) -> None:
    from .pipeline import status_rows

    table = Table(title=f"run directory {run.path}")
    for col in ("stage", "state", "seconds", "summary"):
        table.add_column(col)
    for row in status_rows(run):
        table.add_row(*row)
    out.print(table)


@app.command("status")
def status_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Show each stage's state (complete, stale, missing), time and summary.

    Given a recipe (and --set overrides), stale means: `run` would redo this stage."""

    def go() -> None:
        recipe = resolve_recipe(target, set_, run_dir)
        _print_status(RunDir(recipe.resolved_run_dir(), recipe))

    guarded(go)


@app.command("inspect")
def inspect_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
                samples: int = typer.Option(2, help="rendered samples to show")) -> None:
    """Run load, template and pack if needed, then show counts, drops, lengths and trained spans."""
    from .inspect_data import show
    from .pipeline import run_stage

    def go() -> None:
        recipe = resolve_recipe(target, set_, run_dir)
        run = RunDir(recipe.resolved_run_dir(), recipe)
        for stage in ("load", "template", "pack"):
            run_stage(run, stage)
        show(run, out, samples)

    guarded(go)


@app.command("validate")
def validate_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a recipe (keys, types, data files, model reference) without loading anything large."""
    from .preflight import check_all

    def go() -> None:
        recipe = resolve_recipe(target, set_, None)
        check_all(recipe)
        out.print(f"{target}: ok ({recipe.name} -> {recipe.resolved_run_dir()})")

    guarded(go)


@app.command("generate")
def generate_cmd(target: Path = TargetArg,
                 prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="one prompt"),
                 prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", help="a file, one prompt per line"),
                 model: str = typer.Option("adapter", help="base | adapter | merged"),
                 set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Answer prompts with the base, adapter or merged model, using the recipe's template."""
    from .generate import MODELS, generate, load_for_inference, prompt_text, read_prompts

    def go() -> None:
        if model not in MODELS:
            raise RecipeError(f"--model {model}: expected one of {', '.join(MODELS)}")
        questions = read_prompts(prompt, prompts_file)
        if not questions:
            raise RecipeError("generate: give --prompt or --prompts-file")
        recipe = resolve_recipe(target, set_, run_dir)
        run = RunDir(recipe.resolved_run_dir(), recipe)
        lm, tok = load_for_inference(run, model)
        texts = [prompt_text(recipe, q, tok) for q in questions]
        answers = generate(lm, tok, texts, recipe.generate.max_new_tokens, recipe.generate.batch_size)
        for q, a in zip(questions, answers):
            out.print(f"[bold]>>> {q}[/]\n{a}\n", highlight=False)

    guarded(go)


@app.command("evaluate")
def evaluate_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
                 force: bool = typer.Option(False, "--force")) -> None:
    """Loss and style share before and after training, with before/after answer pairs."""
    from .pipeline import run_stage

    def go() -> None:
        recipe = resolve_recipe(target, set_, run_dir)
        run = RunDir(recipe.resolved_run_dir(), recipe)
        run_stage(run, "evaluate", force=force)
        print_report(run)

    guarded(go)


def print_report(run: RunDir) -> None:
    report = json.loads((run.path / "evaluate" / "report.json").read_text())
    table = Table(title="before vs after fine-tuning")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for split in report["before"]["loss"]:
        table.add_row(f"{split} loss", f"{report['before']['loss'][split]:.3f}", f"{report['after']['loss'][split]:.3f}")
    if "style_share" in report["before"]:
        table.add_row(f"house style share ({report['prompts']} {report['split']} prompts)",
                      f"{report['before']['style_share']:.0%}", f"{report['after']['style_share']:.0%}")
    out.print(table)
    for i, pair in enumerate(report["pairs"], 1):
        question = pair["question"]
        out.rule(f"example {i}")
        out.print(f"[bold]question:[/] {question.strip()}", highlight=False)
        out.print(f"[bold red]before:[/]\n{pair['before']}", highlight=False)
        out.print(f"[bold green]after:[/]\n{pair['after']}", highlight=False)
    out.print(f"\nrun directory: [bold]{run.path.resolve()}[/]  (sft-pipeline status {run.path})")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
