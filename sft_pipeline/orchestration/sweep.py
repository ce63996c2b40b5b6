"""Running a sweep: its trials one after another, each stage computed once across the trials that
have the same inputs for it.

Before a trial runs a stage, the other trials' run directories are asked whether one of them has
that stage complete for the same fingerprint (the stage's declared recipe keys and its upstream
fingerprints: rundir/directory.py). If one has, its folder is hard-linked into this trial's run
directory and recorded in its manifest as complete, with where it came from (RunDirectory.install);
otherwise the stage runs as `sft-pipeline <stage>` would. So a sweep over lora.r prepares the data
once, and a sweep over a key only evaluate reads trains once; nothing is assumed about which keys
a stage reads beyond its SPEC. Each trial's folder is an ordinary run directory afterwards.

A trial that fails is recorded with its one-line error and the sweep goes on with the next. Run
again, the sweep skips trials whose stages are all complete and resumes the rest (train from its
checkpoints, as `sft-pipeline train` does). What each trial computed, took from which trial,
its eval loss and its time go to sweep.jsonl (orchestration/sweep_results.py), rewritten after each trial.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from ..rundir.directory import COMPLETE, RunDirectory
from ..rundir.files import LockedError, exclusive, read_json
from ..rundir.stage_spec import METRICS
from ..stages import open_run_directory
from .pipeline import check_stages, update_stage
from .sweep_plan import SweepPlan, Trial
from .sweep_results import read_records, write_records

console = Console(stderr=True)

Describe = Callable[[BaseException], str]


def _plain(exc: BaseException) -> str:
    from ..errors import PipelineError

    return exc.line if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"


def share_plan(plan: SweepPlan) -> dict[str, int]:
    """Per stage, how many different fingerprints the trials have: how often it is computed."""
    return {stage: len({open_run_directory(t.run_dir, t.recipe).fingerprint(stage) for t in plan.trials}) for stage in plan.stages}


def check_trials(plan: SweepPlan) -> None:
    """What the stages about to run read outside the recipe (data files, the model reference,
    train.extra_args), for every trial, before the first one starts: one line naming the key."""
    for trial in plan.trials:
        check_stages(open_run_directory(trial.run_dir, trial.recipe), plan.stages)


def run_sweep(plan: SweepPlan, describe: Describe = _plain) -> list[dict[str, Any]]:
    """Run every trial not yet finished; returns one record per trial, in the plan's order.
    Only one sweep runs in a sweep folder at a time (its lock); each trial's stages take their run
    directory's lock as usual."""
    runs = {t.name: open_run_directory(t.run_dir, t.recipe) for t in plan.trials}
    check_trials(plan)
    with exclusive(plan.folder, " ".join(sys.argv) or "sweep"):
        earlier = {r["trial"]: r for r in read_records(plan.folder)}
        records = {t.name: earlier.get(t.name) or _record(t, "pending") for t in plan.trials}
        counts = share_plan(plan)
        once = [s for s, n in counts.items() if n == 1]
        if len(plan.trials) > 1:
            console.print(f"sweep [bold]{plan.name}[/]: {len(plan.trials)} trials in {plan.folder}; computed once for "
                          f"all: {', '.join(once) or 'none'}; "
                          + ", ".join(f"{s} {n} times" for s, n in counts.items() if n > 1), soft_wrap=True)
        for i, trial in enumerate(plan.trials, 1):
            run_dir = runs[trial.name]
            if all(run_dir.stage_state(s) == "complete" for s in plan.stages):
                records[trial.name] = _finished(trial, run_dir, plan)
                console.print(f"[green]{trial.name}[/]: complete, skipped (trial {i} of {len(plan.trials)})")
                continue
            console.rule(f"[bold]trial {i} of {len(plan.trials)}: {trial.name}")
            records[trial.name] = _record(trial, "running")  # what a killed sweep leaves saying
            write_records(plan.folder, [records[t.name] for t in plan.trials])
            try:
                _run_trial(trial, run_dir, plan, runs)
            except Exception as exc:  # recorded; the sweep goes on (Ctrl-C and kills end it)
                line = describe(exc)
                records[trial.name] = {**_described(trial, run_dir, plan), "status": "failed", "error": line}
                console.print(f"[bold red]{trial.name} failed:[/] {escape(line)}", highlight=False)
            else:
                records[trial.name] = _finished(trial, run_dir, plan)
                _say(records[trial.name])
            write_records(plan.folder, [records[t.name] for t in plan.trials])
        write_records(plan.folder, [records[t.name] for t in plan.trials])
    return [records[t.name] for t in plan.trials]


