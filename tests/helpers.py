"""Plain helpers the tests import (`from helpers import ...`). They live outside conftest.py
because two conftest modules (tests/ and tests/faults/) cannot both be imported as `conftest`."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lima_rows(n: int, multi_every: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        conv = [f"What is {i} plus {i}?", f"TL;DR: It is {2 * i}.\n\nDetails:\n- {i} + {i} = {2 * i}\n- Addition"]
        if multi_every and i % multi_every == 0:
            conv += ["And times two?", f"TL;DR: Also {2 * i}.\n\nDetails:\n- Same thing\n- Doubling"]
        rows.append({"conversations": conv, "source": "math"})
    return rows
