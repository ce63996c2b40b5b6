"""The run directory: manifest, stage fingerprints, atomic stage output, and the writer lock.

Stages talk only through folders here. A stage's folder counts as complete only when the
manifest says so with the fingerprint of its current inputs, and the manifest is written last,
atomically, so a crash never leaves something that looks finished.

It knows no stage by name: whoever opens one hands it the stages' declarations (the registry,
stages/__init__.py: `stages.open_run_directory`), from which it takes fingerprints and checks
each artifact read against what its stage declares it writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..config import Recipe, recipe_to_yaml
from ..errors import PipelineError
from .files import atomic_write_text, exclusive, fsync_dir, fsync_tree, link_tree, now, read_json, write_json
from .stage_spec import SUMMARY, StageSpec

COMPLETE = ".complete"  # in a stage folder: the fingerprint it was completed for


class StageError(PipelineError, RuntimeError):
    """A stage cannot run; the message is one line saying why and what to do."""


def _pick(recipe: Recipe, dotted: str) -> Any:
    node: Any = recipe
    for key in dotted.split("."):
        node = getattr(node, key)
    return node.model_dump(mode="json") if hasattr(node, "model_dump") else node


def _short(summary: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in summary.items())
    return text if len(text) < 90 else text[:87] + "..."


class RunDirectory:
    """One run directory and the recipe it is for. `declarations` maps every stage's name to its
    SPEC (stages.DECLARATIONS); nothing here is known about a stage except what it declares."""

    def __init__(self, path: str | Path, recipe: Recipe, declarations: Mapping[str, StageSpec]):
        self.path = Path(path)
        self.recipe = recipe
        self.declarations = declarations

    def declaration(self, stage: str) -> StageSpec:
        try:
            return self.declarations[stage]
        except KeyError:
            raise StageError(f"unknown stage '{stage}' (stages: {', '.join(self.declarations)})") from None

    def with_recipe(self, recipe: Recipe) -> "RunDirectory":
        """The same folder read for another recipe (what a stage's state would be under it)."""
        return RunDirectory(self.path, recipe, self.declarations)

    # ---- fingerprints -------------------------------------------------------------------
    def fingerprint(self, stage: str) -> str:
        """A digest of what the stage's output depends on: the recipe keys it declares it reads
        (its SPEC) and its upstream stages' fingerprints. Keys it ignores stay out."""
        declared = self.declaration(stage)
        parts = {key: _pick(self.recipe, key) for key in declared.reads}
        parts["upstream"] = {up: self.fingerprint(up) for up in declared.upstream}
        blob = json.dumps({"stage": stage, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- manifest -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return read_json(self.manifest_path)
        return {"stages": {}}

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        return self.manifest().get("stages", {}).get(stage)

    def stage_state(self, stage: str) -> str:
        """complete | stale | missing (never run, or its folder is gone)."""
        rec = self.stage_record(stage)
        if not rec or rec.get("status") != "complete" or not (self.path / stage).is_dir():
            return "missing"
        return "complete" if rec.get("fingerprint") == self.fingerprint(stage) else "stale"

    def stage_dir(self, stage: str) -> Path:
        """The folder of a complete, fresh stage; anything else is a one-line refusal."""
        state = self.stage_state(stage)
        if state != "complete":
            what = "has not run" if state == "missing" else "is stale (the recipe changed)"
            raise StageError(f"stage '{stage}' {what} in {self.path}: run `sft-pipeline {stage} <recipe>` first")
        return self.path / stage

    def artifact(self, stage: str, name: str, fresh: bool = True) -> Path:
        """The path of `name` ("stats.json", "adapter", "model/config.json") in a complete, fresh
        stage folder: the one way code outside a stage reads what the stage wrote. `name` must be
        something the stage declares it writes (StageSpec.writes / may_write), so a renamed or
        misspelt artifact fails here, naming both, rather than as a missing file later.

        fresh=False drops the state check, not the name check: the path in the stage's folder
        whatever that holds now (an output made for another recipe, or nothing), for the readers
        that want an earlier output on purpose and look for it themselves (evaluate's history of
        answers; a merge stale only in its sampling settings; push's GGUF files)."""
        self.declaration(stage).check_artifact(name)
        return (self.stage_dir(stage) if fresh else self.path / stage) / name

    def status_rows(self) -> list[tuple[str, str, str, str]]:
        """(stage, complete | stale | missing, seconds, short summary) for every declared stage, in
        the registry's order: what `status` prints and the report's stage table shows."""
        rows = []
        for stage in self.declarations:
            rec = self.stage_record(stage) or {}
            state = self.stage_state(stage)
            summary = rec.get("summary", {}) if state != "missing" else {}
            rows.append((stage, state, str(rec.get("seconds", "")) if state != "missing" else "", _short(summary)))
        return rows

    def adopt(self, stage: str) -> bool:
        """Record a stage killed after its folder was renamed into place but before the manifest
        said so: the rename happens only once the stage has finished, and the folder's COMPLETE
        file names the inputs it was made from. Nothing finished is redone."""
        done = self.path / stage / COMPLETE
        rec = self.stage_record(stage)
        if (rec and rec.get("status") == "complete") or not done.is_file() or done.read_text() != self.fingerprint(stage):
            return False
        self._record(stage, self._complete_record(stage, self.fingerprint(stage), recovered=now()))
        for leftover in (self.work_dir(stage), self.path / ".partial" / f"{stage}.old"):
            shutil.rmtree(leftover, ignore_errors=True)  # a later attempt's work: superseded
        return True

    def _complete_record(self, stage: str, fingerprint: str, **times: Any) -> dict[str, Any]:
        """What the manifest says of a complete stage: one shape whether stage_output wrote it
        or adopt recovered it after a crash (`times` says which: started/finished or recovered)."""
        summary_path = self.path / stage / SUMMARY
        return {"status": "complete", "fingerprint": fingerprint, **times,
                "summary": read_json(summary_path) if summary_path.is_file() else {},
                "versions": versions(), "command": " ".join(sys.argv)}

    def _record(self, stage: str, record: dict[str, Any]) -> None:
        manifest = self.manifest()
        manifest["recipe"] = json.loads(self.recipe.model_dump_json())
        manifest.setdefault("stages", {})[stage] = record
        write_json(self.manifest_path, manifest)

    # ---- the lock -----------------------------------------------------------------------
    def locked(self, command: str) -> Any:
        return exclusive(self.path, command)

    # ---- atomic stage output ------------------------------------------------------------
    def work_dir(self, stage: str) -> Path:
        """Where a running stage writes; renamed to <stage>/ only when the stage succeeds."""
        return self.path / ".partial" / stage

    @contextmanager
    def stage_output(self, stage: str, keep_partial: bool = False) -> Iterator[Path]:
        """Yield a fresh work folder; on success swap it in as <stage>/ and record it last.

        keep_partial keeps an earlier attempt's work folder when it was made for the same
        fingerprint (a stage whose SPEC resumes: train, from its checkpoints).
        """
        fingerprint = self.fingerprint(stage)
        work = self.work_dir(stage)
        marker = work / ".fingerprint"
        ours = any(m.is_file() and m.read_text() == fingerprint for m in (marker, work / COMPLETE))
        if work.exists() and not (keep_partial and ours):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        marker.write_text(fingerprint)
        atomic_write_text(self.path / "recipe.yaml", recipe_to_yaml(self.recipe))
        started = now()
        t0 = _dt.datetime.now()
        yield work
        # The folder says which inputs it is complete for, and reaches the disk before it is
        # renamed into place (a lost VM keeps only what was written back).
        os.replace(marker, work / COMPLETE)
        self._swap_in(stage, fingerprint, started, t0)

    def link_stage_from(self, stage: str, source: Path, shared_from: dict[str, Any]) -> str:
        """Make `source`, another run directory's complete folder of this stage for the same
        fingerprint, this run directory's own: hard-linked (copied where links cannot be made)
        into the work folder, then swapped in and recorded exactly as a stage that ran here, plus
        `shared_from`. So every command treats it as this run's output; a kill before the record
        leaves a folder that is not taken as complete (or one adopt() recognises). Stage folders
        are never written in place (a re-run writes a new work folder and swaps it in), so the
        linked files stay as the source made them. Returns how, in files.link_tree's words
        ("hardlinked", "copied", or both with counts), which the record keeps as shared_from["by"]."""
        fingerprint = self.fingerprint(stage)
        if not (source / COMPLETE).is_file() or (source / COMPLETE).read_text() != fingerprint:
            raise StageError(f"{source} is not a complete '{stage}' for this run's inputs ({fingerprint})", stage)
        work = self.work_dir(stage)
        if work.exists():
            shutil.rmtree(work)
        work.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "recipe.yaml", recipe_to_yaml(self.recipe))
        started, t0 = now(), _dt.datetime.now()
        how = link_tree(source, work)
        self._swap_in(stage, fingerprint, started, t0, shared_from={**shared_from, "by": how})
        return how

    def _swap_in(self, stage: str, fingerprint: str, started: str, t0: _dt.datetime, **extra: Any) -> None:
        """Rename the finished work folder (its COMPLETE file written) into place and record it last."""
        work = self.work_dir(stage)
        fsync_tree(work)
        final = self.path / stage
        # Forget the old record first: from here until the new record, the stage reads as missing.
        manifest = self.manifest()
        if manifest.get("stages", {}).pop(stage, None) is not None:
            write_json(self.manifest_path, manifest)
        old = self.path / ".partial" / f"{stage}.old"
        if old.exists():  # left by a run killed while replacing its output
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(work, final)
        fsync_dir(self.path)
        seconds = round((_dt.datetime.now() - t0).total_seconds(), 1)
        self._record(stage, self._complete_record(stage, fingerprint, started=started, finished=now(), seconds=seconds,
                                                  **extra))


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("sft-pipeline", "torch", "transformers", "trl", "peft", "datasets", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
