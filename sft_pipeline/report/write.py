"""Write a run's report: the PNGs and index.html under <run dir>/report/."""

from __future__ import annotations

from pathlib import Path

from ..rundir.directory import RunDirectory
from ..rundir.files import atomic_write_text
from .collect import collect
from .page import render
from .plots import draw


def write_report(run_dir: RunDirectory) -> tuple[Path, list[str]]:
    """(the HTML page's path, a note for each thing missing from it)."""
    contents = collect(run_dir)
    folder = run_dir.path / "report"
    images, missing = draw(contents.scalars, folder)
    notes = contents.notes + missing
    page = folder / "index.html"
    atomic_write_text(page, render(contents, images, notes))
    return page.resolve(), notes
