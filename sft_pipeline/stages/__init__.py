"""One module per stage. Each exposes `run(run: RunDir, out: Path) -> None`, reads only the
recipe and earlier stages' folders, writes only into `out` (made atomic by rundir), and declares
all of that in `SPEC` (run/stage_spec.py) next to its run().

This is the registry: the order of the six, the stages outside them (evaluate, export), and each one's
declaration and runner. Stage modules are imported only when asked for, and nothing here imports
the run layer at import time, so run/rundir.py can take the order from here (stages import it).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pathlib import Path

    from ..run.rundir import RunDir
    from ..run.stage_spec import StageSpec

ORDER = ("load", "template", "pack", "prepare", "train", "merge")
# run like a stage (fingerprint, folder, manifest), outside `run`: export refuses architectures
# llama.cpp cannot convert (OPT), which must still train and merge
EXTRA = ("evaluate", "export")
ALL = (*ORDER, *EXTRA)


def _module(name: str) -> ModuleType:
    if name not in ALL:
        from ..run.rundir import StageError

        raise StageError(f"unknown stage '{name}' (stages: {', '.join(ALL)})")
    module = importlib.import_module(f"{__name__}.{name}")
    if module.SPEC.name != name:  # a declaration copied from another stage
        raise RuntimeError(f"stages/{name}.py declares SPEC for stage '{module.SPEC.name}'")
    return module


def spec(name: str) -> "StageSpec":
    """The stage's declaration; StageError for a name that is not a stage."""
    return _module(name).SPEC


def runner(name: str) -> "Callable[[RunDir, Path], None]":
    return _module(name).run


def specs() -> "tuple[StageSpec, ...]":
    """Every stage's declaration, in ALL's order (imports every stage module)."""
    return tuple(spec(name) for name in ALL)
