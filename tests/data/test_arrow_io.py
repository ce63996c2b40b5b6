import datasets
import pyarrow as pa
import pytest

from sft_pipeline.data.arrow_io import SplitWriter, count_rows, iter_batches, split_dirs

SCHEMA = pa.schema([("text", pa.string()), ("spans", pa.list_(pa.list_(pa.int64()))), ("source", pa.string())])


def test_rows_written_in_batches_read_back_by_datasets_and_by_batches(tmp_path):
    rows = [{"text": f"row {i}", "spans": [[i, i + 1]] * (i % 3), "source": None if i % 4 else "x"} for i in range(25)]
    with SplitWriter(tmp_path / "train", SCHEMA, batch_rows=7) as writer:
        for row in rows:
            writer.add(row)
    assert writer.count == 25
    assert datasets.load_from_disk(str(tmp_path / "train")).to_list() == rows
    assert [b.num_rows for b in iter_batches(tmp_path / "train")] == [7, 7, 7, 4]
    assert [r for b in iter_batches(tmp_path / "train", ["text"]) for r in b.to_pylist()] == [{"text": r["text"]} for r in rows]
    assert count_rows(tmp_path / "train") == 25


def test_tables_and_rows_mix_and_an_empty_split_keeps_its_schema(tmp_path):
    with SplitWriter(tmp_path / "a", SCHEMA, batch_rows=2) as writer:
        writer.add({"text": "one", "spans": [], "source": "s"})
        writer.add_table(pa.table({"text": ["two", "three"], "spans": [[[0, 1]], []], "source": ["s", "s"]}, schema=SCHEMA))
    assert datasets.load_from_disk(str(tmp_path / "a"))["text"] == ["one", "two", "three"]
    with SplitWriter(tmp_path / "b", SCHEMA):
        pass
    empty = datasets.load_from_disk(str(tmp_path / "b"))
    assert len(empty) == 0 and empty.column_names == ["text", "spans", "source"]
    assert [p.name for p in split_dirs(tmp_path)] == ["a", "b"]


def test_a_failed_write_leaves_no_split_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with SplitWriter(tmp_path / "train", SCHEMA) as writer:
            writer.add({"text": "x", "spans": [], "source": ""})
            raise RuntimeError("source broke before the first batch was written")
    assert not (tmp_path / "train").exists()
