""".json files parsed as a stream (data/json_stream.py): the same values and the same errors as
json.loads, whatever the window size; the layouts real exports use; memory bounded by a record."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from sft_pipeline.data import json_stream
from sft_pipeline.data.sources import SourceError, read_records

QA = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]

DOCS = [
    [],
    QA,
    [{"n": 12345678901234567890, "f": -1.5e-7, "t": True, "z": None, "s": "é \u2028 \\ \" 😀"}, 7, "x", [1, [2]]],
    [{"deep": [[[[{"a": [1, 2, {"b": "c"}]}]]]]}] * 5,
    [{"long": "y" * 5000}, {"n": 0}],
]


def parse(data: bytes) -> list:
    return list(json_stream.records(io.BytesIO(data)))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 16])
@pytest.mark.parametrize("indent", [None, 2])
def test_same_values_as_json_loads_at_any_window_size(monkeypatch, chunk, indent):
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    for doc in DOCS:
        data = json.dumps(doc, indent=indent, ensure_ascii=False).encode()
        assert [rec for _, rec in parse(data)] == json.loads(data), data[:80]
        assert [loc for loc, _ in parse(data)] == [f"[{i}]" for i in range(len(doc))]


BAD = [
    b"[",
    b"[1,]",
    b'[\n  {"q": "a"},\n  {"q": }\n]',
    b'[\n  {"q": "a"} {"q": "b"}\n]',
    b'[\n  {"q": "a"},\n  {"q": "b", "ans',
    b'{\n  "data": [\n    {"q": "a"},\n    {"q": "b", "ans',
    b'[{"q": "a"}]\n[{"q": "b"}]',
    b"[tru]",
    b'[{"q": "a\x01"}]',
    b'{"data": [1, 2], "x": }',
    b'{"data": [1, 2]\n  "x": 3}',
    b"\n\n  \n",
    b"",
]


@pytest.mark.parametrize("chunk", [1, 5, 1 << 16])
@pytest.mark.parametrize("data", BAD)
def test_errors_name_the_line_and_column_json_loads_names(monkeypatch, chunk, data):
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(data)
    err = expected.value
    with pytest.raises(json_stream.JsonStreamError) as info:
        parse(data)
    assert str(info.value) == f":{err.lineno}: invalid JSON: {err.msg} (column {err.colno})"


def test_not_utf8_and_utf16_name_the_line(monkeypatch):
    monkeypatch.setattr(json_stream, "CHUNK", 4)
    data = b'[\n  {"q": "a"},\n  {"q": "caf\xe9"}\n]'
    with pytest.raises(json_stream.JsonStreamError) as info:
        parse(data)
    at = data.index(b"\xe9")
    assert str(info.value) == f":3: not UTF-8 text (byte {at})"  # the offset in the file
    with pytest.raises(json_stream.JsonStreamError, match=r"^:1: UTF-16 text \(byte-order mark\); save the file as UTF-8$"):
        parse('[{"q": "a"}]'.encode("utf-16"))
    assert [r for _, r in parse(b"\xef\xbb\xbf" + json.dumps(QA).encode())] == QA  # a UTF-8 BOM is skipped


def test_a_scalar_is_not_records():
    with pytest.raises(json_stream.JsonStreamError, match=r"^: expected a JSON array of records \(or use \.jsonl\)$"):
        parse(b'"just a string"')


# ---- layouts ------------------------------------------------------------------------------------

def records(doc) -> list:
    return parse(json.dumps(doc).encode())


@pytest.mark.parametrize("key", json_stream.WRAPPER_KEYS)
def test_records_under_a_wrapper_key_next_to_metadata(key):
    # SQuAD-style {"version": ..., "data": [...]}; metadata before or after the records is ignored
    assert records({"version": "1.1", key: QA, "license": "cc-by"}) == [(f"[{i}]", r) for i, r in enumerate(QA)]


def test_a_single_unknown_key_holding_records():
    assert records({"train": QA}) == [(f"[{i}]", r) for i, r in enumerate(QA)]


def test_one_record_objects_stay_one_record():
    for rec in ({"messages": [{"role": "user", "content": "q"}]}, {"conversations": ["q", "a"]},
                {"question": "q", "answer": "a", "tags": [{"t": 1}]}):
        assert records(rec) == [("[0]", rec)]


def test_pandas_to_json_layouts():
    """DataFrame.to_json writes orient="columns" by default; "index", "split" and "table" too."""
    import pandas as pd

    frame = pd.DataFrame(QA)
    expected = [(f"[{i}]", r) for i, r in enumerate(QA)]
    for orient in ("records", "columns", "index", "split"):
        got = parse(frame.to_json(orient=orient).encode())
        assert got == expected, orient
    # "table" is {"schema": {...}, "data": [...]}, its rows carrying the index as a column
    assert parse(frame.to_json(orient="table").encode()) == [(f"[{i}]", {"index": i, **r}) for i, r in enumerate(QA)]


def test_json_lines_in_a_json_file_is_read_as_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA), encoding="utf-8")
    assert list(read_records(str(path), "train")) == [(f"{path}:{i + 1}", r) for i, r in enumerate(QA)]
    with pytest.raises(json_stream.JsonLinesInstead):
        parse(path.read_bytes())


def test_json_lines_whose_first_line_wraps_a_list_stops():
    # its list was taken for the records; the second line then shows it was not one document
    data = json.dumps({"data": QA}).encode() + b"\n" + json.dumps({"data": QA}).encode() + b"\n"
    with pytest.raises(json_stream.JsonStreamError, match=r"^:2: invalid JSON: Extra data \(column 1\)$"):
        parse(data)


def test_a_large_json_array_is_parsed_a_record_at_a_time(tmp_path):
    rows = [{"question": f"question {i} " + "x" * 40, "answer": f"answer {i} " + "y" * 40} for i in range(50_000)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 1, "data": rows}), encoding="utf-8")  # ~5 MB on one line
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_records(str(path), "train"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == len(rows) and peak < 1_500_000, peak


def test_a_huge_record_spanning_many_windows(tmp_path):
    big = "Ünïcödé \"quoted\" \\ line\n" * 200_000  # ~5 MB in one string
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"question": "q", "answer": big}, {"question": "q2", "answer": "a2"}]), encoding="utf-8")
    got = [rec for _, rec in read_records(str(path), "train")]
    assert got[0]["answer"] == big and got[1] == {"question": "q2", "answer": "a2"}


def test_errors_from_a_file_name_it(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n  {"q": "a"},\n  {"q": }\n]')
    with pytest.raises(SourceError) as info:
        list(read_records(str(path), "train"))
    assert str(info.value) == f"{path}:3: invalid JSON: Expecting value (column 9)"
