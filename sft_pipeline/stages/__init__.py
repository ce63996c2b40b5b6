"""One module per stage. Each exposes `produce(run_dir: RunDirectory, out: Path)`, reads
only the recipe and earlier stages' artifacts, writes only into `out` (made atomic by the run
directory), and declares all of that in `SPEC` (rundir/stage_spec.py) next to its produce().

This is the registry: the order of the six, the stages outside them (evaluate, export), each one's
declaration and producer, and `open_run_directory`, which hands the run directory the
declarations (the run directory, a layer below, knows no stage by name). Stage modules are
imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from ..rundir.directory import RunDirectory, StageError
from ..rundir.stage_spec import RecordedElsewhere, StageSpec

if TYPE_CHECKING:
    from ..config import Recipe

ORDER = ("load", "template", "pack", "prepare", "train", "merge")
# run like a stage (fingerprint, folder, manifest), outside `run`: export refuses architectures
# llama.cpp cannot convert (OPT), which must still train and merge
EXTRA = ("evaluate", "export")
ALL = (*ORDER, *EXTRA)


def _module(name: str) -> ModuleType:
    if name not in ALL:
        raise StageError(f"unknown stage '{name}' (stages: {', '.join(ALL)})")
    module = importlib.import_module(f"{__name__}.{name}")
    if module.SPEC.name != name:  # a declaration copied from another stage
        raise RuntimeError(f"stages/{name}.py declares SPEC for stage '{module.SPEC.name}'")
    return module


def spec(name: str) -> "StageSpec":
    """The stage's declaration; StageError for a name that is not a stage."""
    return _module(name).SPEC


def producer(name: str) -> "Callable[[RunDirectory, Path], RecordedElsewhere | None]":
    """The stage's produce(): None when its output is complete in `out`, RecordedElsewhere when it
    ran here but another machine records it (train on a node other than 0)."""
    return _module(name).produce


def specs() -> "tuple[StageSpec, ...]":
    """Every stage's declaration, in ALL's order (imports every stage module)."""
    return tuple(spec(name) for name in ALL)


class _Declarations(Mapping[str, StageSpec]):
    """Every stage's SPEC by name, in ALL's order, each stage module imported when first asked for
    (a command that reads one stage's state does not import the training stack)."""

    def __getitem__(self, name: str) -> StageSpec:
        if name not in ALL:
            raise KeyError(name)
        return spec(name)

    def __iter__(self) -> Iterator[str]:
        return iter(ALL)

    def __len__(self) -> int:
        return len(ALL)


DECLARATIONS: Mapping[str, StageSpec] = _Declarations()


def open_run_directory(path: str | Path, recipe: "Recipe") -> RunDirectory:
    """The run directory at `path` for `recipe`, knowing every stage's declaration."""
    return RunDirectory(path, recipe, DECLARATIONS)
