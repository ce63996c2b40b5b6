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


def check(recipe: Recipe, stages: Iterable[str], export_model: bool = True) -> None:
    """Raise RecipeError (one line, naming the key) for the first bad reference `stages` use.
    Which stages use which key is what each declares it reads (its SPEC). export_model: when
    export is among them, whether model.ref's architecture must be one llama.cpp converts."""
    stages = list(stages)
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
    if read("export"):
        _check_export(recipe, export_model and "export" in stages)


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
    """What `sft-pipeline validate` runs: every check, whatever the run directory holds. The
    model's architecture is held to llama.cpp's converter only when the recipe has an export
    section of its own: a recipe that never exports (the seed's OPT one) is valid."""
    check(recipe, registry.ALL, export_model="export" in recipe.model_fields_set)


def _check_export(recipe: Recipe, model: bool) -> None:
    """export.types are llama.cpp's type names; with `model`, model.ref is an architecture its
    converter handles (config.json's "architectures"; a hub id not in the local cache is checked
    by the export stage, on merge/model)."""
    from ..model import gguf_tools

    for name in recipe.export.types:
        try:
            gguf_tools.canonical_type(name)
        except gguf_tools.GGUFError as err:
            raise RecipeError(f"export.types: {err}") from None
    if not model:
        return
    config = _model_config(recipe.model.ref)
    if config is not None:
        problem = gguf_tools.unsupported(gguf_tools.architectures(config), f"model.ref {recipe.model.ref}")
        if problem:
            raise RecipeError(problem)


def _model_config(ref: str) -> Path | None:
    """model.ref's config.json where it can be read without a download or a conversion: a local
    folder's, the bundled model's converted checkpoint (once made), a hub id's cached copy."""
    from ..model.loader import bundled_checkpoint, ref_kind

    kind = ref_kind(ref)
    if kind == "local":
        found = Path(ref).expanduser() / "config.json"
    elif kind == "bundled":
        found = bundled_checkpoint(ref.split(":", 1)[1]) / "config.json"  # converted on first use, not here
    elif kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
        found = Path(cached) if isinstance(cached, str) else None
    else:  # a .gguf file: converted to a checkpoint on first use, checked on merge/model at export
        found = None
    return found if found is not None and found.is_file() else None


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
