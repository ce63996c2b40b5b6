"""Write a run's report: the PNGs and index.html under <run dir>/report/."""

from __future__ import annotations

from pathlib import Path

from ..run.files import atomic_write_text
from ..run.rundir import RunDir
from .collect import collect
from .page import render
from .plots import draw


def write_report(run: RunDir) -> tuple[Path, list[str]]:
    """(the HTML page's path, a note for each thing missing from it)."""
    contents = collect(run)
    folder = run.path / "report"
    images, missing = draw(contents.scalars, folder)
    notes = contents.notes + missing
    page = folder / "index.html"
    atomic_write_text(page, render(contents, images, notes))
    return page.resolve(), notes
