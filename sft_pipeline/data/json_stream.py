"""A `.json` file's records, parsed as a stream: one record in memory at a time, not the file.

A `.json` file of records is one document: an array of records, an object holding one (under
`data`, `rows`, ... next to metadata such as a version or a schema), or pandas' `to_json`
layouts. json.loads would need the whole text (a `.json.gz` decompressed whole, a 2 GB export in
memory twice); here the array is walked element by element with JSONDecoder.raw_decode on a
window of text that grows only as far as the current element needs.

Errors keep json's own words and say where: `:<line>: invalid JSON: <msg> (column <col>)`.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, BinaryIO, Iterator

from ..errors import PipelineError  # caught and reworded by source_local; one line if one escapes

NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")  # JSON's whitespace
CHUNK = 1 << 16
SLACK = 64  # an error this close to the end of the window may only be the window's end
# keys whose array holds the records, other keys being metadata ({"version": 1, "data": [...]})
WRAPPER_KEYS = ("data", "rows", "records", "examples", "items", "instances")
RECORD_LIST_FIELDS = {"conversations", "messages"}  # {"messages": [...]} is one record, not a wrapper


class JsonStreamError(PipelineError, ValueError):
    """Unreadable input; str() is '<loc>: <reason>', loc being ':<line>' or '' (the whole file)."""


class JsonLinesInstead(PipelineError, ValueError):
    """The first line is a whole object and more follows: JSON Lines in a .json file."""


def _utf16_bom(head: bytes) -> bool:
    return head.startswith((b"\xff\xfe", b"\xfe\xff"))


class _Window:
    """Decoded text of a binary stream, kept from `pos` on, with the line and column of any
    position in it (for error messages) although the text before it is gone."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.col = 1, 0  # of buf[0]: 1-based line, 0-based column
        self.bytes_in, self.newlines_in, self.first = 0, 0, True

    def more(self, size: int = CHUNK) -> None:
        """Drop the text before pos, then append at least one more chunk (or reach EOF)."""
        self._drop()
        data = self.fh.read(size)
        if self.first:
            if _utf16_bom(data):
                raise JsonStreamError(":1: UTF-16 text (byte-order mark); save the file as UTF-8")
            data = data[3:] if data.startswith(codecs.BOM_UTF8) else data
            self.first = False
        pending = self.decoder.getstate()[0]
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as err:
            line = self.newlines_in + (pending + data)[: err.start].count(b"\n") + 1
            raise JsonStreamError(f":{line}: not UTF-8 text (byte {self.bytes_in - len(pending) + err.start})") from None
        self.bytes_in += len(data)
        self.newlines_in += data.count(b"\n")
        self.buf += text
        self.eof = not data

    def _drop(self) -> None:
        gone = self.buf[: self.pos]
        newlines = gone.count("\n")
        if newlines:
            self.line += newlines
            self.col = len(gone) - gone.rfind("\n") - 1
        else:
            self.col += len(gone)
        self.buf, self.pos = self.buf[self.pos :], 0

    def where(self, p: int) -> tuple[int, int]:
        """(line, 1-based column) of buf[p]."""
        before = self.buf[:p]
        newlines = before.count("\n")
        if newlines:
            return self.line + newlines, p - before.rfind("\n")
        return self.line, self.col + p + 1


