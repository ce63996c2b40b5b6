"""Local json, jsonl, parquet and csv files: one file, a glob, or a folder of split files."""

from __future__ import annotations

import csv
import glob
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterator

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def looks_local(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or Path(source).exists()
        or any(ch in source for ch in "*?[")
        or source.endswith(SUFFIXES)
        or "{split}" in source
    )


def _error(msg: str) -> Exception:
    from .sources import SourceError

    return SourceError(msg)


def resolve_files(source: str, split: str) -> list[Path]:
    """A folder holds one file per split (train.jsonl, test.parquet, ...); '{split}' in a path is
    replaced by the split; a plain file or glob is taken as given."""
    pattern = str(Path(source.replace("{split}", split)).expanduser())
    folder = Path(pattern)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.stem.split("-")[0] == split)
        if not files:
            have = sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES)
            raise _error(f"{folder}: no file for split '{split}' (expected {split}.jsonl or similar; found {have})")
        return files
    files = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [folder]
    files = [f for f in files if f.is_file()]
    if not files:
        raise _error(f"data.source: {pattern}: no such file")
    for f in files:
        if f.suffix not in SUFFIXES:
            raise _error(f"{f}: unsupported file type '{f.suffix}' (use {', '.join(SUFFIXES)})")
    return files


def has_split(source: str, split: str) -> bool:
    """Only a folder of split files or a path with '{split}' has named splits; a plain file or a
    glob is one undivided set (reading it as 'test' too would evaluate on the training data)."""
    if "{split}" in source:
        pattern = str(Path(source.replace("{split}", split)).expanduser())
        return any(Path(p).is_file() for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else Path(pattern).is_file()
    folder = Path(source).expanduser()
    return folder.is_dir() and any(p.suffix in SUFFIXES and p.stem.split("-")[0] == split for p in folder.iterdir())


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _error(f"{path}:{lineno}: not UTF-8 text (byte {err.start})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise _error(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
            except (ValueError, RecursionError) as err:  # 5000-digit numbers, 100k-deep nesting
                raise _error(f"{path}:{lineno}: unreadable JSON: {str(err).splitlines()[0][:120]}") from None
            yield f"{path}:{lineno}", record


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise _error(f"{path}:{line}: not UTF-8 text (byte {err.start})") from None


RECORD_LIST_FIELDS = {"conversations", "messages"}


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    text = _decode(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _error(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    except (ValueError, RecursionError) as err:
        raise _error(f"{path}: unreadable JSON: {str(err).splitlines()[0][:120]}") from None
    if isinstance(data, dict) and len(data) == 1:
        key, value = next(iter(data.items()))
        # {"data": [{...}, ...]} wraps records; {"conversations": [...]} is one record
        wrapper = key not in RECORD_LIST_FIELDS and isinstance(value, list) and any(isinstance(v, dict) for v in value)
        data = value if wrapper else [data]
    elif isinstance(data, dict):
        data = [data]  # a single record
    if not isinstance(data, list):
        raise _error(f"{path}: expected a JSON array of records (or use .jsonl)")
    for i, rec in enumerate(data):
        yield f"{path}[{i}]", rec


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    text = _decode(path)
    csv.field_size_limit(sys.maxsize)  # the default 128 KiB limit rejects long answers
    # strict: an unclosed quote is an error, not the rest of the file swallowed into one field
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    try:
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if not header:
                header = row
                continue
            if len(row) != len(header):
                raise _error(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            yield f"{path}:{lineno}", dict(zip(header, row))
    except csv.Error as err:
        raise _error(f"{path}:{reader.line_num}: invalid CSV: {err}") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise _error(f"{path}: cannot read parquet: {str(err).splitlines()[0]}") from None
    row = 0
    batches = table.iter_batches(batch_size=4096)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # damaged data pages behind an intact footer
            raise _error(f"{path} row {row}: cannot read parquet: {str(err).splitlines()[0]}") from None
        for rec in batch.to_pylist():
            yield f"{path} row {row}", rec
            row += 1


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read(source: str, split: str) -> Iterator[tuple[str, Any]]:
    for path in resolve_files(source, split):
        reader = _read_jsonl if path.suffix == ".json" and _is_jsonl(path) else READERS[path.suffix]
        yield from reader(path)


def _is_jsonl(path: Path) -> bool:
    """Many '.json' files are really JSON Lines: a '.json' file that does not parse as one JSON
    document but starts with an object is read line by line."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"{"):
        return False
    try:
        json.loads(path.read_bytes().decode("utf-8-sig"))
        return False
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    # Not one document: JSON Lines when the first line is a whole object on its own.
    with open(path, "rb") as fh:
        first = fh.readline().lstrip(b"\xef\xbb\xbf")
    try:
        return isinstance(json.loads(first), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
