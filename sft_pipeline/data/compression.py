"""Compressed files (.gz, .bz2, .xz, .zst) opened as a stream of decompressed bytes.

Datasets are shipped compressed (`train.jsonl.gz`, `data.jsonl.zst`) and are often larger than
memory once decompressed, so a file is never decompressed whole: the readers pull lines or
chunks through a buffered stream. Every codec reports damage its own way (EOFError, OSError,
LZMAError, ZstdError, or for zstd nothing at all); the stream turns all of them into one
CorruptCompressed that says how many decompressed bytes came out before it, so the reader can
stop with one line naming the file and how far it got.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..errors import PipelineError  # caught and reworded by source_local; one line if one escapes

CODECS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
BUFFER = 1 << 16
STEP = 1 << 13  # decompressed bytes asked of a codec at a time: a cut-short file still yields its head
ZSTD_INPUT = 1 << 14  # compressed bytes fed to zstd at a time: bounds one step's output


class CorruptCompressed(PipelineError, ValueError):
    """Compressed bytes that cannot be decompressed: damaged, cut short, or not that codec."""

    def __init__(self, message: str, codec: str = "", bytes_out: int = 0, reason: str = ""):
        super().__init__(message)
        self.codec, self.bytes_out, self.reason = codec, bytes_out, reason

    @classmethod
    def at(cls, codec: str, bytes_out: int, reason: str) -> "CorruptCompressed":
        return cls(f"corrupt {codec} data after {bytes_out} decompressed bytes: {reason}", codec, bytes_out, reason)


def codec_of(path: Path) -> str | None:
    """The codec a file name says it is compressed with (`.jsonl.gz` -> gzip), or None."""
    return CODECS.get(path.suffix.lower())


class _ZstdFrames:
    """zstd frames one after another (`cat a.zst b.zst` or a multi-threaded zstd's output).

    zstandard's stream_reader ends quietly when the input stops in the middle of a frame, which
    would lose the tail of a truncated download without a word; a decompressobj per frame tells
    a finished frame (`eof`) from one cut short."""

    def __init__(self, fh: BinaryIO):
        import zstandard

        self._fh, self._dctx = fh, zstandard.ZstdDecompressor()
        self._obj: Any = None
        self._out = b""

    def read(self, n: int) -> bytes:
        while not self._out:
            chunk = self._fh.read(ZSTD_INPUT)
            if not chunk:
                if self._obj is not None and not self._obj.eof:
                    raise EOFError("the file ends inside a zstd frame (cut short?)")
                return b""
            self._feed(chunk)
        out, self._out = self._out[:n], self._out[n:]
        return out

    def _feed(self, data: bytes) -> None:
        while data:
            if self._obj is None or self._obj.eof:
                self._obj = self._dctx.decompressobj()
            self._out += self._obj.decompress(data)
            data = self._obj.unused_data if self._obj.eof else b""

    def close(self) -> None:
        self._fh.close()


def _errors() -> tuple[type[BaseException], ...]:
    """What the codecs raise for bad data (zstandard only if installed: it is imported lazily)."""
    found: list[type[BaseException]] = [EOFError, OSError, lzma.LZMAError, zlib.error]
    try:
        import zstandard

        found.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(found)


class _Decompressed(io.RawIOBase):
    """The decompressed bytes as a raw stream, counted, with every codec error made one type."""

    def __init__(self, inner: Any, codec: str):
        super().__init__()
        self._inner, self.codec, self.bytes_out = inner, codec, 0
        self._bad = _errors()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._inner.read(min(len(buffer), STEP))
        except self._bad as err:
            raise CorruptCompressed.at(self.codec, self.bytes_out, str(err) or type(err).__name__) from None
        buffer[: len(data)] = data
        self.bytes_out += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def _inner(path: Path, codec: str) -> Any:
    if codec == "gzip":
        return gzip.open(path, "rb")
    if codec == "bzip2":
        return bz2.open(path, "rb")
    if codec == "xz":
        return lzma.open(path, "rb")
    return _ZstdFrames(open(path, "rb"))


@contextmanager
def open_binary(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed on the fly when its name ends in a codec's suffix.

    A 0-byte compressed file reads as empty, as a 0-byte plain file does (bzip2 and xz would
    call it cut short)."""
    codec = codec_of(path)
    if codec is None or path.stat().st_size == 0:
        with open(path, "rb") as fh:
            yield fh
        return
    with io.BufferedReader(_Decompressed(_inner(path, codec), codec), BUFFER) as fh:
        yield fh  # type: ignore[misc]
