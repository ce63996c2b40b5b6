"""Local files: one file, a glob, or a folder of split files.

JSON Lines (.jsonl, .ndjson), JSON, CSV and TSV, plain or compressed (.gz, .bz2, .xz, .zst:
read as a stream, never decompressed whole), Parquet and Arrow. Every reader streams: a record
at a time (a batch for Parquet and Arrow), so a file larger than memory can be loaded; only a
.json object that is not an array of records (pandas' columns/index layouts) is parsed whole.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Iterator

from . import json_stream
from .compression import CODECS, CorruptCompressed, codec_of, open_binary
from .csv_read import read_csv
from .source_errors import SourceError
from .source_saved import read_arrow_file

# a file's suffix -> how it is read (not data.format, the records' shape: data/formats.py)
FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                ".parquet": "parquet", ".arrow": "arrow"}
STREAMED = {"jsonl", "json", "csv", "tsv"}  # the formats that may be compressed
SUFFIXES = tuple(FILE_FORMATS) + tuple(f + c for f, kind in FILE_FORMATS.items() if kind in STREAMED for c in CODECS)
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SUPPORTED = ".jsonl, .ndjson, .json, .csv, .tsv (each plain or .gz, .bz2, .xz, .zst), .parquet, .arrow"


def looks_local(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or Path(source).exists()
        or any(ch in source for ch in "*?[")
        or source.lower().endswith(SUFFIXES)
        or "{split}" in source
    )


def file_format(path: Path) -> str | None:
    """'jsonl', 'csv', ... from the file name, through a compression suffix ('a.jsonl.gz' is
    jsonl); None for anything else (a compressed Parquet file too: Parquet compresses itself)."""
    inner = Path(path.stem) if codec_of(path) else path
    fmt = FILE_FORMATS.get(inner.suffix.lower())
    return fmt if fmt in STREAMED or inner is path else None


def data_suffix(path: Path) -> str:
    """The suffix that makes the file a data file: '.jsonl.gz', '.csv'."""
    return "".join(path.suffixes[-2:]) if codec_of(path) else path.suffix


def split_name(path: Path) -> str:
    """The split a file in a split folder belongs to: train.jsonl, train-00000-of-00002.jsonl.gz -> train."""
    return path.name[: len(path.name) - len(data_suffix(path))].split("-")[0]


def _split_files(folder: Path, split: str | None) -> list[Path]:
    """The folder's data files (of one split, when given), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and file_format(p) and split in (None, split_name(p)))


def resolve_files(source: str, split: str) -> list[Path]:
    """A folder holds one file per split (train.jsonl, test.parquet, ...); '{split}' in a path is
    replaced by the split; a plain file or glob is taken as given."""
    pattern = str(Path(source.replace("{split}", split)).expanduser())
    folder = Path(pattern)
    if folder.is_dir():
        files = _split_files(folder, split)
        if not files:
            have = [p.name for p in _split_files(folder, None)]
            raise SourceError(f"{folder}: no file for split '{split}' (expected {split}.jsonl or similar; found {have})")
        return files
    files = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [folder]
    files = [f for f in files if f.is_file()]
    if not files:
        raise SourceError(f"data.source: {pattern}: no such file")
    for f in files:
        if file_format(f) is None:
            raise SourceError(f"{f}: unsupported file type '{data_suffix(f)}' (use {SUPPORTED})")
    return files


def has_split(source: str, split: str) -> bool:
    """Only a folder of split files or a path with '{split}' has named splits; a plain file or a
    glob is one undivided set (reading it as 'test' too would evaluate on the training data)."""
    if "{split}" in source:
        pattern = str(Path(source.replace("{split}", split)).expanduser())
        return any(Path(p).is_file() for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else Path(pattern).is_file()
    folder = Path(source).expanduser()
    return folder.is_dir() and bool(_split_files(folder, split))


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(UTF16_BOMS):
                raise SourceError(f"{path}:1: UTF-16 text (byte-order mark); save the file as UTF-8")
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise SourceError(f"{path}:{lineno}: not UTF-8 text (byte {err.start})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise SourceError(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno}){_one_document(lineno, text)}") from None
            except (ValueError, RecursionError) as err:  # 5000-digit numbers, 100k-deep nesting
                raise SourceError(f"{path}:{lineno}: unreadable JSON: {str(err).splitlines()[0][:120]}") from None
            yield f"{path}:{lineno}", record


def _one_document(lineno: int, text: str) -> str:
    """A hint for a pretty-printed JSON document saved as .jsonl: its first line is a lone bracket."""
    if lineno == 1 and text.strip() in ("[", "{"):
        return "; the file looks like one JSON document, not JSON Lines: name it .json"
    return ""


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    """One JSON document, streamed (json_stream); a '.json' file that is one object per line,
    as many are, is read as JSON Lines."""
    try:
        with open_binary(path) as fh:
            for loc, rec in json_stream.records(fh):
                yield f"{path}{loc}", rec
    except json_stream.JsonStreamError as err:
        raise SourceError(f"{path}{err}") from None
    except json_stream.JsonLinesInstead:
        yield from _read_jsonl(path)


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise SourceError(f"{path}: cannot read parquet: {str(err).splitlines()[0]}") from None
    row = 0
    batches = table.iter_batches(batch_size=4096)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # damaged data pages behind an intact footer
            raise SourceError(f"{path} row {row}: cannot read parquet: {str(err).splitlines()[0]}") from None
        for rec in batch.to_pylist():
            yield f"{path} row {row}", rec
            row += 1


def _records(path: Path, fmt: str, csv_delimiter: str) -> Iterator[tuple[str, Any]]:
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "json":
        return _read_json(path)
    if fmt in ("csv", "tsv"):
        return read_csv(path, csv_delimiter, fmt == "tsv")
    if fmt == "parquet":
        return _read_parquet(path)
    return read_arrow_file(path)


def read(source: str, split: str, csv_delimiter: str = "auto") -> Iterator[tuple[str, Any]]:
    for path in resolve_files(source, split):
        yield from _stop_on_damage(path, _records(path, file_format(path) or "", csv_delimiter))


def _stop_on_damage(path: Path, records: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """Damaged compressed bytes stop the read with the file and how far it got."""
    n = 0
    try:
        for item in records:
            yield item
            n += 1
    except CorruptCompressed as err:
        raise SourceError(f"{path}: corrupt {err.codec} data after {n} records ({err.bytes_out} bytes "
                     f"decompressed): {err.reason}") from None
