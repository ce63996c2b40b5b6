"""Split folders in the run directory, written and read a record batch at a time.

The data stages stream: a split of a million conversations never sits in memory as Python
objects, only one batch of it does. The folders are `datasets.save_to_disk` folders (one Arrow
stream file, `state.json`, `dataset_info.json`), so `datasets.load_from_disk` reads them as
usual; reading here goes through pyarrow without memory-mapping, so pages already processed
do not stay in the process's resident memory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

SHARD = "data-00000-of-00001.arrow"
BATCH_ROWS = 1000


class SplitWriter:
    """Rows (dicts) or Arrow tables in, a `load_from_disk` folder out. Rows are buffered and
    written `batch_rows` at a time against one schema, given or taken from the first batch."""

    def __init__(self, folder: Path, schema: pa.Schema | None = None, batch_rows: int = BATCH_ROWS):
        self.folder = Path(folder)  # made at the first write: a stage that fails early leaves nothing
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self._flush()

    def add_table(self, table: pa.Table) -> None:
        self._flush()
        for batch in table.to_batches(max_chunksize=self.batch_rows):
            self._write(batch)

    def widen(self, schema: pa.Schema) -> None:
        """Go on with a wider schema (the same columns and more nullable fields): the rows
        already written are rewritten once, cast, so the folder holds one schema. A split that
        never needs the wider one keeps the narrow schema, byte for byte as before."""
        if self.schema == schema:
            return
        self.schema = schema
        if self._writer is None:
            return
        assert self._sink is not None
        self._writer.close()
        self._sink.close()
        narrow = self.folder / (SHARD + ".narrow")
        (self.folder / SHARD).rename(narrow)
        self._writer, self._sink, self.count = None, None, 0
        with pa.OSFile(str(narrow), "rb") as fh:
            for batch in pa.ipc.open_stream(fh):
                self._write(batch)
        narrow.unlink()

    def _flush(self) -> None:
        if self.rows:
            batch = pa.RecordBatch.from_pylist(self.rows, schema=self.schema)
            self.rows = []
            self._write(batch)

    def _write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self.schema = self.schema or batch.schema
            self.folder.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.folder / SHARD), "wb")
            self._writer = pa.ipc.new_stream(self._sink, self.schema)
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)  # e.g. a batch whose optional column is all null
        self._writer.write_batch(batch)
        self.count += batch.num_rows

    def close(self) -> int:
        """Finish the Arrow file and write the metadata `load_from_disk` needs; returns the row count."""
        import datasets

        self._flush()
        if self._writer is None:  # no rows: an empty table with the schema, if one is known
            self._write(pa.RecordBatch.from_pylist([], schema=self.schema or pa.schema([])))
        assert self._writer is not None and self._sink is not None
        self._writer.close()
        self._sink.close()
        ds = datasets.Dataset.from_file(str(self.folder / SHARD), in_memory=False)
        state = {"_data_files": [{"filename": SHARD}], "_fingerprint": ds._fingerprint,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        info = dataclasses.asdict(ds.info)
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        (self.folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
        return self.count

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        elif self._sink is not None:
            self._sink.close()


def data_files(folder: Path) -> list[Path]:
    state = json.loads((Path(folder) / "state.json").read_text())
    return [Path(folder) / f["filename"] for f in state["_data_files"]]


def iter_batches(folder: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The split's record batches in order, read (not mapped) one at a time."""
    for path in data_files(folder):
        with pa.OSFile(str(path), "rb") as fh:
            for batch in pa.ipc.open_stream(fh):
                yield batch.select(columns) if columns else batch


def folder_schema(folder: Path) -> pa.Schema:
    """The schema a split folder was written with (its first file's)."""
    with pa.OSFile(str(data_files(folder)[0]), "rb") as fh:
        return pa.ipc.open_stream(fh).schema


def count_rows(folder: Path) -> int:
    total = 0
    for path in data_files(folder):
        with pa.memory_map(str(path), "rb") as fh:  # reads the batch headers, not the data
            total += sum(b.num_rows for b in pa.ipc.open_stream(fh))
    return total


def split_dirs(stage_dir: Path) -> list[Path]:
    return sorted(p for p in Path(stage_dir).iterdir() if p.is_dir() and (p / "state.json").is_file())
