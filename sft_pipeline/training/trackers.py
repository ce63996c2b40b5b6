"""W&B and TensorBoard for a train that may be killed and resumed: one W&B run, each step once.

transformers' W&B callback starts a new W&B run whenever training starts, so a resumed train
becomes a second run with the steps after the checkpoint twice (transformers #25032). Here the
pipeline feeds both trackers itself (report_to is "none"):

- The W&B run id is made when train first starts and kept in its work folder (tracking.json),
  which survives a resume of the same recipe; a resumed train, and evaluate afterwards, continue
  that run (wandb.init(id=..., resume="allow")). A changed recipe is a new work folder, a new run.
  Offline, each process writes its own offline-run-*-<id> folder; `wandb sync` puts them in one run.
- Every scalar (step_scalars.py) goes to W&B, TensorBoard and scalars.jsonl in the work folder,
  with the global step as x axis. scalars.jsonl is appended (and fsynced) after both trackers
  have the row, and it is what a resumed train reads to skip the (kind, step) pairs already
  logged: the steps between the checkpoint and the kill are logged once, not twice. Resumes are
  deterministic (tests/stages/test_resume.py), so the row the first attempt logged is the row the
  second would log.
- A SIGKILLed process loses what wandb-core had not written yet (wandb_offline.py). Offline, a
  resumed train reads its earlier offline folders and logs again the rows of scalars.jsonl they
  lack. Online that cannot be seen from here: rows W&B had not sent when the process was killed
  stay in scalars.jsonl and TensorBoard only.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ..config import Recipe
from ..rundir.files import now, read_json, write_json
from ..rundir.stage_spec import METRICS
from . import step_scalars

console = Console(stderr=True)

MATMUL_RATE = "matmul_rate.json"  # in train's folder: MFU's denominator, measured once
IDENTITY = "tracking.json"  # in train's folder: the W&B run id, made at first start
SCALARS = "scalars.jsonl"  # in train's folder: every row the trackers got


def use_trackers(recipe: Recipe, out: Path) -> list[str]:
    """The trackers' names, their environment set for this process (the pipeline restores the
    environment after the stage), their files under the stage's folder."""
    trackers, env = report_to(recipe)
    os.environ.update(env)
    if "wandb" in trackers:
        os.environ["WANDB_DIR"] = str(out)
    return trackers


def report_to(recipe: Recipe) -> tuple[list[str], dict[str, str]]:
    """Trackers and the environment they need. W&B: online with a key, offline without one."""
    trackers, env = [], {}
    mode = recipe.tracking.wandb
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        console.print("[yellow]tracking.wandb is online but WANDB_API_KEY is not set; W&B may prompt or fail")
    if mode != "off":
        trackers.append("wandb")
        env.update({"WANDB_MODE": mode, "WANDB_PROJECT": recipe.tracking.project})
        if recipe.tracking.group:  # wandb.init reads the group from here (a sweep's trials share one)
            env["WANDB_RUN_GROUP"] = recipe.tracking.group
    if recipe.tracking.tensorboard:
        trackers.append("tensorboard")
    return trackers, env


def identity(folder: Path) -> dict[str, Any]:
    """The W&B run id of the train whose folder this is: made (and written) at its first start."""
    path = folder / IDENTITY
    if path.is_file():
        return read_json(path)
    ident = {"wandb_run_id": secrets.token_hex(4), "created": now()}
    write_json(path, ident)
    return ident


def read_scalars(path: Path) -> list[dict[str, Any]]:
    """scalars.jsonl's rows; a last line cut off by a kill is not a row."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def open_wandb(run_id: str, name: str, config: dict[str, Any] | None = None) -> Any:
    """Start or continue the W&B run `run_id` (mode, project and folder from the environment
    use_trackers set), with the global step as every metric's x axis."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT"), group=os.environ.get("WANDB_RUN_GROUP"), id=run_id,
                     resume="allow", name=name,
                     dir=os.environ.get("WANDB_DIR"), config=config, allow_val_change=True)
    wandb.define_metric(step_scalars.STEP)
    wandb.define_metric("*", step_metric=step_scalars.STEP, step_sync=True)
    return run


def close_wandb(failed: bool) -> None:
    import wandb

    wandb.finish(exit_code=1 if failed else 0)
    wandb.teardown()  # wandb keeps its settings (the run folder) per process otherwise


