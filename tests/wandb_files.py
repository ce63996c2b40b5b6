"""What W&B wrote offline, read with W&B's own reader: `wandb leet inspect --json`, the wandb-core
binary's dump of a run's .wandb transaction log (the records `wandb sync` would upload). Nothing
is synced and nothing reaches a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def offline_runs(wandb_dir: Path) -> list[Path]:
    """A wandb folder's offline-run-<time>-<id> folders, oldest first."""
    return sorted(wandb_dir.glob("offline-run-*"))


def records(run_folder: Path) -> list[dict]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_folder)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def of_type(recs: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in recs if r.get("type") == kind]


def history(recs: list[dict]) -> list[dict]:
    return [h["item"] for h in of_type(recs, "history")]


def run_id(recs: list[dict]) -> str:
    (run,) = of_type(recs, "run")
    return run["run_id"]


def summary(recs: list[dict]) -> dict:
    """The run's summary as its updates leave it (later updates win)."""
    out: dict = {}
    for s in of_type(recs, "summary"):
        out.update(s.get("update", {}))
    return out


def config(recs: list[dict]) -> dict:
    out: dict = {}
    for r in [*of_type(recs, "run"), *of_type(recs, "config")]:
        out.update(r.get("config", r).get("update", {}))
    return out
