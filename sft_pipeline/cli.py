"""The command line: one command per stage, plus run, status, generate, chat, serve, evaluate, export,
report, sweep, compare, validate and push.

Every command takes a recipe file (or a run directory, whose frozen recipe.yaml is used) and
`--set section.key=value` overrides. Every failure ends in one line on stderr: a known one (a
PipelineError: a bad recipe, a refused stage, a failed write; or an OSError raised outside any
stage) as its message, led by its stage, status 2; anything else as
`error: <stage>: <type>: <first line> (full traceback: <run dir>/logs/<stage>.log)`, status 1;
Ctrl-C the same way, status 130. `--debug` (or SFT_PIPELINE_DEBUG=1) prints the traceback too.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import Recipe, RecipeError, load_recipe
from .errors import PipelineError
from .orchestration import logs
from .orchestration.logs import close_progress_bars
from .rundir.directory import RunDirectory
from .rundir.stage_spec import SUMMARY
from .stages import ORDER, open_run_directory

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


_debug = False  # --debug: set by the app's callback for the one command it runs
MAX_MESSAGE = 300  # characters of an unexpected error's message on its one line


@app.callback()
def _global_options(debug: bool = typer.Option(
        False, "--debug", help="on an error, print the full traceback too (or set SFT_PIPELINE_DEBUG=1)")) -> None:
    global _debug
    _debug = debug


def debugging() -> bool:
    return _debug or os.environ.get("SFT_PIPELINE_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _kind(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _first_line(exc: BaseException) -> str:
    try:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    except Exception:  # an exception whose __str__ fails
        lines = []
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += " ..."
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def one_line(exc: BaseException) -> str:
    """An unexpected exception as one line: stage, type, first line of the message, where the
    traceback is."""
    stage, path = logs.failure_of(exc)
    text = ("interrupted; run the same command again to continue" if isinstance(exc, KeyboardInterrupt)
            else _first_line(exc))
    head = ": ".join(part for part in (stage, _kind(exc), text) if part)
    where = f"full traceback: {path}" if path else "run with --debug for the full traceback"
    return f"{head} ({where})"


def _report(exc: BaseException, line: str) -> None:
    close_progress_bars()
    if debugging():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)


def _typer_exits() -> tuple[type[BaseException], ...]:
    """typer's own exits and usage errors (RuntimeErrors, some of them): passed on, not reported.
    typer 0.2x carries its own copy of click; older ones use click itself."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        module = sys.modules.get(name)
        kinds += [getattr(module, k) for k in ("Exit", "Abort", "ClickException") if hasattr(module, k)]
    return tuple(kinds)


def guarded(fn: Callable[[], None]) -> None:
    """Run a command's body: whatever it raises ends in one line on stderr and an exit status."""
    try:
        fn()
    except _typer_exits():
        raise
    except KeyboardInterrupt as exc:
        _report(exc, one_line(exc))
        raise typer.Exit(130) from None
    except PipelineError as exc:
        _report(exc, exc.line)
        raise typer.Exit(2) from None
    except OSError as exc:  # a write fault, or a file that cannot be read, outside any stage
        _report(exc, str(exc))
        raise typer.Exit(2) from None
    except Exception as exc:
        _report(exc, one_line(exc))
        raise typer.Exit(1) from None


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


def run_directory_of(recipe: Recipe) -> RunDirectory:
    return open_run_directory(recipe.resolved_run_dir(), recipe)


def _stage_command(stage: str) -> Callable:
    def command(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
                force: bool = typer.Option(False, "--force", help="redo the stage even if up to date")) -> None:
        def go() -> None:
            from .orchestration.pipeline import update_stage

            recipe = resolve_recipe(target, set_, run_dir)
            update_stage(run_directory_of(recipe), stage, force=force)

        guarded(go)

    command.__name__ = stage
    return command


STAGE_HELP = {
    "load": "1. Read the data source; normalize records to conversations; count drops by reason.",
    "template": "2. Render conversations to text, recording where each assistant turn lies.",
    "pack": "3. Tokenize and pack into blocks of seq_length (wrapped, bfd or none).",
    "prepare": "4. Prepare the model: freeze, fp32 norms, checkpointing, NF4, LoRA (or method full); estimate memory.",
    "train": "5. Train the adapter (or every weight) with TRL's SFTTrainer (resumes from the last checkpoint).",
    "merge": "6. Merge the adapter into the base, save safetensors, verify logits (full: export the trained model).",
}
for _stage in ORDER:
    app.command(_stage, help=STAGE_HELP[_stage])(_stage_command(_stage))