class Tracking:
    """The train stage's trackers, as a context: W&B's run opened (or continued) on entry and
    finished on exit, TensorBoard's writer, and scalars.jsonl. Without trackers it still keeps
    scalars.jsonl, which `sft-pipeline report` draws."""

    def __init__(self, out: Path, trackers: list[str], name: str, config: dict[str, Any], timer: Any,
                 flops: Any = None, rate: Any = None) -> None:
        self.out, self.trackers, self.name, self.config = out, trackers, name, config
        self.timer, self.flops, self.rate = timer, flops, rate
        self.logged = {(r.get("kind"), r.get(step_scalars.STEP)) for r in read_scalars(out / SCALARS)}
        self.run_id = identity(out)["wandb_run_id"]
        self.in_wandb = set(self.logged)  # (kind, step) W&B has: __enter__ adds what earlier folders hold
        self._seen = 0  # StepTimer steps already in a window
        self._tb: Any = None

    def __enter__(self) -> "Tracking":
        if "wandb" in self.trackers:
            earlier = self._earlier_wandb_rows()
            run = open_wandb(self.run_id, self.name, self.config)
            self._keep_url(run)
            self._replay(earlier)
        if "tensorboard" in self.trackers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        return self

    def _keep_url(self, run: Any) -> None:
        """An online run's URL, beside its id in tracking.json, for `sft-pipeline push`'s model
        card (an offline run has none until `wandb sync`; its entity is known only online)."""
        url = getattr(run, "url", None) if os.environ.get("WANDB_MODE") == "online" else None
        if url:
            ident = identity(self.out)
            if ident.get("wandb_url") != url:
                write_json(self.out / IDENTITY, {**ident, "wandb_url": url})

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._tb is not None:
            self._tb.close()
        if "wandb" in self.trackers:
            close_wandb(failed=exc_type is not None)

    def log(self, logs: dict[str, Any], step: int) -> dict[str, Any] | None:
        """One Trainer log to every tracker, unless this (kind, step) was logged before a resume."""
        kind = step_scalars.kind(logs)
        if kind is None:
            return None
        window = None
        if kind == "train":  # the optimizer steps since the previous logging step
            seconds, work = self.timer.seconds[self._seen:], self.timer.work[self._seen:]
            self._seen = len(self.timer.seconds)
            window = step_scalars.window_rate(seconds, work, self.flops, self.rate and self.rate.flops_per_second)
        if (kind, step) in self.logged:
            return None
        row = step_scalars.scalars(logs, step, window)
        if "wandb" in self.trackers and (kind, step) not in self.in_wandb:
            import wandb

            wandb.log(row)
        if self._tb is not None:
            for key, value in row.items():
                if key != step_scalars.STEP and value is not None:
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        with open(self.out / SCALARS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, **row}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.logged.add((kind, step))
        return row

    def _earlier_wandb_rows(self) -> set[tuple[str, int]] | None:
        """(kind, step) of the rows this run's earlier offline folders hold; None online (or on a
        first start), where scalars.jsonl is taken at its word."""
        folders = sorted((self.out / "wandb").glob(f"offline-run-*-{self.run_id}"))
        if os.environ.get("WANDB_MODE") != "offline" or not folders:
            return None
        from .wandb_offline import logged_rows

        return set().union(*(logged_rows(f, step_scalars.STEP) for f in folders))

    def _replay(self, earlier: set[tuple[str, int]] | None) -> None:
        """Log again the rows scalars.jsonl has and the earlier offline folders lack (a SIGKILL
        took them from wandb-core's buffer); afterwards W&B has every row scalars.jsonl has."""
        self.in_wandb = set(self.logged) | (earlier or set())
        if earlier is None:
            return
        import wandb

        lost = [r for r in read_scalars(self.out / SCALARS) if (r["kind"], r[step_scalars.STEP]) not in earlier]
        for row in lost:
            wandb.log({k: v for k, v in row.items() if k != "kind"})
        if lost:
            console.print(f"W&B: {len(lost)} rows the interrupted process had not written logged again")

    def summarize(self, summary: dict[str, Any], adapter: Path | None = None) -> None:
        """The run's summary (load and pack statistics, memory estimate and peak, ...) and, when
        given, the adapter as a W&B model artifact."""
        if "wandb" not in self.trackers:
            return
        import wandb

        wandb.run.summary.update(summary)
        if adapter is not None:
            artifact = wandb.Artifact(f"adapter-{self.run_id}", type="model",
                                      metadata={k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            artifact.add_dir(str(adapter))
            wandb.run.log_artifact(artifact)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
                if logs:  # only the writing process has a Tracking (others: QuietTracking)
                    outer.log(logs, state.global_step)

        return _Callback()


class QuietTracking:
    """The trackers of a training process other than rank 0: it logs and writes nothing (rank 0
    logs every process's steps, with the step's work summed over them)."""

    trackers: list[str] = []

    def __enter__(self) -> "QuietTracking":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        return TrainerCallback()  # every hook of the base class leaves the training as it is

    def summarize(self, summary: dict[str, Any], adapter: Path | None = None) -> None:
        return None


TRACKED_VERSIONS = ("accelerate", "wandb", "tensorboard")  # besides rundir.versions()'s


def run_config(run_dir: Any, hw: Any, rate: Any = None) -> dict[str, Any]:
    """W&B's config for a train: the resolved recipe, every stage's fingerprint, the hardware,
    the library versions, and what MFU is measured against."""
    from importlib.metadata import PackageNotFoundError, version

    from ..model.hardware import describe
    from ..rundir.directory import versions

    libs = versions()
    for pkg in TRACKED_VERSIONS:
        try:
            libs[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    # the resolved recipe as the run directory froze it (recipe.yaml), not read key by key: W&B's
    # copy is metadata, and the fingerprints below already say what each stage depends on
    return {"recipe": yaml.safe_load((run_dir.path / "recipe.yaml").read_text(encoding="utf-8")),
            "fingerprints": {stage: run_dir.fingerprint(stage) for stage in run_dir.declarations},
            "hardware": describe(hw), "versions": libs, "mfu_rate": rate.as_dict() if rate else None}


def train_summary(load: dict[str, Any], pack: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The summary of a finished train: load's kept and dropped records by reason, pack's blocks
    and padding share (their stats.json, which the train stage reads), prepare's memory estimate
    beside the measured peak, the speed."""
    gib = 1024**3
    peak = metrics.get("peak_rss_bytes") or metrics.get("peak_gpu_bytes")
    return {
        "load": {split: {"read": s.get("read"), "kept": s.get("kept"), "dropped": s.get("dropped", {})}
                 for split, s in load.items() if isinstance(s, dict)},
        "pack": {split: {k: s.get(k) for k in ("samples", "blocks", "tokens", "trained_tokens", "padding_share")}
                 for split, s in pack.items() if isinstance(s, dict)},
        "memory": {"estimate_gib": metrics["memory_estimate_gib"],
                   "peak_gib": round(peak / gib, 3) if peak else None,
                   "peak_is": "RSS" if metrics.get("peak_rss_bytes") else "GPU allocated",
                   "peak_over_estimate": metrics.get("peak_over_estimate")},
        "train": {k: metrics.get(k) for k in ("steps", "precision", "train_runtime_s", "tokens_per_second",
                                              "seconds_per_step", "final_train_loss", "resumed_from")},
    }


def train_tracking(run_dir: Any, out: Path, hw: Any, prec: Any, model: Any, timer: Any) -> Tracking:
    """The train stage's Tracking: the recipe's trackers with their environment, the FLOP shape
    of the model it trains, and the rate MFU divides by (said on the console)."""
    from .flops import Rate, device_rate, shape_from_model
    from .ranks import world_size

    trackers = use_trackers(run_dir.recipe, out)
    rate = device_rate(hw, prec.compute, out / MATMUL_RATE,
                       bf16_emulated=prec.compute == "bf16" and not hw.bf16_fast)
    processes = world_size()
    if processes > 1:  # the step's work is summed over the processes, each with its share of the machine
        rate = Rate(rate.flops_per_second * processes, rate.dtype, f"{rate.how}, x {processes} processes")
    console.print(f"MFU against {rate.how}")
    return Tracking(out, trackers, run_dir.recipe.name, run_config(run_dir, hw, rate), timer, shape_from_model(model), rate)


def log_evaluation(recipe: Recipe, out: Path, train_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """evaluate's results into the trained adapter's W&B run: before/after loss, perplexity and
    style share in the summary, and the answers as a table holding every evaluation of this
    adapter so far (logged whole each time: a table logged again under its key replaces the
    last one on the dashboard, axolotl #741, so the rows of the earlier ones come along)."""
    if "wandb" not in use_trackers(recipe, out):
        return
    ident = train_dir / IDENTITY
    if not ident.is_file():
        console.print("[yellow]W&B: train kept no run id (trained before runs were tracked); evaluate is not logged")
        return
    import wandb

    columns = list(rows[0]) if rows else ["evaluation", "prompt", "before", "after"]
    steps = read_json(train_dir / METRICS)["steps"]
    open_wandb(read_json(ident)["wandb_run_id"], recipe.name)
    failed = True
    try:
        wandb.log({"evaluate/answers": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
                   step_scalars.STEP: steps})
        wandb.run.summary.update({"evaluate": summary})
        failed = False
    finally:
        close_wandb(failed)
