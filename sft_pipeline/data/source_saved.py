"""Saved datasets: folders written by `datasets`' save_to_disk, and Arrow files.

- a Dataset's folder (`state.json`, `dataset_info.json`, `data-*.arrow`): one undivided set,
  as a single file is;
- a DatasetDict's folder (`dataset_dict.json` and a folder per split), or a folder of such split
  folders without it (what this project's `load` stage writes: `load/train`, `load/eval`): the
  subfolders are the splits;
- a `.arrow` file (Arrow stream or file format, e.g. a datasets cache file).

Rows are read a record batch at a time (pyarrow, not memory-mapped), never the whole table.
pyarrow is imported only when one is read: `validate` checks a recipe in under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .source_errors import SourceError

STATE = "state.json"
DICT = "dataset_dict.json"


def _split_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / STATE).is_file())


def is_saved(source: str) -> bool:
    """A folder save_to_disk wrote (a Dataset or a DatasetDict), or one holding such split folders."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return False
    return (folder / STATE).is_file() or (folder / DICT).is_file() or bool(_split_folders(folder))


def splits(folder: Path) -> list[str] | None:
    """The split names, or None for a single Dataset (one undivided set)."""
    if (folder / STATE).is_file():
        return None
    if (folder / DICT).is_file():
        try:
            names = json.loads((folder / DICT).read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise SourceError(f"{folder / DICT}: not a DatasetDict description ({type(err).__name__}: {err})") from None
        return [str(n) for n in names]
    return _split_folders(folder)


def has_split(source: str, split: str) -> bool:
    names = splits(Path(source).expanduser())
    return names is not None and split in names


def read(source: str, split: str) -> Iterator[tuple[str, Any]]:
    folder = Path(source).expanduser()
    names = splits(folder)
    if names is not None:
        if split not in names:
            raise SourceError(f"{folder}: no split '{split}' in this saved dataset (splits: {names})")
        folder = folder / split
    yield from _read_dataset(folder)


def _data_files(folder: Path) -> list[Path]:
    state = folder / STATE
    try:
        files = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        return [folder / f["filename"] for f in files]
    except FileNotFoundError:
        raise SourceError(f"{folder}: no {STATE}: not a save_to_disk folder") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise SourceError(f"{state}: not a saved dataset's state ({type(err).__name__}: {err})") from None


def _read_dataset(folder: Path) -> Iterator[tuple[str, Any]]:
    row = 0
    for path in _data_files(folder):
        if not path.is_file():
            raise SourceError(f"{path}: missing (listed in {folder / STATE})")
        for batch in _batches(path):
            for rec in batch.to_pylist():
                yield f"{folder} row {row}", rec
                row += 1


def read_arrow_file(path: Path) -> Iterator[tuple[str, Any]]:
    row = 0
    for batch in _batches(path):
        for rec in batch.to_pylist():
            yield f"{path} row {row}", rec
            row += 1


def _open(fh: Any) -> Any:
    """Arrow stream format (what datasets writes) or, failing that, the Arrow file format."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(fh)
    except pa.ArrowInvalid:
        fh.seek(0)
        reader = pa.ipc.open_file(fh)
        return (reader.get_batch(i) for i in range(reader.num_record_batches))


def _batches(path: Path) -> Iterator[Any]:
    """The file's record batches in order; damage stops with the file and the row reached."""
    import pyarrow as pa

    with pa.OSFile(str(path), "rb") as fh:
        try:
            batches = iter(_open(fh))
        except (pa.ArrowException, OSError) as err:
            raise SourceError(f"{path}: cannot read Arrow data: {str(err).splitlines()[0]}") from None
        rows = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as err:
                raise SourceError(f"{path} row {rows}: cannot read Arrow data: {str(err).splitlines()[0]}") from None
            rows += batch.num_rows
            yield batch
