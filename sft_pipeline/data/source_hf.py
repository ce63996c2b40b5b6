"""Hugging Face datasets: a hub id (or a local dataset script/folder datasets understands)."""

from __future__ import annotations

from typing import Any, Iterator

from .source_errors import SourceError


def _name_config(source: str) -> tuple[str, str]:
    if ":" in source and not source.startswith(("/", ".")):
        name, _, config = source.partition(":")  # "org/name:config" picks a configuration
        return name, config
    return source, ""


def read(source: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    name, config = _name_config(source)
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # network, auth, unknown split: all end the stage, with the reason
        raise SourceError(f"data.source: {source} (split {split}): {type(err).__name__}: {str(err).splitlines()[0]}") from None
    for i, rec in enumerate(ds):
        yield f"{source}[{split}] row {i}", rec


def has_split(source: str, split: str) -> bool | None:
    import datasets

    name, config = _name_config(source)
    try:
        return split in datasets.get_dataset_split_names(name, config or None)
    except Exception:  # offline, gated, or not a dataset: let reading report it
        return None
