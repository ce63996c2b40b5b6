"""Readers: local json/jsonl/csv/parquet files, globs, split folders, HF datasets (local parquet,
offline) and local Deep Lake datasets. Every record comes with where it came from."""

import json
from pathlib import Path

import pytest
from helpers import write_jsonl

from sft_pipeline.data.sources import SourceError, read_records, source_kind
from sft_pipeline.stages.load import load_split

QA = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]


def read(source, split="train"):
    return list(read_records(str(source), split))


# ---- source_kind ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "source, kind",
    [
        ("bundled:lima_house_style", "bundled"),
        ("hf:org/name", "hf"),
        ("hf:/some/folder", "hf"),
        ("org/name", "hf"),
        ("hub://genai360/GAIR-lima-train-set", "deeplake"),
        ("al://org/ds", "deeplake"),
        ("file:///tmp/somewhere", "deeplake"),
        ("./data/train.jsonl", "local"),
        ("/abs/path/file.parquet", "local"),
        ("data/train.csv", "local"),
        ("data/*.jsonl", "local"),
        ("data/{split}.jsonl", "local"),
    ],
)
def test_source_kind(source, kind):
    assert source_kind(source) == kind


# ---- local files ------------------------------------------------------------------------------

def test_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", QA)
    assert read(path) == [(f"{path}:{i + 1}", rec) for i, rec in enumerate(QA)]


def test_jsonl_blank_lines_skipped_line_numbers_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(f"\n{json.dumps(QA[0])}\n   \n\n{json.dumps(QA[1])}\n\n", encoding="utf-8")
    assert read(path) == [(f"{path}:2", QA[0]), (f"{path}:5", QA[1])]


def test_jsonl_with_bom_and_crlf(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in QA[:2]))
    assert read(path) == [(f"{path}:1", QA[0]), (f"{path}:2", QA[1])]


def test_jsonl_invalid_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(QA[0]) + "\n" + '{"question": "q", oops}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"invalid JSON") as info:
        read(path)
    assert str(info.value).startswith(f"{path}:2: invalid JSON")


def test_jsonl_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(QA[0]).encode() + b"\n" + b'{"question": "caf\xe9", "answer": "a"}\n')
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}:2: not UTF-8 text")


def test_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(QA, indent=2), encoding="utf-8")
    assert read(path) == [(f"{path}[{i}]", rec) for i, rec in enumerate(QA)]


def test_json_that_is_really_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA), encoding="utf-8")
    assert read(path) == [(f"{path}:{i + 1}", rec) for i, rec in enumerate(QA)]


def test_json_invalid_names_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": }\n]\n', encoding="utf-8")
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}:3: invalid JSON")


def test_json_non_utf8(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"question": "caf\xe9", "answer": "a"}]')
    with pytest.raises(SourceError, match="not UTF-8 text") as info:
        read(path)
    assert str(info.value).startswith(f"{path}:1: ")


def test_json_scalar_is_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("42", encoding="utf-8")
    with pytest.raises(SourceError, match="expected a JSON array of records"):
        read(path)


@pytest.mark.parametrize("indent", [None, 2])
def test_json_object_wrapping_a_list(tmp_path, indent):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": QA}, indent=indent), encoding="utf-8")
    assert read(path) == [(f"{path}[{i}]", rec) for i, rec in enumerate(QA)]


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer\nq0,a0\n\n"q, with comma","a ""quoted"""\n', encoding="utf-8")
    assert read(path) == [
        (f"{path}:2", {"question": "q0", "answer": "a0"}),
        (f"{path}:4", {"question": "q, with comma", "answer": 'a "quoted"'}),
    ]


def test_csv_with_bom(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,answer\r\nq0,a0\r\n")
    assert read(path) == [(f"{path}:2", {"question": "q0", "answer": "a0"})]


def test_csv_ragged_row_names_file_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nq0,a0\nonly-one-field\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value) == f"{path}:3: 1 fields, header has 2 with delimiter ','"


def test_csv_non_utf8(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"question,answer\ncaf\xe9,a\n")
    with pytest.raises(SourceError, match="not UTF-8 text") as info:
        read(path)
    assert str(info.value).startswith(f"{path}:2: ")  # the line of the bad byte


def test_csv_header_only_is_empty(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\n", encoding="utf-8")
    assert read(path) == []


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(QA), path)
    assert read(path) == [(f"{path} row {i}", rec) for i, rec in enumerate(QA)]


def test_damaged_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(SourceError, match="cannot read parquet") as info:
        read(path)
    assert str(info.value).startswith(f"{path}: ")


def test_glob_reads_files_in_sorted_order(tmp_path):
    b = write_jsonl(tmp_path / "part-b.jsonl", [QA[1]])
    a = write_jsonl(tmp_path / "part-a.jsonl", [QA[0]])
    write_jsonl(tmp_path / "other.jsonl", [QA[2]])
    assert read(tmp_path / "part-*.jsonl") == [(f"{a}:1", QA[0]), (f"{b}:1", QA[1])]


def test_folder_with_split_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = write_jsonl(tmp_path / "train.jsonl", QA[:2])
    test = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(QA[2:]), test)
    (tmp_path / "notes.txt").write_text("ignored")
    assert read(tmp_path, "train") == [(f"{train}:1", QA[0]), (f"{train}:2", QA[1])]
    assert read(tmp_path, "test") == [(f"{test} row 0", QA[2])]


