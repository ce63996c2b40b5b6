"""tests/e2e holds the end-to-end runs on the bundled model: each test here is marked slow, so
`make test-fast` (-m "not slow") leaves the folder out and `make test` (what CI runs) keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by -m, so "not slow" sees the mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)
