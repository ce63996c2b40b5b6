"""The folder a push uploads: <run dir>/push/<what>/, the artifact's files, README.md (the model
card) and plots/ (the report's PNGs), staged before anything is sent.

Why in the run directory rather than a temporary folder: what went up (or, after --dry-run, what
would go up) stays beside the run it came from, to be read, diffed or uploaded by hand; and the
weights cost no second copy, being hard links (run.files.link_tree) to the stage outputs, which
are replaced and never edited in place. push/ is no stage: no stage reads it, and staging again
replaces it whole (built beside it, then renamed into place), so a crash never leaves a half
folder that looks staged. The token is never part of it: it is read at upload time only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PipelineError
from ..rundir.directory import RunDirectory
from ..rundir.files import atomic_write_text, link_tree
from .card import WHAT, base_model, build_card, read_facts

CARD = "README.md"
PLOTS = "plots"


class PushError(PipelineError, RuntimeError):
    """A push that cannot be made: nothing to push, no token, the Hub refused."""


@dataclass
class Staged:
    folder: Path
    files: list[str]  # every file of the folder, relative to it, sorted (README.md among them)
    card: Any  # huggingface_hub.ModelCard


def artifact(run_dir: RunDirectory, what: str) -> tuple[Path, list[Path]]:
    """(the folder the artifact lies in, the files of it to upload). adapter: train's adapter
    (method full: train's whole model, as `generate --model adapter` means); merged: merge's
    model; gguf: the export folder's GGUF files and Modelfile."""
    if what not in WHAT:
        raise PushError(f"push --what {what}: expected one of {', '.join(WHAT)}")
    if what == "gguf":  # whatever the export folder holds (it is not checked against the recipe)
        from ..stages.export import GGUF_FILES, MODELFILE

        pattern = run_dir.artifact("export", GGUF_FILES, fresh=False)
        export = pattern.parent
        ggufs = sorted(export.glob(pattern.name)) if export.is_dir() else []
        if not ggufs:
            raise PushError(f"push --what gguf: no {export}/model-<TYPE>.gguf: run `sft-pipeline export {run_dir.path}` first")
        modelfile = run_dir.artifact("export", MODELFILE, fresh=False)
        return export, ggufs + ([modelfile] if modelfile.is_file() else [])
    if what == "merged":
        folder = run_dir.artifact("merge", "model")  # refused in one line when merge has not run
    else:
        folder = run_dir.artifact("train", "model" if run_dir.recipe.method == "full" else "adapter")
    return folder, sorted(p for p in folder.rglob("*") if p.is_file())


def _point_adapter_at_hub_base(config: Path, hub_id: str) -> None:
    """PEFT loads an adapter's base from adapter_config.json's base_model_name_or_path, which
    train wrote as the local path it loaded (the bundled model's cache folder): on the Hub that
    must be the base's Hub id. Written as a new file, so the hard-linked original is unchanged."""
    data = json.loads(config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = hub_id
    config.unlink()
    atomic_write_text(config, json.dumps(data, indent=2) + "\n")


def stage(run_dir: RunDirectory, what: str, repo_id: str) -> Staged:
    source, files = artifact(run_dir, what)
    push = run_dir.path / "push"
    push.mkdir(parents=True, exist_ok=True)
    partial = push / f".{what}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    if what == "gguf":  # only the GGUF files and the Modelfile, not verify.json and the rest
        for path in files:
            link_tree_file(path, partial / path.name)
    else:
        link_tree(source, partial)
        # PEFT's save_pretrained leaves its own template card there: ours replaces it, and is
        # written as a new file (the link would carry the write into train's folder)
        (partial / CARD).unlink(missing_ok=True)
    hub_base, _ = base_model(run_dir.recipe.model.ref)
    if what == "adapter" and hub_base and (partial / "adapter_config.json").is_file():
        _point_adapter_at_hub_base(partial / "adapter_config.json", hub_base)
    plots = []
    report = run_dir.path / "report"
    for png in sorted(report.glob("*.png")) if report.is_dir() else []:
        (partial / PLOTS).mkdir(exist_ok=True)
        link_tree_file(png, partial / PLOTS / png.name)
        plots.append(f"{PLOTS}/{png.name}")
    listed = sorted([str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file()] + [CARD])
    card = build_card(read_facts(run_dir), what, repo_id, listed, plots)
    atomic_write_text(partial / CARD, str(card))  # a new file, never written through a link
    final = push / what
    old = push / f".{what}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    return Staged(final, listed, card)


def link_tree_file(src: Path, dst: Path) -> None:
    """One file as link_tree makes them: a hard link, or a copy across filesystems."""
    import errno

    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copy2(src, dst)
