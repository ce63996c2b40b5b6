"""CSV and TSV records, read as a stream, the delimiter detected from the header or set in the recipe.

Spreadsheets export "CSV" with the locale's list separator (`;` across most of Europe), as tab
separated text, or with a `sep=;` first line for Excel; a comma reader then sees one field per
header and stops at the first row with a comma in its text, far from the cause. Here:

- `data.csv_delimiter` set (`,` `;` tab `|`): that one, for every file;
- else a `sep=X` first line (Excel's) says it, and is skipped;
- else a `.tsv` file whose header has a tab is tab separated;
- else the header decides: of `,` `;` tab `|`, the one that splits the header line into the most
  fields, csv.Sniffer on the first lines choosing between delimiters that split it equally; a
  header that no candidate splits is one column (`,`).

csv.Sniffer alone is not used: it guesses from the text around quote characters and from how
often characters repeat, so the answers' own text can outvote a header that a person reads at a
glance (tests/data/test_csv_read.py has one: single-quoted words between semicolons). Header names
are stripped of surrounding spaces (`question, answer`); a name used twice stops the read.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from .compression import open_binary
from .source_errors import SourceError

DELIMITERS = (",", ";", "\t", "|")
HEAD_LINES = 50
LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # a CR not followed by LF: a line end of its own
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
EXCEL_SEP = re.compile(r"sep=([^\r\n\"])\r?\n?")


def _lines(path: Path) -> Iterator[str]:
    """Physical lines as text with their endings kept (LF, CRLF, or a lone CR, as classic-Mac
    exports end lines): what csv.reader expects of a file opened with newline=''. A byte that
    is not UTF-8 stops the read at its line (found by a second, line-by-line pass)."""
    with open_binary(path) as fh:
        if fh.peek(2)[:2] in UTF16_BOMS:
            raise SourceError(f"{path}:1: UTF-16 text (byte-order mark); save the file as UTF-8")
        with io.TextIOWrapper(fh, encoding="utf-8-sig", newline="") as text:
            try:
                yield from text
            except UnicodeDecodeError:
                raise _not_utf8(path) from None


def _not_utf8(path: Path) -> Exception:
    """The first line (counted as _lines counts them) holding a byte that is not UTF-8."""
    with open_binary(path) as fh:
        lineno = 0
        for raw in fh:
            for piece in LONE_CR.split(raw) if b"\r" in raw[:-1] else (raw,):
                lineno += 1 if piece else 0
                try:
                    piece.removeprefix(codecs.BOM_UTF8 if lineno == 1 else b"").decode("utf-8")
                except UnicodeDecodeError as err:
                    return SourceError(f"{path}:{lineno}: not UTF-8 text (byte {err.start})")
    return SourceError(f"{path}: not UTF-8 text")


def _fields(line: str, delimiter: str) -> int:
    try:
        return len(next(csv.reader([line], delimiter=delimiter), []))
    except csv.Error:
        return 1


def header_counts(head: list[str]) -> dict[str, int]:
    """How many fields the first non-blank line splits into with each candidate delimiter."""
    line = next((h for h in head if h.strip()), "")
    return {d: _fields(line, d) for d in DELIMITERS}


def detect_delimiter(head: list[str]) -> str:
    """The candidate that splits the header into the most fields; csv.Sniffer on the head when
    several split it equally; ',' when none splits it (a single column)."""
    counts = header_counts(head)
    most = max(counts.values())
    tied = [d for d in DELIMITERS if counts[d] == most]
    if most == 1 or len(tied) == 1:
        return tied[0]
    try:
        found = csv.Sniffer().sniff("".join(head), delimiters="".join(tied)).delimiter
    except csv.Error:
        return tied[0]
    return found if found in tied else tied[0]


def _choose(setting: str, excel: str | None, tsv_with_tabs: bool, head: list[str]) -> str:
    """The recipe's delimiter, else Excel's sep= line, else tab for a .tsv, else the header's."""
    if setting != "auto":
        return setting
    if excel:
        return excel
    return "\t" if tsv_with_tabs else detect_delimiter(head)


def _ragged(path: Path, lineno: int, n: int, header: list[str], delimiter: str, counts: dict[str, int]) -> Exception:
    """The ragged-row stop, with the delimiter assumed and, when another splits the header into
    more fields, that one as the likely cause."""
    msg = f"{path}:{lineno}: {n} fields, header has {len(header)} with delimiter {delimiter!r}"
    alt = max((d for d in DELIMITERS if d != delimiter), key=lambda d: counts[d])
    if counts[alt] > len(header):
        msg += f"; the header splits into {counts[alt]} with {alt!r}: set data.csv_delimiter"
    return SourceError(msg)


def _header(path: Path, lineno: int, row: list[str], delimiter: str, counts: dict[str, int]) -> list[str]:
    """The column names; a header that is one field here but splits with another delimiter was
    read with the wrong one (every row would then be one field too, and the shape unknown)."""
    alt = max(DELIMITERS, key=lambda d: counts[d])
    if len(row) == 1 and counts[alt] > 1 and alt != delimiter:
        raise SourceError(f"{path}:{lineno}: the header is one field with delimiter {delimiter!r}; it splits into "
                     f"{counts[alt]} with {alt!r}: set data.csv_delimiter")
    names = [name.strip() for name in row]
    for i, name in enumerate(names):
        if name and name in names[:i]:
            raise SourceError(f"{path}:{lineno}: the header names {name!r} twice (columns {names.index(name) + 1} "
                         f"and {i + 1}): rename one")
    return names


def read_csv(path: Path, setting: str = "auto", tsv: bool = False) -> Iterator[tuple[str, Any]]:
    """(path:line, {header: field}) per row; blank lines are skipped, line numbers are physical
    (a row's last line, for a row with a quoted line break)."""
    csv.field_size_limit(sys.maxsize)  # the default 128 KiB limit rejects long answers
    lines = _lines(path)
    head = list(itertools.islice(lines, HEAD_LINES))
    skip = 0
    excel = EXCEL_SEP.fullmatch(head[0]) if head else None
    if excel:
        head, skip = head[1:], 1
    counts = header_counts(head)
    delimiter = _choose(setting, excel[1] if excel else None, tsv and counts["\t"] > 1, head)
    # strict: an unclosed quote is an error, not the rest of the file swallowed into one field
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter, strict=True)
    header: list[str] = []
    try:
        for row in reader:
            lineno = reader.line_num + skip
            if not row:
                continue
            if not header:
                header = _header(path, lineno, row, delimiter, counts)
                continue
            if len(row) != len(header):
                raise _ragged(path, lineno, len(row), header, delimiter, counts)
            yield f"{path}:{lineno}", dict(zip(header, row))
    except csv.Error as err:
        raise SourceError(f"{path}:{reader.line_num + skip}: invalid CSV: {err}") from None
