"""Compressed sources (.gz, .bz2, .xz, .zst around jsonl, json, csv, tsv): read as a stream, in
split folders and globs like plain files; damaged bytes stop with the file and how far it got."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from sft_pipeline.data.sources import SourceError, has_split, read_records
from sft_pipeline.stages.load import load_split

QA = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": lambda data: zstandard.ZstdCompressor().compress(data)}
CODEC = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def plain(fmt: str, rows: list) -> bytes:
    if fmt == ".jsonl":
        return jsonl(rows)
    if fmt == ".json":
        return json.dumps(rows, indent=2).encode()
    sep = "\t" if fmt == ".tsv" else ","
    return ("question" + sep + "answer\n" + "".join(f"{r['question']}{sep}{r['answer']}\n" for r in rows)).encode()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(COMPRESS[path.suffix](data))
    return path


def read(source, split="train"):
    return [rec for _, rec in read_records(str(source), split)]


@pytest.mark.parametrize("codec", list(COMPRESS))
@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv", ".tsv"])
def test_each_codec_around_each_text_format(tmp_path, fmt, codec):
    path = write(tmp_path / f"d{fmt}{codec}", plain(fmt, QA))
    assert read(path) == QA
    where = [w for w, _ in read_records(str(path), "train")]
    assert where[0] == {".jsonl": f"{path}:1", ".json": f"{path}[0]"}.get(fmt, f"{path}:2")


def test_compressed_split_files_in_a_folder_and_a_glob(tmp_path):
    write(tmp_path / "train-00000-of-00002.jsonl.gz", jsonl(QA[:1]))
    write(tmp_path / "train-00001-of-00002.jsonl.zst", jsonl(QA[1:2]))
    write(tmp_path / "test.csv.xz", plain(".csv", QA[2:]))
    assert read(tmp_path, "train") == QA[:2]
    assert read(tmp_path, "test") == QA[2:]
    assert has_split(str(tmp_path), "test") and not has_split(str(tmp_path), "validation")
    assert read(tmp_path / "*.jsonl.*") == QA[:2]


def test_concatenated_gzip_members_and_zstd_frames_are_all_read(tmp_path):
    # `cat a.gz b.gz > c.gz` and multi-threaded zstd both make one file of several parts
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl(QA[:2])) + gzip.compress(jsonl(QA[2:])))
    zst = tmp_path / "d.jsonl.zst"
    cctx = zstandard.ZstdCompressor()
    zst.write_bytes(cctx.compress(jsonl(QA[:2])) + cctx.compress(jsonl(QA[2:])))
    assert read(gz) == QA and read(zst) == QA


def _many(n: int) -> list[dict]:
    return [{"question": f"question number {i} " + "x" * 40, "answer": f"answer {i} " + "y" * 40} for i in range(n)]


@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv"])
def test_a_compressed_file_is_never_decompressed_whole(tmp_path, fmt):
    """~5 MB decompressed; reading every record stays far below that in Python memory."""
    rows = _many(50_000)
    path = write(tmp_path / f"d{fmt}.gz", plain(fmt, rows))
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_records(str(path), "train"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == len(rows)
    assert peak < 1_500_000, peak


TRUNCATED = "Compressed file ended before the end-of-stream marker was reached"


@pytest.mark.parametrize("codec, reason", [
    (".gz", TRUNCATED), (".bz2", TRUNCATED), (".xz", TRUNCATED),
    (".zst", "the file ends inside a zstd frame (cut short?)"),  # zstandard's stream_reader says nothing
])
def test_a_truncated_download_stops_with_how_far_it_got(tmp_path, codec, reason):
    whole = COMPRESS[codec](jsonl(_many(20_000)))
    path = tmp_path / f"d.jsonl{codec}"
    path.write_bytes(whole[: len(whole) * 3 // 4])
    with pytest.raises(SourceError) as info:
        read(path)
    msg = str(info.value)
    m = re.fullmatch(re.escape(f"{path}: corrupt {CODEC[codec]} data after ") + r"(\d+) records \((\d+) bytes "
                     r"decompressed\): " + re.escape(reason), msg)
    assert m, msg
    records, decompressed = int(m[1]), int(m[2])
    assert records < 20_000 and decompressed >= records * 100  # each record's line is over 100 bytes


@pytest.mark.parametrize("codec, reason", [
    (".gz", r"Not a gzipped file \(b'\{\"'\)"), (".bz2", "Invalid data stream"),
    (".xz", "Input format not supported by decoder"), (".zst", "zstd decompressor error: Unknown frame descriptor"),
])
def test_a_plain_file_named_compressed_stops(tmp_path, codec, reason):
    path = tmp_path / f"d.jsonl{codec}"
    path.write_bytes(jsonl(QA))
    with pytest.raises(SourceError) as info:
        read(path)
    assert re.fullmatch(re.escape(f"{path}: corrupt {CODEC[codec]} data after 0 records (0 bytes decompressed): ") + reason,
                        str(info.value)), str(info.value)


@pytest.mark.parametrize("codec, reason", [(".xz", "Corrupt input data"), (".bz2", "Invalid data stream")])
def test_damaged_bytes_in_the_middle(tmp_path, codec, reason):
    data = bytearray(COMPRESS[codec](jsonl(_many(5000))))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path = tmp_path / f"d.jsonl{codec}"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError) as info:
        read(path)
    msg = str(info.value)
    assert re.fullmatch(re.escape(f"{path}: corrupt {CODEC[codec]} data after ") + r"\d+ records \(\d+ bytes decompressed\): "
                        + reason, msg), msg


def test_a_gzip_checksum_that_fails_at_the_end(tmp_path):
    # gzip checks its CRC only after the last byte: nearly every record was read, and the stop says so
    data = bytearray(gzip.compress(jsonl(_many(20_000))))
    data[-8] ^= 0xFF
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError) as info:
        read(path)
    msg = str(info.value)
    m = re.fullmatch(re.escape(f"{path}: corrupt gzip data after ") + r"(\d+) records \(\d+ bytes decompressed\): "
                     r"CRC check failed .+", msg)
    assert m and 15_000 < int(m[1]) < 20_000, msg


def test_the_records_before_the_damage_are_counted_by_load_only_when_it_stops(tmp_path):
    # load_split stops: no half-read split is ever written as if it were the whole file
    whole = gzip.compress(jsonl(_many(20_000)))
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match="corrupt gzip data"):
        load_split(str(path), "train", "auto", None)
    kept, stats = load_split(str(path), "train", "auto", 100)  # the cap stops before the damage
    assert stats["read"] == stats["kept"] == 100


@pytest.mark.parametrize("codec", list(COMPRESS))
def test_empty_compressed_files_read_as_empty(tmp_path, codec):
    zero = tmp_path / f"zero.jsonl{codec}"
    zero.write_bytes(b"")  # bzip2 and xz call a 0-byte file cut short; it is empty, as a 0-byte .jsonl is
    empty = write(tmp_path / f"empty.jsonl{codec}", b"")
    assert read(zero) == [] and read(empty) == []


def test_unsupported_compressed_names(tmp_path):
    for name, suffix in [("d.parquet.gz", ".parquet.gz"), ("d.gz", ".gz"), ("d.txt.zst", ".txt.zst")]:
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"x"))
        with pytest.raises(SourceError) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: unsupported file type '{suffix}' (use .jsonl, .ndjson, .json, .csv, .tsv")