@app.command("run")
def run_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
            force: bool = typer.Option(False, "--force", help="redo every stage"),
            until: Optional[str] = typer.Option(None, help="stop after this stage")) -> None:
    """Run every stage that is not up to date, in order. Each stage logs to logs/<stage>.log."""

    def go() -> None:
        from .orchestration.pipeline import update_stages

        if until is not None and until not in ORDER:
            raise RecipeError(f"--until {until}: not a stage ({', '.join(ORDER)})")
        recipe = resolve_recipe(target, set_, run_dir)
        directory = update_stages(recipe, force=force, until=until)
        _print_status(directory)

    guarded(go)


def _print_status(directory: RunDirectory) -> None:
    table = Table(title=f"run directory {directory.path}")
    for col in ("stage", "state", "seconds", "summary"):
        table.add_column(col)
    for row in directory.status_rows():
        table.add_row(*row)
    out.print(table)


@app.command("status")
def status_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Show each stage's state (complete, stale, missing), time and summary.

    Given a recipe (and --set overrides), stale means: `run` would redo this stage."""

    def go() -> None:
        recipe = resolve_recipe(target, set_, run_dir)
        _print_status(run_directory_of(recipe))

    guarded(go)


@app.command("inspect")
def inspect_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
                samples: int = typer.Option(2, help="rendered samples to show")) -> None:
    """Run load, template and pack if needed, then show counts, drops, lengths and trained spans."""

    def go() -> None:
        from .data.inspect import show
        from .orchestration.pipeline import update_stages

        directory = update_stages(resolve_recipe(target, set_, run_dir), until="pack")  # one preflight for the three
        show(directory, out, samples)

    guarded(go)


@app.command("validate")
def validate_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a recipe (keys, types, data files, model reference) without loading anything large."""

    def go() -> None:
        from .orchestration.preflight import check_all

        recipe = resolve_recipe(target, set_, None)
        check_all(recipe)
        out.print(f"{target}: ok ({recipe.name} -> {recipe.resolved_run_dir()})")

    guarded(go)


@app.command("generate")
def generate_cmd(target: Path = TargetArg,
                 prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="one prompt"),
                 prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", help="a file, one prompt per line"),
                 model: str = typer.Option("trained", help="base | trained (train's result: the LoRA adapter on "
                                           "the base, or method full's whole model; 'adapter' is accepted too) | merged"),
                 set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Answer prompts with the base, trained or merged model, using the recipe's template and its
    generate settings (greedy by default; generate.do_sample, temperature, top_p, top_k,
    repetition_penalty, seed).

    With a run directory, what it prints is also kept in its logs/generate.log."""

    def go() -> None:
        from .model.generate import (
            generate,
            inference_precision,
            load_for_inference,
            model_choice,
            prompt_text,
            read_prompts,
        )
        from .model.hardware import configure_threads

        which = model_choice(model)
        questions = read_prompts(prompt, prompts_file)
        if not questions:
            raise RecipeError("generate: give --prompt or --prompts-file")
        recipe = resolve_recipe(target, set_, run_dir)
        directory = run_directory_of(recipe)
        with logs.capture(directory.path, "generate", only_existing=True):  # a reader: creates no run directory
            configure_threads()
            lm, tok = load_for_inference(directory, which)
            texts = [prompt_text(recipe, q, tok) for q in questions]
            answers = generate(lm, tok, texts, recipe.generate, compute=inference_precision(recipe))
            for q, a in zip(questions, answers):
                out.print(f"[bold]>>> {q}[/]\n{a}\n", highlight=False)

    guarded(go)


@app.command("serve")
def serve_cmd(target: Path = TargetArg,
              port: Optional[int] = typer.Option(None, "--port", help="port (serve.port, default 8000; 0: a free one)"),
              host: Optional[str] = typer.Option(None, "--host", help="address to listen on (serve.host, default "
                                                 "127.0.0.1); any other than loopback is served with a warning"),
              quant: Optional[str] = typer.Option(None, "--quant", help="which export/model-<TYPE>.gguf: Q4_K_M, "
                                                  "Q8_0, F16, ... (serve.quant, default auto)"),
              gguf: Optional[Path] = typer.Option(None, "--gguf", help="serve this GGUF file instead of the export"),
              pid_file: Optional[Path] = typer.Option(None, "--pid-file", help="default: <run dir>/logs/serve.pid "
                                                      "when the run directory exists"),
              set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """An OpenAI-compatible endpoint (llama.cpp's server) on the exported GGUF, until SIGTERM or Ctrl-C.

    Requests that leave out max_tokens, temperature, top_p, top_k, repeat_penalty or seed get the
    recipe's generate values (greedy unless generate.do_sample)."""

    def go() -> None:
        from .serving.launch import serve
        from .serving.locate import gguf_to_serve

        if quant is not None and gguf is not None:
            raise RecipeError("serve: give --quant or --gguf, not both")
        flags = [f"serve.{key}={value}" for key, value in (("port", port), ("host", host), ("quant", quant))
                 if value is not None]
        recipe = resolve_recipe(target, [*(set_ or []), *flags], run_dir)
        directory = run_directory_of(recipe)
        model_file = gguf_to_serve(directory, recipe.serve.quant, gguf)
        pid_path = pid_file or (logs.log_path(directory.path, "serve").with_suffix(".pid") if directory.path.is_dir() else None)
        with logs.capture(directory.path, "serve", only_existing=True):
            how = serve(recipe, model_file, pid_path,
                        say=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True),
                        warn=lambda line: err.print(f"[bold yellow]warning:[/] {escape(line)}", soft_wrap=True,
                                                    highlight=False))
            out.print(f"server stopped ({how})", markup=False, highlight=False)

    guarded(go)