def _run_trial(trial: Trial, run_dir: RunDirectory, plan: SweepPlan, runs: dict[str, RunDirectory]) -> None:
    for stage in plan.stages:
        if run_dir.stage_state(stage) == "complete":
            continue
        donor = find_donor(stage, run_dir, [r for name, r in runs.items() if name != trial.name])
        if donor is not None and _take(stage, run_dir, donor):
            continue
        update_stage(run_dir, stage, checked=True)  # check_trials checked it before the first trial


def find_donor(stage: str, run_dir: RunDirectory, others: list[RunDirectory]) -> RunDirectory | None:
    """A run directory among `others` holding `stage` complete for the fingerprint `run` needs;
    one that computed it itself before one that took it from a third."""
    fingerprint = run_dir.fingerprint(stage)
    found = []
    for other in others:
        rec = other.stage_record(stage)
        folder = other.path / stage / COMPLETE
        if rec and rec.get("status") == "complete" and rec.get("fingerprint") == fingerprint \
                and folder.is_file() and folder.read_text() == fingerprint:
            found.append((bool(rec.get("shared_from")), other))
    return min(found, key=lambda f: f[0])[1] if found else None


def _take(stage: str, run_dir: RunDirectory, donor: RunDirectory) -> bool:
    """Install the donor's folder of `stage` into `run` under both locks (a command writing the
    donor meanwhile would swap that folder). False when the donor is busy: the stage is computed."""
    origin = (donor.stage_record(stage) or {}).get("shared_from", {}).get("trial") or donor.path.name
    command = " ".join(sys.argv) or "sweep"
    try:
        with run_dir.locked(command), exclusive(donor.path, command):
            if donor.stage_state(stage) != "complete":
                return False
            t0 = time.perf_counter()
            how = run_dir.link_stage_from(stage, donor.path / stage, {"trial": origin, "run_dir": str(donor.path)})
    except LockedError as exc:
        console.print(f"[yellow]{stage}[/]: not shared, {escape(str(exc))}; computing it")
        return False
    console.print(f"[green]{stage}[/]: shared from {origin} ({how}, {time.perf_counter() - t0:.1f} s)")
    return True


def _record(trial: Trial, status: str) -> dict[str, Any]:
    return {"trial": trial.name, "values": trial.values, "status": status, "eval_loss": None, "seconds": None,
            "computed": [], "shared": {}, "error": None, "run_dir": str(trial.run_dir)}


def _described(trial: Trial, run_dir: RunDirectory, plan: SweepPlan) -> dict[str, Any]:
    """What the trial's manifest says of its stages: which it computed (their seconds summed)
    and which it took from which trial (their linking seconds)."""
    computed, shared, seconds = [], {}, 0.0
    for stage in plan.stages:
        rec = run_dir.stage_record(stage) or {}
        if rec.get("status") != "complete" or run_dir.stage_state(stage) != "complete":
            continue
        seconds += float(rec.get("seconds") or 0)
        if rec.get("shared_from"):
            shared[stage] = rec["shared_from"]["trial"]
        else:
            computed.append(stage)
    return {**_record(trial, "pending"), "computed": computed, "shared": shared, "seconds": round(seconds, 1)}


def _finished(trial: Trial, run_dir: RunDirectory, plan: SweepPlan) -> dict[str, Any]:
    return {**_described(trial, run_dir, plan), "status": "done", **eval_numbers(run_dir, plan)}


def eval_numbers(run_dir: RunDirectory, plan: SweepPlan) -> dict[str, Any]:
    """The trial's eval loss: evaluate's 'after' loss on the eval blocks where evaluate ran,
    else train's last evaluation (none when train.eval_strategy is no); and evaluate's style share."""
    from ..stages.evaluate import REPORT

    out: dict[str, Any] = {"eval_loss": None}
    if "evaluate" in plan.stages and run_dir.stage_state("evaluate") == "complete":
        report = read_json(run_dir.artifact("evaluate", REPORT))
        out["eval_loss"] = report.get("after", {}).get("loss", {}).get("eval")
        if "style_share" in report.get("after", {}):
            out["style_share"] = report["after"]["style_share"]
    if out["eval_loss"] is None and "train" in plan.stages and run_dir.stage_state("train") == "complete":
        losses = read_json(run_dir.artifact("train", METRICS)).get("eval_losses") or []
        out["eval_loss"] = losses[-1] if losses else None
    return out


def _say(record: dict[str, Any]) -> None:
    shared: dict[str, list[str]] = {}
    for stage, origin in record["shared"].items():
        shared.setdefault(origin, []).append(stage)
    parts = [f"computed {', '.join(record['computed']) or 'nothing'}"]
    parts += [f"took {', '.join(stages)} from {origin}" for origin, stages in shared.items()]
    loss = record.get("eval_loss")
    console.print(f"[green]{record['trial']}[/]: {'; '.join(parts)}; {record['seconds']} s"
                  + (f"; eval loss {loss:.4f}" if loss is not None else ""), highlight=False)
