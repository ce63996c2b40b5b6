"""One module per stage. Each exposes `run(run: RunDir, out: Path) -> None`, reads only the
recipe and earlier stages' folders, and writes only into `out` (made atomic by rundir)."""
