"""Saved datasets as sources (data/source_saved.py): datasets' save_to_disk folders (a Dataset, a
DatasetDict with its splits), this project's own load output, and .arrow files; read a batch at a
time; damage stops with the file."""

from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import pytest
from helpers import lima_rows, write_jsonl

from sft_pipeline.config import DataConfig
from sft_pipeline.data.sources import SourceError, has_split, read_records, source_kind
from sft_pipeline.stages.load import load_split

QA = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]


def read(source, split="train"):
    return list(read_records(str(source), split))


@pytest.fixture
def dataset_dict(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA[:3]),
                          "test": datasets.Dataset.from_list(QA[3:])}).save_to_disk(str(folder))
    return folder


def test_a_dataset_dict_folder_has_its_splits(dataset_dict):
    assert (dataset_dict / "dataset_dict.json").is_file()
    assert source_kind(str(dataset_dict)) == "saved"
    assert read(dataset_dict) == [(f"{dataset_dict / 'train'} row {i}", QA[i]) for i in range(3)]
    assert read(dataset_dict, "test") == [(f"{dataset_dict / 'test'} row {i}", QA[3 + i]) for i in range(2)]
    assert has_split(str(dataset_dict), "test") is True and has_split(str(dataset_dict), "validation") is False
    with pytest.raises(SourceError) as info:
        read(dataset_dict, "validation")
    assert str(info.value) == f"{dataset_dict}: no split 'validation' in this saved dataset (splits: ['train', 'test'])"


def test_a_dataset_folder_is_one_undivided_set(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(QA).save_to_disk(str(folder), num_shards=3)  # rows over three files, in order
    assert len(list(folder.glob("data-*.arrow"))) == 3
    assert source_kind(str(folder)) == "saved"
    assert [rec for _, rec in read(folder)] == QA
    assert has_split(str(folder), "test") is False


def test_the_load_stage_reads_a_dataset_dict_with_its_test_split(dataset_dict, tmp_path):
    from sft_pipeline.stages import load

    out = tmp_path / "out"
    load.produce(SimpleNamespace(recipe=SimpleNamespace(data=DataConfig(source=str(dataset_dict)))), out)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["train"]["read"], stats["eval"]["read"]) == (3, 2) and "carved_from" not in stats["eval"]


def test_this_projects_load_output_is_a_source(tmp_path):
    """load/ holds train/ and eval/ split folders (arrow_io); either, or the folder, reads back."""
    from sft_pipeline.stages import load

    src = write_jsonl(tmp_path / "d.jsonl", lima_rows(10, multi_every=3))
    out = tmp_path / "out"
    load.produce(SimpleNamespace(recipe=SimpleNamespace(data=DataConfig(source=str(src), eval_split=None, eval_size=3))), out)
    first, _ = load_split(str(src), "train", "auto", None)
    assert source_kind(str(out)) == source_kind(str(out / "train")) == "saved"
    assert has_split(str(out), "eval") and not has_split(str(out), "test")
    again, stats = load_split(str(out), "train", "auto", None)
    evals, _ = load_split(str(out / "eval"), "train", "auto", None)
    assert stats["format"] == "messages" and stats["read"] == stats["kept"] == 7
    key = lambda r: json.dumps(r["messages"])  # noqa: E731
    assert sorted(map(key, again + evals)) == sorted(map(key, first))


def test_rows_are_read_a_batch_at_a_time(tmp_path):
    import datasets

    rows = [{"question": f"question {i} " + "x" * 40, "answer": f"answer {i} " + "y" * 40} for i in range(100_000)]
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    del rows
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_records(str(folder), "train"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 100_000 and peak < 5_000_000, peak  # the rows as Python objects would be ~30 MB


def test_arrow_files(tmp_path):
    import pyarrow as pa

    table = pa.Table.from_pylist(QA)
    stream, file = tmp_path / "stream.arrow", tmp_path / "file.arrow"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    for path in (stream, file):
        assert read(path) == [(f"{path} row {i}", rec) for i, rec in enumerate(QA)]


# ---- damage ---------------------------------------------------------------------------------------

def test_a_missing_shard(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(QA).save_to_disk(str(folder), num_shards=2)
    (folder / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(SourceError) as info:
        read(folder)
    assert str(info.value) == f"{folder / 'data-00001-of-00002.arrow'}: missing (listed in {folder / 'state.json'})"


def test_a_garbage_arrow_shard(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(QA).save_to_disk(str(folder))
    shard = folder / "data-00000-of-00001.arrow"
    shard.write_bytes(b"not arrow at all" * 10)
    with pytest.raises(SourceError) as info:
        read(folder)
    assert str(info.value).startswith(f"{shard}: cannot read Arrow data: ") and "\n" not in str(info.value)


def test_a_cut_arrow_shard_names_the_row_reached(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(QA * 400).save_to_disk(str(folder), max_shard_size="1MB")
    shard = folder / "data-00000-of-00001.arrow"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 2 // 3])
    with pytest.raises(SourceError) as info:
        read(folder)
    assert str(info.value).startswith(f"{shard} row ") and "cannot read Arrow data" in str(info.value)


def test_a_damaged_state_json(tmp_path, dataset_dict):
    (dataset_dict / "train" / "state.json").write_text("{not json")
    with pytest.raises(SourceError) as info:
        read(dataset_dict)
    assert str(info.value).startswith(f"{dataset_dict / 'train' / 'state.json'}: not a saved dataset's state (JSONDecodeError")