def test_folder_with_sharded_split_files(tmp_path):
    s0 = write_jsonl(tmp_path / "train-00000-of-00002.jsonl", [QA[0]])
    s1 = write_jsonl(tmp_path / "train-00001-of-00002.jsonl", [QA[1]])
    write_jsonl(tmp_path / "test-00000-of-00001.jsonl", [QA[2]])
    assert read(tmp_path, "train") == [(f"{s0}:1", QA[0]), (f"{s1}:1", QA[1])]


def test_folder_without_the_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", QA)
    with pytest.raises(SourceError, match=r"no file for split 'validation'") as info:
        read(tmp_path, "validation")
    assert "train.jsonl" in str(info.value)


def test_split_placeholder(tmp_path):
    train = write_jsonl(tmp_path / "lima_train.jsonl", QA[:1])
    test = write_jsonl(tmp_path / "lima_test.jsonl", QA[1:2])
    assert read(tmp_path / "lima_{split}.jsonl", "train") == [(f"{train}:1", QA[0])]
    assert read(tmp_path / "lima_{split}.jsonl", "test") == [(f"{test}:1", QA[1])]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value) == f"data.source: {path}: no such file"


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read(tmp_path / "*.jsonl")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    with pytest.raises(SourceError, match=r"unsupported file type '\.txt'"):
        read(path)


def test_bundled_dataset():
    rows = read("bundled:lima_house_style", "train")
    assert len(rows) == 120
    where, rec = rows[0]
    assert where.endswith("train.jsonl:1") and "conversations" in rec
    assert len(read("bundled:lima_house_style", "test")) == 40


def test_unknown_bundled_dataset():
    with pytest.raises(SourceError, match=r"^data.source: unknown bundled dataset 'nope'; known: lima_house_style$"):
        read("bundled:nope")


# ---- Hugging Face datasets, from a local folder (offline) -----------------------------------

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hf_folder(tmp_path):
    import datasets

    root = tmp_path / "hfds"
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_list(QA[:2]).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(QA[2:]).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_hf_local_parquet_folder(hf_offline, hf_folder):
    assert source_kind(f"hf:{hf_folder}") == "hf"
    assert read(f"hf:{hf_folder}", "train") == [(f"{hf_folder}[train] row 0", QA[0]), (f"{hf_folder}[train] row 1", QA[1])]
    assert read(f"hf:{hf_folder}", "test") == [(f"{hf_folder}[test] row 0", QA[2])]


def test_hf_unknown_split_is_a_source_error(hf_offline, hf_folder):
    with pytest.raises(SourceError) as info:
        read(f"hf:{hf_folder}", "validation")
    msg = str(info.value)
    assert msg.startswith(f"data.source: {hf_folder} (split validation): ")
    assert "\n" not in msg


# ---- Deep Lake (local) -------------------------------------------------------------------------

def make_deeplake(path: Path, columns: dict[str, list[str]]) -> Path:
    import deeplake

    ds = deeplake.create(f"file://{path}")
    for name in columns:
        ds.add_column(name, deeplake.types.Text())
    ds.append(columns)
    ds.commit()
    return path


LIMA_DL = {"question": ["q0", "q1"], "answer": ["a0", "a1"], "source": ["s0", "s1"]}


def test_deeplake_plain_path(tmp_path):
    path = make_deeplake(tmp_path / "dl", LIMA_DL)
    assert (path / "_deeplake_log").is_dir()
    assert source_kind(str(path)) == "deeplake"
    assert read(path) == [
        (f"{path} row 0", {"question": "q0", "answer": "a0", "source": "s0"}),
        (f"{path} row 1", {"question": "q1", "answer": "a1", "source": "s1"}),
    ]


def test_deeplake_file_url(tmp_path):
    path = make_deeplake(tmp_path / "dl", LIMA_DL)
    url = f"file://{path}"
    assert source_kind(url) == "deeplake"
    assert read(url) == [
        (f"{url} row 0", {"question": "q0", "answer": "a0", "source": "s0"}),
        (f"{url} row 1", {"question": "q1", "answer": "a1", "source": "s1"}),
    ]


def test_deeplake_load_split_keeps_everything(tmp_path):
    path = make_deeplake(tmp_path / "dl", LIMA_DL)
    kept, stats = load_split(str(path), "train", "auto", None)
    assert stats["format"] == "deeplake_lima"
    assert kept == [
        {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}], "source": "s0"},
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}], "source": "s1"},
    ]


def test_deeplake_missing_answer_column_drops_every_record(tmp_path):
    path = make_deeplake(tmp_path / "dl", {"question": ["q0", "q1", "q2"], "source": ["s", "s", "s"]})
    assert read(path)[0] == (f"{path} row 0", {"question": "q0", "source": "s"})
    kept, stats = load_split(str(path), "train", "deeplake_lima", None)
    assert kept == []
    assert stats["read"] == 3 and stats["kept"] == 0
    assert stats["dropped"] == {"missing_field:answer": 3}
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["read"]
    assert stats["dropped_examples"] == {"missing_field:answer": [f"{path} row {i}" for i in range(3)]}


def test_deeplake_missing_dataset(tmp_path):
    with pytest.raises(SourceError, match="cannot read Deep Lake dataset") as info:
        read(f"file://{tmp_path / 'nothing-here'}")
    assert "\n" not in str(info.value)
