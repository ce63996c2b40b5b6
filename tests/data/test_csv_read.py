"""CSV and TSV as spreadsheets export them (data/csv_read.py): the delimiter detected or set in the
recipe, Excel's `sep=` line, classic-Mac line ends, and ragged rows that say which delimiter was
assumed and which one the header suggests."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

from sft_pipeline.config import DataConfig, RecipeError, recipe_from_dict
from sft_pipeline.data.csv_read import detect_delimiter
from sft_pipeline.data.sources import SourceError, read_records
from sft_pipeline.stages.load import load_split

ROWS = [{"question": "q0, with a comma", "answer": "a0; with a semicolon"}, {"question": "q1", "answer": "a1 | pipe"}]


def write_csv(path: Path, delimiter: str, rows: list[dict] = ROWS, **kw) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["question", "answer"], delimiter=delimiter, **kw)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read(path, delimiter="auto"):
    return [rec for _, rec in read_records(str(path), "train", delimiter)]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_detected(tmp_path, delimiter):
    assert read(write_csv(tmp_path / "d.csv", delimiter)) == ROWS


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_set_in_the_recipe(tmp_path, delimiter):
    assert read(write_csv(tmp_path / "d.csv", delimiter), delimiter) == ROWS


def test_tsv_is_tab_separated_whatever_its_header(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("question\tanswer;with;semicolons\nq\ta\n", encoding="utf-8")
    assert read(path) == [{"question": "q", "answer;with;semicolons": "a"}]


def test_the_header_decides_not_the_answers(tmp_path):
    # csv.Sniffer alone answers ';' here: the answers' single-quoted words between semicolons
    # look like quoted fields to it. The header has one comma and no semicolon.
    head = "question,answer\nwhat did he say,He said ;'hi'; then ;'bye'; ok\nand then,;'x'; and ;'y';\n"
    assert csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter == ";"
    assert detect_delimiter(head.splitlines(keepends=True)) == ","
    path = tmp_path / "d.csv"
    path.write_text(head, encoding="utf-8")
    assert read(path)[0] == {"question": "what did he say", "answer": "He said ;'hi'; then ;'bye'; ok"}


def test_sniffer_breaks_a_tie_in_the_header(tmp_path):
    # "a;b,c;d" splits into 2 with ',' and with ';': the rows say ';'
    head = ["a;b,c;d\n", "1;2,3;4\n", "5;6,7;8\n"]
    assert detect_delimiter(head) == ";"
    assert detect_delimiter(["text\n", "one column, with commas\n"]) == ","  # nothing splits the header


def test_excel_sep_line_sets_the_delimiter_and_is_skipped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfsep=;\r\nquestion;answer\r\nq0, x;a0\r\nq1;a1, y\r\n")
    assert list(read_records(str(path), "train")) == [
        (f"{path}:3", {"question": "q0, x", "answer": "a0"}), (f"{path}:4", {"question": "q1", "answer": "a1, y"})]


def test_classic_mac_line_ends(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'question,answer\rq0,a0\r"two\rlines",a1\r')
    assert list(read_records(str(path), "train")) == [
        (f"{path}:2", {"question": "q0", "answer": "a0"}), (f"{path}:4", {"question": "two\rlines", "answer": "a1"})]


def test_semicolon_file_read_with_a_comma_says_so(tmp_path):
    """The issue's case: a `;` export read with ',' (set in the recipe, where detection finds ';')."""
    path = tmp_path / "d.csv"
    path.write_text("question;answer;source;id;lang;topic;level;date\n"
                    "q;an answer, with, commas, in, it, here, and, more;s;1;en;t;l;d\n", encoding="utf-8")
    assert read(path) == [{"question": "q", "answer": "an answer, with, commas, in, it, here, and, more", "source": "s",
                           "id": "1", "lang": "en", "topic": "t", "level": "l", "date": "d"}]
    with pytest.raises(SourceError) as info:
        read(path, ",")
    assert str(info.value) == (f"{path}:1: the header is one field with delimiter ','; it splits into 8 with ';': "
                               "set data.csv_delimiter")


def test_ragged_row_says_which_delimiter_it_assumed_and_which_it_suspects(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer;source;lang\nq0,a0;s;en\nq1, more,a1;s;en\n", encoding="utf-8")
    # auto: ';' splits the header into the most fields
    assert read(path) == [{"question,answer": "q0,a0", "source": "s", "lang": "en"},
                          {"question,answer": "q1, more,a1", "source": "s", "lang": "en"}]
    with pytest.raises(SourceError) as info:
        read(path, ",")
    assert str(info.value) == (f"{path}:3: 3 fields, header has 2 with delimiter ','; the header splits into 3 "
                               "with ';': set data.csv_delimiter")


def test_ragged_row_with_no_better_delimiter(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("question\tanswer\nq\ta\textra\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value) == f"{path}:2: 3 fields, header has 2 with delimiter '\\t'"


def test_header_names_are_stripped_and_must_differ(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question , answer,,\nq,a,,\n", encoding="utf-8")  # trailing empty columns are fine
    assert read(path) == [{"question": "q", "answer": "a", "": ""}]
    path.write_text("\nquestion,answer,Answer,answer\nq,a,b,c\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value) == f"{path}:2: the header names 'answer' twice (columns 2 and 4): rename one"


def test_utf16_export_stops_with_the_fix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("question\tanswer\r\nq\ta\r\n".encode("utf-16"))  # Excel's "Unicode Text"
    with pytest.raises(SourceError) as info:
        read(path)
    assert str(info.value) == f"{path}:1: UTF-16 text (byte-order mark); save the file as UTF-8"


# ---- the recipe key -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(",", ","), (";", ";"), ("\t", "\t"), ("tab", "\t"), ("\\t", "\t"),
                                             ("|", "|"), ("auto", "auto")])
def test_recipe_key_values(value, expected):
    assert DataConfig(csv_delimiter=value).csv_delimiter == expected


@pytest.mark.parametrize("value", [":", ", ", "", "comma"])
def test_recipe_key_refuses_others(value):
    with pytest.raises(RecipeError, match=r"^recipe: data\.csv_delimiter: "):
        recipe_from_dict({"data": {"csv_delimiter": value}})


def test_the_load_stage_reads_with_the_recipes_delimiter(tmp_path):
    from sft_pipeline.stages import load

    path = tmp_path / "d.csv"
    path.write_text("question,answer\nq0,a0 | a table\nq1,a1\n", encoding="utf-8")
    data = DataConfig(source=str(path), eval_split=None, csv_delimiter="|")
    with pytest.raises(SourceError, match=r":1: the header is one field with delimiter '\|'; it splits into 2 with ','"):
        load.produce(SimpleNamespace(recipe=SimpleNamespace(data=data)), tmp_path / "out")
    kept, stats = load_split(str(path), "train", "auto", None, csv_delimiter=",")
    assert stats["read"] == stats["kept"] == 2
