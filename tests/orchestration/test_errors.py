"""One-line errors, full logs: any failure of a command ends in one line on stderr and an exit
status; what a stage printed, and its traceback, is kept in <run dir>/logs/<stage>.log."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sft_pipeline.cli import app
from sft_pipeline.orchestration import logs

PY = sys.executable
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
ENV.pop("SFT_PIPELINE_DEBUG", None)

# The real CLI (`python -m sft_pipeline.cli` does the same), with the stage's work replaced by one
# that prints on every channel a stage uses and then fails as $BOOM says.
DRIVER = r'''
import logging, os, sys, warnings
import sft_pipeline.orchestration.pipeline as pipeline

def runner(stage):
    def run(run, out):
        from rich.console import Console
        from tqdm import tqdm
        print("a line on stdout")
        Console(stderr=True).print("[bold]a rich line on stderr[/]")
        warnings.warn("a warning from the stage")
        logging.getLogger("some.library").warning("a logged warning")
        bar = tqdm(total=10, desc="looping")
        bar.update(4)
        boom = os.environ["BOOM"]
        if boom == "runtime":
            raise RuntimeError("boom happened\nsecond line of boom")
        if boom == "interrupt":
            raise KeyboardInterrupt
        if boom == "known":
            from sft_pipeline.rundir.directory import StageError
            raise StageError(f"{stage}: a known problem, said in one line")
        if boom == "exit":
            raise SystemExit(143)
    return run

pipeline._producer = runner
from sft_pipeline.cli import app
sys.argv = ["sft-pipeline", *sys.argv[1:]]
app()
'''


def _recipe_file(tmp_path, recipe) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json())))
    return path


def _cli(tmp_path, boom: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([PY, str(driver), *args], capture_output=True, text=True, timeout=120,
                          env={**ENV, "BOOM": boom, **(env or {})})


def _error_line(stderr: str) -> str:
    """Exactly one error line, the last one."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), stderr
    return errors[0]


def test_an_unexpected_error_is_one_line_naming_stage_type_and_log(tmp_path, recipe_factory):
    recipe_path = _recipe_file(tmp_path, recipe_factory())
    log = tmp_path / "run" / "logs" / "load.log"
    proc = _cli(tmp_path, "runtime", "load", str(recipe_path))
    assert proc.returncode == 1, proc.stderr
    line = _error_line(proc.stderr)
    assert line == f"error: load: RuntimeError: boom happened ... (full traceback: {log})"
    assert "Traceback" not in proc.stderr and "second line of boom" not in proc.stderr
    # the terminal still shows what the stage printed, the bar closed on a line of its own
    assert "a line on stdout" in proc.stdout and "a rich line on stderr" in proc.stderr
    assert "4/10" in proc.stderr.splitlines()[-2]
    text = log.read_text()
    header = text.splitlines()[0]
    assert header.startswith("===== ") and "pid " in header and "load" in header
    for printed in ("a line on stdout", "a rich line on stderr", "UserWarning: a warning from the stage",
                    "a logged warning", "looping:  40%"):
        assert printed in text, (printed, text)
    assert "Traceback (most recent call last)" in text and "sft_pipeline/cli.py" in text
    assert text.rstrip().endswith("RuntimeError: boom happened\nsecond line of boom")
    assert "\x1b" not in text and "\r" not in text  # plain lines
    # a second invocation appends, after its own header
    proc = _cli(tmp_path, "runtime", "load", str(recipe_path))
    assert proc.returncode == 1 and log.read_text().startswith(text)
    assert log.read_text().count("===== ") == 2


