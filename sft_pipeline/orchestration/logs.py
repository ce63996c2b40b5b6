"""Stage logs: everything a stage prints, kept under runs/<name>/logs/<stage>.log.

While a stage runs, sys.stdout and sys.stderr are wrapped in a tee. The terminal gets exactly
what it got without it: the tee writes through first and answers isatty() and fileno() for the
real stream, so rich and tqdm draw their bars as before. The log gets the same text as plain
lines: ANSI escapes removed, and a line redrawn in place (a progress bar) kept as it last read.
Handlers of the `logging` module that hold the stream of the moment they were made
(transformers' does: the sys.stderr of its import) are pointed at the tee for the stage. On a
failure the log gets the full traceback, and the command's one-line error names the log.

Each invocation appends to the log after a header line (time, pid, command). The logs/ folder is
outside the stage folders and the manifest: nothing reads it. Writing it is best effort: a log
that cannot be opened or written (read-only run directory, disk full, file size limit) is
dropped silently, and the stage runs, or fails, exactly as it would without it.

Not captured: what C code writes to file descriptors 1 and 2 directly (bypassing sys.stderr).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

LOGS = "logs"  # the folder under the run directory
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_MAX_PARTIAL = 64 * 1024  # a line redrawn in place for hours (a bar) is compacted past this


def log_path(run_path: str | Path, name: str) -> Path:
    return Path(run_path) / LOGS / f"{name}.log"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


class StageLog:
    """An append-only log file fed with terminal text; any failure to write disables it quietly."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self._fd: Optional[int] = None
        self._partial = ""
        self._lock = threading.Lock()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except (OSError, ValueError):
            self._fd = None

    @property
    def ok(self) -> bool:
        return self._fd is not None

    def _raw(self, text: str) -> bool:
        """Unbuffered: what was written is in the file even if the process is killed next."""
        if self._fd is None:
            return False
        data = text.encode("utf-8", errors="replace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except (OSError, ValueError):  # disk full, file size limit, ...: the log stops, the stage does not
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    @staticmethod
    def _plain(line: str) -> str:
        line = _ANSI.sub("", line)
        if "\r" in line:  # redrawn in place: keep the last drawing that is not blank
            drawn = [part for part in line.split("\r") if part.strip()]
            line = drawn[-1] if drawn else ""
        return line

    def write(self, text: str) -> None:
        """Terminal text: complete lines go to the file, the unfinished one waits for its end."""
        if self._fd is None or not isinstance(text, str) or not text:
            return
        with self._lock:
            head, newline, self._partial = (self._partial + text).rpartition("\n")
            if len(self._partial) > _MAX_PARTIAL:
                self._partial = "\r".join(self._partial.split("\r")[-3:])[-_MAX_PARTIAL:]
            if newline:
                self._raw("".join(self._plain(line) + "\n" for line in head.split("\n")))

    def _end_line(self) -> None:
        with self._lock:
            partial, self._partial = self._partial, ""
        if partial and self._plain(partial):
            self._raw(self._plain(partial) + "\n")

    def note(self, text: str) -> bool:
        """A line of our own (header, exit status, traceback), after any unfinished line."""
        self._end_line()
        return self._raw(text if text.endswith("\n") else text + "\n")

    def close(self) -> None:
        self._end_line()
        self._drop()


class _Tee:
    """A stand-in for sys.stdout / sys.stderr: writes through to the real stream, copies to the log.
    After the stage (detached) it only writes through, for anything that kept a reference."""

    def __init__(self, stream: Any, log: StageLog):
        self._stream = stream
        self._log: Optional[StageLog] = log

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        log = self._log
        if log is not None:
            log.write(text)
        return n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def detach_log(self) -> None:
        self._log = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("rich_"):  # rich's FileProxy marker: we are not one, nor is what we wrap
            raise AttributeError(name)
        return getattr(self._stream, name)


def _base(stream: Any) -> Any:
    while isinstance(stream, _Tee):
        stream = stream._stream
    return stream


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(lg for lg in list(logging.Logger.manager.loggerDict.values())
                                      if isinstance(lg, logging.Logger))]
    seen: dict[int, logging.StreamHandler] = {}
    for lg in loggers:
        for handler in list(lg.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                seen.setdefault(id(handler), handler)
    return list(seen.values())


def _retarget(pairs: list[tuple[Any, _Tee]]) -> list[tuple[logging.StreamHandler, Any]]:
    """Point handlers that write to a real stream we tee (directly, or through a tee of an earlier
    stage) at this stage's tee; returns what to put back."""
    swapped = []
    for handler in _stream_handlers():
        stream = getattr(handler, "stream", None)
        for real, tee in pairs:
            if stream is not None and _base(stream) is _base(real):
                try:
                    handler.stream = tee
                except AttributeError:
                    break
                swapped.append((handler, stream))
                break
    return swapped


# The stage an exception left, and the log holding its traceback, travel on the exception itself:
# no module state, so nothing outlives the command, keeps an old exception alive, or is seen by
# another command run in the same process (tests, a sweep).
FAILURE = "sft_pipeline_failure"  # the attribute note_failure sets: a StageFailure


@dataclass(frozen=True)
class StageFailure:
    stage: str
    log: Optional[Path]  # the log holding the traceback; None when none was written


def note_failure(exc: BaseException, stage: str, path: Optional[Path]) -> None:
    """Mark `exc` as having left `stage` (traceback in `path`). The first mark stays: capture()
    marks it with the log before update_stage, around it, sees it without one. PipelineError
    carries its stage as `.stage` too (for its own line); this mark is what any exception carries.
    An exception that refuses attributes (a custom __setattr__) stays unmarked: its line then names
    no stage, nothing else changes."""
    if isinstance(getattr(exc, FAILURE, None), StageFailure):
        return
    try:
        setattr(exc, FAILURE, StageFailure(stage, path))
    except (AttributeError, TypeError):
        pass


def failure_of(exc: BaseException) -> tuple[Optional[str], Optional[Path]]:
    """(stage, log path holding its traceback) of an exception, or of one it was raised from."""
    seen: set[int] = set()
    item: Optional[BaseException] = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        failure = getattr(item, FAILURE, None)
        if isinstance(failure, StageFailure):
            return failure.stage, failure.log
        item = item.__cause__ or item.__context__
    return None, None


def close_progress_bars() -> None:
    """A stage that fails inside a loop leaves its tqdm bar (Trainer's, datasets') open and
    mid-line; closing it ends that line, so the error gets a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar whose stream is gone: nothing left to end
            pass


def _full_traceback(exc: BaseException, here: Any) -> str:
    """The traceback as Python prints an uncaught exception, from the program's entry point: the
    exception reached this generator (`here`) by being thrown into it from the `with` statement's
    frame, so its own traceback starts here; the frames above that `with` are taken from the stack."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame is here and tb.tb_next is not None:
        tb = tb.tb_next
        outer = traceback.extract_stack(tb.tb_frame.f_back) if tb.tb_frame.f_back else []
    else:
        outer = []
    te = traceback.TracebackException(type(exc), exc, tb)
    te.stack = traceback.StackSummary.from_list([*outer, *te.stack])
    return "".join(te.format())


@contextmanager
def capture(run_path: str | Path, name: str, only_existing: bool = False) -> Iterator[StageLog]:
    """Tee everything printed inside into logs/<name>.log under run_path (appended, after a header).

    only_existing: keep a log only if the run directory already exists (generate is a reader and
    does not create one)."""
    path = log_path(run_path, name)
    log = StageLog(None if only_existing and not Path(run_path).is_dir() else path)
    log.note(f"===== {_now()} pid {os.getpid()}: {' '.join(sys.argv)}")
    saved = (sys.stdout, sys.stderr)
    tees = tuple(_Tee(s, log) if s is not None else None for s in saved)
    sys.stdout, sys.stderr = tees
    swapped = _retarget([(real, tee) for real, tee in zip(saved, tees) if tee is not None])
    try:
        yield log
    except SystemExit as exc:  # on purpose (train's SIGTERM path: 143): recorded, passed on unchanged
        log.note(f"exit status {exc.code}")
        raise
    except BaseException as exc:
        close_progress_bars()  # while the tee is on, so the bar's last line is in the log too
        written = log.note(_full_traceback(exc, sys._getframe()))
        note_failure(exc, name, path if written else None)
        raise
    finally:
        for handler, stream in swapped:
            if getattr(handler, "stream", None) in tees:
                handler.stream = stream
        sys.stdout, sys.stderr = saved
        for tee in tees:
            if tee is not None:
                tee.detach_log()
        log.close()


# ---- notices nobody can act on ------------------------------------------------------------

class _MissingKernelsNotice(logging.Filter):
    """bitsandbytes' CPU backend, on a CPU with AVX512-BF16, tries at import to fetch a faster fused
    4-bit gemm from the HF hub with the optional `kernels` package, and warns on every command
    when that package is not installed. We do not install it (it downloads code from the hub at
    import, which offline hosts cannot reach), bitsandbytes then uses its own CPU kernels, and
    there is no bitsandbytes setting to skip the attempt. So exactly this warning, for exactly
    this cause, is dropped, before any handler (a stage log included) sees it. With `kernels`
    installed, a failure to load it is still shown, as is every other bitsandbytes warning."""

    PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIX):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        cause = args[0] if args else None
        return not (isinstance(cause, ModuleNotFoundError) and cause.name == "kernels")


def quiet_known_notices() -> None:
    """Install the filter above; it must be in place before bitsandbytes is imported."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _MissingKernelsNotice) for f in logger.filters):
        logger.addFilter(_MissingKernelsNotice())


# At import: cli.py and pipeline.py import this module before anything imports bitsandbytes (PEFT
# and transformers do, inside the stages). Not in sft_pipeline/__init__.py, which imports nothing:
# every import of the package (train_worker, tests, bench) would then install it too.
quiet_known_notices()