class _Parser:
    def __init__(self, fh: BinaryIO):
        self.w = _Window(fh)
        self.decoder = json.JSONDecoder()

    def error(self, msg: str, p: int | None = None) -> JsonStreamError:
        line, col = self.w.where(self.w.pos if p is None else p)
        return JsonStreamError(f":{line}: invalid JSON: {msg} (column {col})")

    def peek(self) -> str:
        """The next character that is not whitespace, consumed up to it; '' at the end."""
        w = self.w
        while True:
            found = NOT_WHITESPACE.search(w.buf, w.pos)
            if found:
                w.pos = found.start()
                return w.buf[w.pos]
            w.pos = len(w.buf)
            if w.eof:
                return ""
            w.more()

    def value(self) -> Any:
        """One JSON value starting at pos, reading on while it may be cut by the window's end."""
        w, size = self.w, CHUNK
        while True:
            try:
                obj, end = self.decoder.raw_decode(w.buf, w.pos)
            except json.JSONDecodeError as err:
                if not w.eof and (len(w.buf) - err.pos < SLACK or err.msg.startswith("Unterminated string")):
                    w.more(size)
                    size *= 2
                    continue
                raise self.error(err.msg, err.pos) from None
            except (ValueError, RecursionError) as err:  # 5000-digit numbers, 100k-deep nesting
                line, _ = w.where(w.pos)
                raise JsonStreamError(f":{line}: unreadable JSON: {str(err).splitlines()[0][:120]}") from None
            if end == len(w.buf) and not w.eof:  # a number may go on in the next chunk
                w.more(size)
                continue
            w.pos = end
            return obj

    def _opens_empty(self, close: str) -> bool:
        """Steps past the '[' or '{' at pos; True (and past `close` too) when it is empty."""
        self.w.pos += 1
        if self.peek() == close:
            self.w.pos += 1
            return True
        return False

    def _another(self, close: str) -> bool:
        """After an element or member: True past the ',' before the next, False past `close`."""
        c = self.peek()
        self.w.pos += 1
        if c == close:
            return False
        if c != ",":
            self.w.pos -= 1
            raise self.error("Expecting ',' delimiter")
        return True

    def array(self) -> Iterator[Any]:
        """The elements of the array whose '[' is at pos, one at a time."""
        if self._opens_empty("]"):
            return
        while True:
            if self.peek() == "":
                raise self.error("Expecting value")
            yield self.value()
            if not self._another("]"):
                return

    def members(self) -> Iterator[tuple[str, str]]:
        """Each key of the object whose '{' is at pos, left with pos at its value's first character
        (the caller reads the value); ends after the closing '}'."""
        if self._opens_empty("}"):
            return
        while True:
            if self.peek() != '"':
                raise self.error("Expecting property name enclosed in double quotes")
            key = self.value()
            if self.peek() != ":":
                raise self.error("Expecting ':' delimiter")
            self.w.pos += 1
            if self.peek() == "":
                raise self.error("Expecting value")
            yield key, self.w.buf[self.w.pos]
            if not self._another("}"):
                return

    def end(self) -> bool:
        """True at the end of the input (only whitespace left)."""
        return self.peek() == ""


def records(fh: BinaryIO) -> Iterator[tuple[str, Any]]:
    """(location suffix, record) for each record of the document: `[i]` in an array, `[label]` in
    a pandas index/columns layout. Raises JsonLinesInstead before yielding anything when the text
    is one object after another (JSON Lines)."""
    p = _Parser(fh)
    c = p.peek()
    if c == "[":
        yield from ((f"[{i}]", rec) for i, rec in enumerate(p.array()))
    elif c == "{":
        yield from _object_records(p)
    elif c == "":
        raise p.error("Expecting value")
    else:
        p.value()
        raise JsonStreamError(": expected a JSON array of records (or use .jsonl)")
    if not p.end():
        raise p.error("Extra data")


def _object_records(p: _Parser) -> Iterator[tuple[str, Any]]:
    """A top-level object: records streamed from its wrapper key's array, or (buffered) one record
    or a pandas layout."""
    fields: dict[str, Any] = {}
    streamed = False
    for key, first in p.members():
        if first == "[" and key in WRAPPER_KEYS and not streamed:
            streamed = True
            columns = fields.get("columns") if key == "data" else None  # pandas orient="split"
            for i, rec in enumerate(p.array()):
                yield f"[{i}]", _split_row(columns, rec)
        else:
            fields[key] = p.value()
    if streamed:
        return
    if not p.end():  # one object, then more: JSON Lines (nothing was yielded yet)
        raise JsonLinesInstead()
    yield from _buffered_records(fields)


def _split_row(columns: Any, row: Any) -> Any:
    """pandas orient="split" rows are lists in the order of "columns"."""
    if isinstance(columns, list) and isinstance(row, list) and len(row) == len(columns):
        return dict(zip(columns, row))
    return row


def _labels(keys: Any) -> bool:
    """pandas' default row labels: 0, 1, 2, ... written as strings."""
    keys = list(keys)
    return bool(keys) and all(isinstance(k, str) and k.isdigit() for k in keys)


def _buffered_records(fields: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    values = list(fields.values())
    if len(fields) == 1:
        key, value = next(iter(fields.items()))
        # {"train": [{...}, ...]} wraps records; {"conversations": [...]} is one record
        if key not in RECORD_LIST_FIELDS and isinstance(value, list) and any(isinstance(v, dict) for v in value):
            yield from ((f"[{i}]", rec) for i, rec in enumerate(value))
            return
    if values and all(isinstance(v, dict) for v in values):
        if _labels(fields):  # pandas orient="index": {"0": {record}, "1": {record}}
            yield from ((f"[{label}]", rec) for label, rec in fields.items())
            return
        rows = list(values[0])
        if _labels(rows) and all(list(v) == rows for v in values):  # orient="columns": {"col": {"0": v}}
            yield from ((f"[{r}]", {col: fields[col][r] for col in fields}) for r in rows)
            return
    yield "[0]", fields  # a single record
