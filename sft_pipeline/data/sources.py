"""Where records come from. Each reader yields (where, record): `where` names the file and line
or the row, so a record that is dropped or stops the stage can be found by the user."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from . import source_deeplake as deeplake_source
from . import source_hf as hf
from . import source_local as local
from . import source_saved as saved
from .source_errors import SourceError  # raised here too; importers of sources.SourceError keep working

Record = tuple[str, Any]


BUNDLED_DATA = Path(__file__).resolve().parent.parent / "bundled"


def source_kind(source: str) -> str:
    """bundled:<name> | hf:<id or folder> (forces datasets.load_dataset) | Deep Lake | a saved
    dataset (save_to_disk folder) | local | hub id."""
    if source.startswith("hf:"):
        return "hf"
    if source.startswith("bundled:"):
        return "bundled"
    if deeplake_source.is_deeplake(source):
        return "deeplake"
    if saved.is_saved(source):
        return "saved"
    if local.looks_local(source):
        return "local"
    return "hf"


def bundled_folder(source: str, key: str = "data.source") -> Path:
    """The folder a `bundled:<name>` source names; SourceError (naming `key`) when no such
    dataset ships with the package. The one check: preflight and the load stage both ask here."""
    name = source.split(":", 1)[1]
    folder = BUNDLED_DATA / name
    if not folder.is_dir():
        known = sorted(p.name for p in BUNDLED_DATA.iterdir() if p.is_dir()) if BUNDLED_DATA.is_dir() else []
        raise SourceError(f"{key}: unknown bundled dataset '{name}'; known: {', '.join(known)}")
    return folder


def has_split(source: str, split: str) -> bool | None:
    """Whether the source has this split; None when it cannot be told without reading (a hub
    dataset while offline): reading it then decides. A Deep Lake dataset is one undivided set."""
    kind = source_kind(source)
    if kind == "bundled":
        return local.has_split(str(bundled_folder(source)), split)
    if kind == "local":
        return local.has_split(source, split)
    if kind == "saved":
        return saved.has_split(source, split)
    if kind == "deeplake":
        return False
    return hf.has_split(source.removeprefix("hf:"), split)


def read_records(source: str, split: str, csv_delimiter: str = "auto") -> Iterator[Record]:
    """The split's records as (where, record); `csv_delimiter` is data.csv_delimiter (csv_read)."""
    kind = source_kind(source)
    if kind == "bundled":
        yield from local.read(str(bundled_folder(source)), split, csv_delimiter)
    elif kind == "deeplake":
        yield from deeplake_source.read(source)
    elif kind == "saved":
        yield from saved.read(source, split)
    elif kind == "local":
        yield from local.read(source, split, csv_delimiter)
    else:
        yield from hf.read(source.removeprefix("hf:"), split)
