"""The lima_house_style task's documents and scores (lm-eval loads this file by path, from the
task YAML's `!function utils.<name>`; it is not imported as part of sft_pipeline)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TEST = Path(__file__).resolve().parent.parent / "bundled" / "lima_house_style" / "test.jsonl"


def test_split(**_: Any) -> Any:
    """The test split as a DatasetDict, read from the file next to the package: no hub, no
    datasets cache, so HF_DATASETS_OFFLINE=1 changes nothing. (lm-eval passes the task's metadata
    as keyword arguments; none are needed.)"""
    import datasets

    rows = [json.loads(line) for line in TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(
        [{"question": r["conversations"][0], "answer": r["conversations"][1], "source": r.get("source", "")}
         for r in rows])})


def question(doc: dict[str, Any]) -> str:
    return doc["question"]


def answer(doc: dict[str, Any]) -> str:
    return doc["answer"]


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, tuple[float, int]]:
    (loglikelihood, _is_greedy), = results
    words = len(re.split(r"\s+", doc["answer"].strip()))
    return {"bits_per_byte": (loglikelihood, len(doc["answer"].encode("utf-8"))),
            "word_perplexity": (loglikelihood, words)}