@pytest.mark.parametrize("how", ["--debug", "SFT_PIPELINE_DEBUG=1"])
def test_debug_shows_the_traceback_on_the_terminal_too(tmp_path, recipe_factory, how):
    recipe_path = _recipe_file(tmp_path, recipe_factory())
    if how == "--debug":
        proc = _cli(tmp_path, "runtime", "--debug", "load", str(recipe_path))
    else:
        proc = _cli(tmp_path, "runtime", "load", str(recipe_path), env={"SFT_PIPELINE_DEBUG": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: boom happened\nsecond line of boom" in proc.stderr
    assert _error_line(proc.stderr).startswith("error: load: RuntimeError: boom happened ...")


def test_a_known_error_keeps_its_message_and_status(tmp_path, recipe_factory):
    recipe_path = _recipe_file(tmp_path, recipe_factory())
    proc = _cli(tmp_path, "known", "load", str(recipe_path))
    assert proc.returncode == 2, proc.stderr
    assert _error_line(proc.stderr) == "error: load: a known problem, said in one line"
    assert "Traceback" not in proc.stderr
    assert "StageError: load: a known problem" in (tmp_path / "run" / "logs" / "load.log").read_text()


def test_ctrl_c_is_one_line_and_status_130(tmp_path, recipe_factory):
    recipe_path = _recipe_file(tmp_path, recipe_factory())
    proc = _cli(tmp_path, "interrupt", "load", str(recipe_path))
    assert proc.returncode == 130, proc.stderr
    log = tmp_path / "run" / "logs" / "load.log"
    assert _error_line(proc.stderr) == (f"error: load: KeyboardInterrupt: interrupted; run the same command "
                                        f"again to continue (full traceback: {log})")
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
    assert "KeyboardInterrupt" in log.read_text()


def test_a_deliberate_exit_keeps_its_status(tmp_path, recipe_factory):
    """train's SIGTERM path raises SystemExit(143) once its checkpoint is saved: no error line."""
    recipe_path = _recipe_file(tmp_path, recipe_factory())
    proc = _cli(tmp_path, "exit", "load", str(recipe_path))
    assert proc.returncode == 143, proc.stderr
    assert "error:" not in proc.stderr and "Traceback" not in proc.stderr
    assert "exit status 143" in (tmp_path / "run" / "logs" / "load.log").read_text()


# ---- in-process ---------------------------------------------------------------------------

runner = CliRunner()


def _failing_runner(message: str):
    def runner_for(stage):
        def run(run, out):
            print("printed before failing")
            raise ValueError(message)
        return run
    return runner_for


def test_an_error_outside_any_stage_is_one_line_too(tmp_path, recipe_factory, monkeypatch):
    from sft_pipeline.rundir.directory import RunDirectory

    def broken(run_dir):
        raise KeyError("no such column")

    monkeypatch.setattr(RunDirectory, "status_rows", broken)
    result = runner.invoke(app, ["status", str(_recipe_file(tmp_path, recipe_factory()))])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: KeyError: 'no such column' (run with --debug for the full traceback)"


def test_a_log_that_cannot_be_written_changes_nothing(tmp_path, recipe_factory, monkeypatch):
    """logs/ is a file here, so no log can be opened: the stage runs as before, and a failure is
    still one line, without a log to point to."""
    import sft_pipeline.orchestration.pipeline as pipeline

    recipe_path = str(_recipe_file(tmp_path, recipe_factory()))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "logs").write_text("not a folder")
    result = runner.invoke(app, ["load", recipe_path])
    assert result.exit_code == 0, result.output
    assert "load: done in" in result.output
    monkeypatch.setattr(pipeline, "_producer", _failing_runner("bad value"))
    result = runner.invoke(app, ["template", recipe_path])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: template: ValueError: bad value (run with --debug for the full traceback)")
    assert (tmp_path / "run" / "logs").read_text() == "not a folder"


def test_run_keeps_one_log_per_stage(tmp_path, recipe_factory):
    recipe_path = str(_recipe_file(tmp_path, recipe_factory()))
    result = runner.invoke(app, ["run", recipe_path, "--until", "pack"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "logs"
    assert sorted(p.name for p in folder.iterdir()) == ["load.log", "pack.log", "template.log"]
    for stage in ("load", "template", "pack"):
        text = (folder / f"{stage}.log").read_text()
        assert f"{stage}: done in" in text and text.count("===== ") == 1, text
        others = {"load", "template", "pack"} - {stage}
        assert not any(f"{other}: done in" in text for other in others), text
    result = runner.invoke(app, ["run", recipe_path, "--until", "pack"])
    assert result.exit_code == 0
    text = (folder / "pack.log").read_text()
    assert text.count("===== ") == 2 and "pack: up to date" in text
    # the manifest knows nothing of the logs
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"load", "template", "pack"} and "logs" not in json.dumps(manifest)


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_terminal_sees_what_it_saw_and_the_log_gets_plain_lines(tmp_path, monkeypatch):
    """Under the tee rich still sees a terminal (colours, a live bar), writes reach the terminal
    unchanged, and the log has the text without escapes, the bar as it last read."""
    from rich.console import Console

    from sft_pipeline.progress import progress

    def stage_output() -> None:
        console = Console(stderr=True, force_terminal=None)
        console.print("[bold red]coloured[/] text")
        with progress() as bar:
            task = bar.add_task("steps", total=3)
            for _ in range(3):
                bar.advance(task)
        sys.stderr.write("\rplain bar 1/2")
        sys.stderr.write("\rplain bar 2/2\n")
        print("on stdout")

    terminal = {}
    for captured in (False, True):
        err, out = _FakeTerminal(), io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setattr(sys, "stdout", out)
        if captured:
            with logs.capture(tmp_path, "fake"):
                stage_output()
        else:
            stage_output()
        assert sys.stderr is err and sys.stdout is out  # put back
        terminal[captured] = (err.getvalue(), out.getvalue())
    monkeypatch.undo()
    assert "\x1b[1;31mcoloured" in terminal[True][0]  # rich drew for a terminal
    # the terminal got the same bytes with the tee as without (the bar's timings aside)

    def times(text):
        return re.sub(r"-:--:--|\d+:\d\d:\d\d", "T", text)

    assert times(terminal[True][0]) == times(terminal[False][0]) and terminal[True][1] == terminal[False][1]
    assert terminal[True][0].endswith("\rplain bar 1/2\rplain bar 2/2\n") and terminal[True][1] == "on stdout\n"
    lines = (tmp_path / "logs" / "fake.log").read_text().splitlines()
    assert lines[1] == "coloured text" and lines[2].startswith("steps ") and " 3/3 " in lines[2]
    assert lines[3:] == ["", "plain bar 2/2", "on stdout"]  # the blank line is rich's, on the terminal too


def test_logging_handlers_holding_the_real_stream_follow_the_stage(tmp_path, monkeypatch):
    """A handler made before the stage (it holds sys.stderr as it was), and one made inside an
    earlier stage (it holds that stage's tee), both write into the current stage's log."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    early = logging.getLogger("test_errors.early")
    early.addHandler(logging.StreamHandler())  # sys.stderr, now
    early.propagate = False
    late = logging.getLogger("test_errors.late")
    late.propagate = False
    try:
        with logs.capture(tmp_path, "first"):
            late.addHandler(logging.StreamHandler())  # the first stage's tee
            early.warning("early in first")
        with logs.capture(tmp_path, "second"):
            early.warning("early in second")
            late.warning("late in second")
        early.warning("early after")
        late.warning("late after")
    finally:
        for lg in (early, late):
            lg.handlers.clear()
            lg.propagate = True
    first = (tmp_path / "logs" / "first.log").read_text()
    second = (tmp_path / "logs" / "second.log").read_text()
    assert "early in first" in first and "in second" not in first
    assert "early in second" in second and "late in second" in second and "after" not in second
    assert err.getvalue().splitlines() == ["early in first", "early in second", "late in second",
                                           "early after", "late after"]


def test_the_log_keeps_a_redrawn_line_as_it_last_read(tmp_path):
    log = logs.StageLog(tmp_path / "x.log")
    for chunk in ("\x1b[1mbold\x1b[0m and \x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\\n", "\rbar 1/3",
                  "\rbar 2/3", "\rbar 3/3\n", "cut off"):
        log.write(chunk)
    log.close()
    assert (tmp_path / "x.log").read_text() == "bold and link\nbar 3/3\ncut off\n"


# ---- bitsandbytes' notice about the optional `kernels` package --------------------------------

NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def test_the_missing_kernels_notice_is_dropped_and_nothing_else(caplog):
    import sft_pipeline.cli  # noqa: F401 (installs the filter, as every command does)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    fmt = NOTICE + ": %s. Please make sure you already `pip install kernels` and the kernels >= 0.11.1"
    with caplog.at_level(logging.WARNING):
        logger.warning(fmt, ModuleNotFoundError("No module named 'kernels'", name="kernels"))
        logger.warning(fmt, RuntimeError("kernels is installed, but the hub cannot be reached"))
        logger.warning("another bitsandbytes warning")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "hub cannot be reached" in messages[0] and messages[1] == "another bitsandbytes warning"


def test_importing_bitsandbytes_from_a_command_prints_no_kernels_notice():
    plain = subprocess.run([PY, "-c", "import bitsandbytes"], capture_output=True, text=True, env=ENV, timeout=120)
    if NOTICE not in plain.stderr:
        pytest.skip("bitsandbytes does not try `kernels` here (no AVX512-BF16, or `kernels` is installed)")
    ours = subprocess.run([PY, "-c", "import sft_pipeline.cli, peft, bitsandbytes"], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert ours.returncode == 0, ours.stderr
    assert NOTICE not in ours.stderr, ours.stderr


def test_the_failed_stage_travels_on_the_exception(tmp_path):
    """The CLI's line names the stage and log from the exception itself (or one raised from it),
    not from module state: no list of past failures in logs.py, one command's failure is not
    another's, and the first mark (the one with the log) stays."""
    with pytest.raises(ValueError) as info:
        with logs.capture(tmp_path, "first"):
            raise ValueError("boom")
    log = tmp_path / "logs" / "first.log"
    assert getattr(info.value, logs.FAILURE) == logs.StageFailure("first", log)
    logs.note_failure(info.value, "first", None)  # update_stage, around capture, sees it next
    assert logs.failure_of(info.value) == ("first", log)
    try:
        raise RuntimeError("while reporting") from info.value
    except RuntimeError as outer:
        assert logs.failure_of(outer) == ("first", log)
    assert logs.failure_of(ValueError("boom")) == (None, None)
    state = [name for name, value in vars(logs).items() if isinstance(value, (list, dict, set)) and name != "__builtins__"]
    assert not state, state