@app.command("chat")
def chat_cmd(target: Path = TargetArg,
             model: str = typer.Option("trained", help="base | trained | merged (as for generate) | gguf (export's "
                                       "GGUF file, through llama.cpp)"),
             quant: Optional[str] = typer.Option(None, "--quant", help="gguf: export's model-<TYPE>.gguf to load "
                                                 "(F16, Q8_0, Q4_K_M, ...; default: the most faithful present)"),
             gguf: Optional[Path] = typer.Option(None, "--gguf", help="gguf: this GGUF file instead of export's"),
             set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Talk to the model, one line a turn: answers stream as they are decoded, the conversation is
    kept (rendered with the recipe's template, oldest exchanges dropped when it outgrows the
    context) and decoded with the recipe's generate settings. /reset forgets it; /exit, Ctrl-D
    or Ctrl-C ends. Reads a pipe too (`sft-pipeline chat RECIPE < lines.txt`)."""

    def go() -> None:
        from .chat.backends import ChatError, LlamaCppBackend, TransformersBackend, find_gguf
        from .chat.history import History
        from .chat.session import Output, chat, read_lines
        from .model.generate import inference_precision, load_for_inference, model_choice
        from .model.hardware import configure_threads
        from .model.loader import load_tokenizer

        which = model_choice(model, extra=("gguf",))
        if which != "gguf" and (quant or gguf):
            raise ChatError(f"--quant and --gguf choose a GGUF file: they go with --model gguf, not {which}")
        recipe = resolve_recipe(target, set_, run_dir)
        directory = run_directory_of(recipe)
        threads, _ = configure_threads()
        if which == "gguf":
            path = find_gguf(directory.path, quant, gguf, str(target))
            tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code) \
                if recipe.template.kind == "chat" else None
            err.print(f"chat: {path}", highlight=False, soft_wrap=True)
            backend = LlamaCppBackend(path, recipe.generate, threads)
        else:
            lm, tokenizer = load_for_inference(directory, which)
            backend = TransformersBackend(lm, tokenizer, recipe.generate, inference_precision(recipe))
        interactive = sys.stdin.isatty()

        def text(piece: str) -> None:
            out.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            out.file.flush()

        output = Output(text=text, note=lambda line: err.print(f"[dim]{escape(line)}", highlight=False, soft_wrap=True))
        try:
            chat(backend, History(recipe.template, tokenizer), recipe.generate.max_new_tokens, recipe.generate.seed,
                 read_lines(sys.stdin, interactive), output, echo=not interactive)
        finally:
            if isinstance(backend, LlamaCppBackend):
                backend.close()  # llama.cpp's context and weights, freed now rather than at exit

    guarded(go)


@app.command("evaluate")
def evaluate_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
                 force: bool = typer.Option(False, "--force")) -> None:
    """Loss, perplexity and style share before and after training, with before/after answer pairs."""

    def go() -> None:
        from .orchestration.pipeline import update_stage

        recipe = resolve_recipe(target, set_, run_dir)
        directory = run_directory_of(recipe)
        update_stage(directory, "evaluate", force=force)
        print_report(directory)

    guarded(go)


@app.command("export")
def export_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt,
               force: bool = typer.Option(False, "--force", help="redo the export even if up to date")) -> None:
    """After merge: GGUF files (export.types: F16, Q8_0, Q4_K_M) for llama.cpp and Ollama, with the
    recipe's chat template and an Ollama Modelfile, verified against the merged model."""

    def go() -> None:
        from .orchestration.pipeline import update_stage
        from .stages.export import MODELFILE

        recipe = resolve_recipe(target, set_, run_dir)
        directory = run_directory_of(recipe)
        update_stage(directory, "export", force=force)
        summary = json.loads(directory.artifact("export", SUMMARY).read_text())
        for name, file in summary["files"].items():
            rate = summary["agreement_rate"][name]
            out.print(f"{directory.artifact('export', file)}  ({summary['sizes_mib'][name]} MiB, "
                      f"{rate:.0%} of greedy tokens agree with transformers)", highlight=False, soft_wrap=True)
        out.print(f"{directory.artifact('export', MODELFILE)}  (FROM model-{summary['modelfile_from']}.gguf)",
                  highlight=False, soft_wrap=True)

    guarded(go)


@app.command("report")
def report_cmd(target: Path = TargetArg, set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Plots (loss, eval loss, learning rate, tokens/s) as PNG files and one self-contained HTML
    page with them, the stage table and the before/after answers, in <run dir>/report/."""

    def go() -> None:
        from .report.write import write_report

        recipe = resolve_recipe(target, set_, run_dir)
        page, notes = write_report(run_directory_of(recipe))
        for note in notes:
            err.print(f"[yellow]{escape(note)}", highlight=False)
        out.print(f"report: {page}", highlight=False, soft_wrap=True)

    guarded(go)


@app.command("sweep")
def sweep_cmd(sweep_file: Path = typer.Argument(..., help="sweep YAML: a base recipe and the values per key"),
              set_: Optional[list[str]] = typer.Option(None, "--set", help="override a key of the base recipe (repeatable)"),
              sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help="default: the file's sweep_dir or runs/sweeps/<name>"),
              dry_run: bool = typer.Option(False, "--dry-run", help="list the trials and what they share; run nothing")) -> None:
    """Run a sweep: one run directory per trial, stages with equal inputs computed once and shared.

    Run again, it skips finished trials and resumes the rest. Results: sweep.jsonl, the table
    sorted by eval loss, sweep.png (eval loss against each swept key) in the sweep's folder."""

    def go() -> None:
        from .orchestration.sweep import check_trials, run_sweep, share_plan
        from .orchestration.sweep_plan import load_sweep
        from .orchestration.sweep_results import PLOT, RECORDS, failures, plot, results_table

        plan = load_sweep(sweep_file, set_, sweep_dir)
        if dry_run:
            check_trials(plan)
            counts = share_plan(plan)
            for trial in plan.trials:
                out.print(f"{trial.name}  {json.dumps(trial.values)}  -> {trial.run_dir}", highlight=False, soft_wrap=True)
            out.print("computed once for all trials: " + (", ".join(s for s, n in counts.items() if n == 1) or "none")
                      + "; " + ", ".join(f"{s}: {n} times" for s, n in counts.items() if n > 1),
                      highlight=False, soft_wrap=True)
            return
        records = run_sweep(plan, describe=lambda exc: exc.line if isinstance(exc, PipelineError) else one_line(exc))
        out.print(results_table(records, plan.keys, f"sweep {plan.name}, by eval loss"))
        for line in failures(records):
            out.print(f"failed {line}", markup=False, highlight=False, soft_wrap=True)
        png = plot(records, plan.keys, plan.folder / PLOT, plan.log_keys)
        out.print(f"results: {plan.folder / RECORDS}" + (f", {png}" if png else " (no eval loss to plot)"),
                  highlight=False, soft_wrap=True)
        failed = [r["trial"] for r in records if r["status"] == "failed"]
        if failed:
            raise PipelineError(f"sweep: {len(failed)} of {len(records)} trials failed ({', '.join(failed)}); "
                                f"their errors are in {plan.folder / RECORDS}; run the sweep again to retry them")

    guarded(go)


@app.command("compare")
def compare_cmd(run_dirs: list[Path] = typer.Argument(..., help="run directories to put side by side")) -> None:
    """Runs side by side: method, parameters, speed, peak memory, eval loss, perplexity, style share.

    Reads what the stages wrote; a value a run lacks prints as '-'. Warns where LoRA and full
    fine-tuning runs share one learning rate."""

    def go() -> None:
        from .orchestration.compare import column_names, read_run, rows, warnings

        runs = [read_run(path) for path in run_dirs]
        table = Table(title="runs side by side")
        table.add_column("")
        for name in column_names(runs):
            table.add_column(name, justify="right")
        for label, cells in rows(runs):
            table.add_row(label, *cells)
        out.print(table)
        for line in warnings(runs):
            err.print(f"[bold yellow]warning:[/] {escape(line)}", soft_wrap=True, highlight=False)

    guarded(go)


@app.command("push")
def push_cmd(target: Path = TargetArg,
             repo: str = typer.Option(..., "--repo", help="the Hub model repository: namespace/name"),
             what: str = typer.Option("adapter", "--what", help="adapter (train's; method full: the trained model) "
                                      "| merged (merge's model) | gguf (export's GGUF files and Modelfile)"),
             private: Optional[bool] = typer.Option(None, "--private/--public", help="visibility of a new repository"),
             dry_run: bool = typer.Option(False, "--dry-run", help="stage and show the card and files; upload nothing"),
             set_: Optional[list[str]] = SetOpt, run_dir: Optional[Path] = RunDirOpt) -> None:
    """Publish a run to the Hugging Face Hub with a model card (base model, data counts, recipe,
    evaluate's figures, the report's plots, W&B run). Token from HF_TOKEN; endpoint from HF_ENDPOINT.

    The files go up from <run dir>/push/<what>/, staged first; --dry-run stops there."""

    def go() -> None:
        from .publish.stage import stage
        from .publish.upload import token_from_env, upload

        recipe = resolve_recipe(target, set_, run_dir)
        directory = run_directory_of(recipe)
        if not dry_run:
            token_from_env()  # refused before anything is staged
        with logs.capture(directory.path, "push", only_existing=True):
            staged = stage(directory, what, repo)
            out.print(staged.card.content, markup=False, highlight=False)
            out.rule(f"{len(staged.files)} files in {staged.folder}")
            for name in staged.files:
                size = (staged.folder / name).stat().st_size
                out.print(f"{size:>14,d}  {name}", markup=False, highlight=False)
            if dry_run:
                out.print(f"dry run: nothing uploaded (would push to {repo})", highlight=False)
                return
            url = upload(staged, repo, private=private)
            out.print(f"pushed: {url}", highlight=False, soft_wrap=True)

    guarded(go)


def print_report(directory: RunDirectory) -> None:
    from .stages.evaluate import REPORT

    report = json.loads(directory.artifact("evaluate", REPORT).read_text())
    table = Table(title="before vs after fine-tuning")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for split in report["before"]["loss"]:
        table.add_row(f"{split} loss", f"{report['before']['loss'][split]:.3f}", f"{report['after']['loss'][split]:.3f}")
        if "perplexity" in report["before"]:
            table.add_row(f"{split} perplexity", f"{report['before']['perplexity'][split]:.2f}",
                          f"{report['after']['perplexity'][split]:.2f}")
    if "style_share" in report["before"]:
        table.add_row(f"house style share ({report['prompts']} {report['split']} prompts)",
                      f"{report['before']['style_share']:.0%}", f"{report['after']['style_share']:.0%}")
    from .report.page import harness_rows

    for row in harness_rows(report):
        table.add_row(*row)
    out.print(table)
    for i, pair in enumerate(report["pairs"], 1):
        question = pair["question"]
        out.rule(f"example {i}")
        out.print(f"[bold]question:[/] {question.strip()}", highlight=False)
        out.print(f"[bold red]before:[/]\n{pair['before']}", highlight=False)
        out.print(f"[bold green]after:[/]\n{pair['after']}", highlight=False)
    out.print(f"\nrun directory: [bold]{directory.path.resolve()}[/]  (sft-pipeline status {directory.path})")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
