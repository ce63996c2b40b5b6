"""The fault-injection suite (`make test-faults`, marker `faults`): crash, lock, disk-full and
read-only scenarios end to end on the bundled model. They take minutes, so they run only when
asked for with `-m faults`; the table of what each scenario cost is printed at the end."""

from __future__ import annotations

import pytest

ROWS: list[tuple[str, str, str, str]] = []
HEADER = ("scenario", "runs", "data lost", "result")


def pytest_collection_modifyitems(config, items):
    if "faults" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="fault-injection scenario: run with -m faults (make test-faults)")
    for item in items:
        if "faults" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fault_table():
    """Scenarios add (scenario, runs, data lost, result) rows; printed after the run."""
    return ROWS


def format_table(rows) -> list[str]:
    rows = [HEADER, *rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADER))]

    def line(r):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows[1:])]


def pytest_terminal_summary(terminalreporter):
    if ROWS:
        terminalreporter.section("faults: what each crash cost")
        for text in format_table(ROWS):
            terminalreporter.write_line(text)
