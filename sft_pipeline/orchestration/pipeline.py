"""Running stages: the lock, the up-to-date check, and the atomic swap, around each stage's produce().

A stage whose output is recorded on another machine (train on a node other than 0) says so by
returning RecordedElsewhere (rundir/stage_spec.py) from produce(): its work folder is then left as
it is (neither swapped in nor recorded, the same as a stage that stopped), `update_stage` prints
where the output is, and `update_stages` runs no later stage, since each would read it."""

from __future__ import annotations

import shutil
import sys
from typing import Callable, Iterable

from rich.console import Console

from .. import stages  # the registry: order and declarations; stage modules load only when asked for
from ..config import Recipe
from ..errors import PipelineError
from ..rundir.directory import RunDirectory, StageError
from ..rundir.stage_spec import RecordedElsewhere
from ..stages import ORDER
from . import logs, preflight, process_state, write_faults

console = Console(stderr=True)


def _producer(stage: str) -> Callable:
    return stages.producer(stage)


def check_stages(run_dir: RunDirectory, names: Iterable[str], force: bool = False) -> None:
    """preflight.check for those of `names` that are about to run (every one with force, else
    those not complete): a bad data file or model ref is refused before anything is written, and
    a complete stage's inputs are not asked for again (its data source may be gone by now)."""
    preflight.check(run_dir.recipe, [s for s in names if force or run_dir.stage_state(s) != "complete"])


class _NotRecordedHere(BaseException):
    """Leaves run_dir.stage_output's `with` without its swap and record, for a stage that returned
    RecordedElsewhere (a `with` body tells its context manager only how it ended: normally, which
    swaps, or by an exception). Raised and caught in _update_stage alone, inside the stage's log
    and lock, so nothing outside sees it; a BaseException, as GeneratorExit is, since it is no error."""

    def __init__(self, elsewhere: RecordedElsewhere):
        super().__init__(elsewhere.where)
        self.elsewhere = elsewhere


def update_stage(run_dir: RunDirectory, stage: str, force: bool = False, checked: bool = False) -> bool:
    """Run one stage unless it is up to date. Returns True when it ran (here, though its output
    may be recorded on another machine: then the stage is not complete here). checked: the caller
    has already run check_stages on it (update_stages and a sweep check every stage they will run
    once, before the first starts); otherwise it is checked here, so a stage run alone is too.

    Everything the stage prints (and, on a failure, its traceback) is also appended to
    logs/<stage>.log under the run directory (logs.py)."""
    try:
        return _update_stage(run_dir, stage, force, checked)
    except BaseException as exc:
        logs.note_failure(exc, stage, None)  # failed before its log opened (preflight, lock)
        raise


def _update_stage(run_dir: RunDirectory, stage: str, force: bool, checked: bool) -> bool:
    spec = stages.spec(stage)  # StageError for a name that is not a stage
    if not checked:
        check_stages(run_dir, [stage], force)
    try:
        # the log opens once the lock is held: a refused second command writes nothing here
        with run_dir.locked(" ".join(sys.argv) or stage), logs.capture(run_dir.path, stage):
            if not force and run_dir.adopt(stage):  # killed between its rename and its manifest record
                console.print(f"[green]{stage}[/]: had finished before a crash; recorded now")
                return False
            if not force and run_dir.stage_state(stage) == "complete":
                console.print(f"[green]{stage}[/]: up to date")
                return False
            console.rule(f"[bold]{stage}")
            try:
                with run_dir.stage_output(stage, keep_partial=spec.resumes) as out:
                    from ..model.hardware import configure_threads

                    configure_threads()  # one per physical core, or SFT_PIPELINE_THREADS / OMP_NUM_THREADS
                    with process_state.restored():  # signal handlers and environment, for the stages after it
                        made = _producer(stage)(run_dir, out)
                    if isinstance(made, RecordedElsewhere):
                        raise _NotRecordedHere(made)
            except _NotRecordedHere as here:
                console.print(f"[green]{stage}[/]: ran here; recorded in {here.elsewhere.where}, not in {run_dir.path}")
                return True
            rec = run_dir.stage_record(stage) or {}
            console.print(f"[green]{stage}[/]: done in {rec.get('seconds', '?')} s -> {run_dir.path / stage}")
    except Exception as exc:
        # Disk full, read-only, quota: one line naming the path and the cause, not a traceback.
        # The manifest records a stage last, so nothing is recorded as complete; the work folder
        # is removed to give the space back, except a resuming stage's (train's checkpoints).
        cause = None if isinstance(exc, StageError) else write_faults.find_cause(exc, run_dir.path)
        if cause is None:
            if isinstance(exc, PipelineError) and exc.stage is None:
                exc.stage = stage  # the CLI leads its line with the stage it failed in
            raise
        if not spec.resumes:
            shutil.rmtree(run_dir.work_dir(stage), ignore_errors=True)
        raise StageError(write_faults.describe(stage, cause, run_dir.work_dir(stage), run_dir.path), stage) from exc
    return True


def update_stages(recipe: Recipe, force: bool = False, until: str | None = None) -> RunDirectory:
    run_dir = stages.open_run_directory(recipe.resolved_run_dir(), recipe)
    todo = ORDER[: ORDER.index(until) + 1] if until in ORDER else ORDER
    check_stages(run_dir, todo, force)  # everything the stages to run read, before the first one starts
    for stage in todo:
        update_stage(run_dir, stage, force=force, checked=True)
        if run_dir.stage_state(stage) != "complete":  # ran here, recorded on another machine (node 0)
            break
    return run_dir

