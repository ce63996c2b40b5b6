"""Cheap checks of what a recipe points at, before a stage does any work.

The schema (config.py) checks every key's type, range and choices. This checks the keys that
name something outside the recipe: the data files, the model reference, the run directory, and
train.extra_args. Nothing large is read and no model loads, so a bad recipe is refused in well
under a second with one line naming the key. Only the stages that are about to run are checked:
a run directory whose load stage is complete does not need its data source any more (train and
merge may run on another machine than load).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

from .. import stages as registry
from ..config import Recipe, RecipeError


def check(recipe: Recipe, stages: Iterable[str]) -> None:
    """Raise RecipeError (one line, naming the key) for the first bad reference `stages` use.
    Which stages use which key is what each declares it reads (its SPEC)."""
    specs = [registry.spec(name) for name in stages]

    def read(key: str) -> bool:
        return any(s.covers(key) for s in specs)

    _check_run_dir(recipe)
    if read("data.source") or read("data.eval_source"):
        _check_data(recipe)
    if read("model.ref"):
        _check_model_ref(recipe.model.ref)
    if read("train.extra_args") and recipe.train.extra_args:
        _check_extra_args(recipe.train.extra_args)
    if read("distributed.strategy"):
        _check_distributed(recipe)


def _check_distributed(recipe: Recipe) -> None:
    """Several processes with a strategy known to fail here (QLoRA sharded, ZeRO without
    DeepSpeed, FSDP2 over gloo, ...): refused before the data stages run, not at launch."""
    from ..model.hardware import detect
    from ..training.strategy import refusal, world_size

    if world_size(recipe.distributed) == 1:
        return
    problem = refusal(recipe, detect().device, Path(recipe.distributed.strategy).is_file())
    if problem:
        raise RecipeError(problem)


def check_all(recipe: Recipe) -> None:
    """What `sft-pipeline validate` runs: every check, whatever the run directory holds."""
    check(recipe, registry.ALL)


def _check_run_dir(recipe: Recipe) -> None:
    path = recipe.resolved_run_dir()
    if path.exists() and not path.is_dir():
        raise RecipeError(f"run_dir: {path}: exists and is not a folder")


def _check_data(recipe: Recipe) -> None:
    data = recipe.data
    if data.sources is not None:  # every source of a mixture, each under its own key
        for i, spec in enumerate(data.sources):
            _check_source(f"data.sources[{i}].source", spec.source, [spec.split or data.train_split])
    else:
        _check_source("data.source", data.source, [data.train_split])
    if data.eval_source is not None:
        splits = [data.eval_split] if data.eval_split is not None else []
        _check_source("data.eval_source", data.eval_source, splits)


def _check_source(key: str, source: str, splits: list[str]) -> None:
    from ..data.sources import SourceError, bundled_folder, source_kind

    kind = source_kind(source)
    if kind == "bundled":
        try:
            bundled_folder(source, key)
        except SourceError as err:
            raise RecipeError(str(err)) from None
    elif kind == "local":
        for split in splits or ["train"]:
            pattern = str(Path(source.replace("{split}", split)).expanduser())
            if any(ch in pattern for ch in "*?["):
                if not glob.glob(pattern):
                    raise RecipeError(f"{key}: {pattern}: no file matches")
            elif not Path(pattern).exists():
                raise RecipeError(f"{key}: {pattern}: no such file or folder")
    # hub ids and Deep Lake paths are checked when read: that needs the network


def _check_model_ref(ref: str) -> None:
    from ..model.loader import ModelRefError, check_ref

    try:
        check_ref(ref)
    except ModelRefError as err:
        msg = str(err)
        raise RecipeError(msg if msg.startswith("model.ref") else f"model.ref: {msg}") from None


def _check_extra_args(extra: dict) -> None:
    # Needs TRL's SFTConfig (a few seconds to import), so only when extra_args is set.
    from ..training.sft_args import TrainConfigError, check_extra_args

    try:
        check_extra_args(extra)
    except TrainConfigError as err:
        raise RecipeError(str(err)) from None
