"""Seeded synthetic LIMA-style conversations for the benchmarks (bench/data_throughput.py,
bench/train_throughput.py): word salad of a fixed vocabulary, with the lengths each bench asks
for, so both measure on data anyone can regenerate."""

from __future__ import annotations

import random

WORDS = ("the a model data water energy market light cell planet music garden python memory budget "
         "travel health history learn system value change because with from into over under about "
         "river mountain bread coffee engine signal number theory practice simple careful quickly").split()


def conversations(n: int, seed: int = 0, prompt: tuple[int, int] = (5, 40), answer_sentence: tuple[int, int] = (5, 20),
                  answer_sentences: tuple[int, int] = (1, 12), multi_turn: float = 0.0) -> list[dict]:
    """`n` records {"conversations": [...], "source": ...}: a prompt of `prompt` words, an answer of
    `answer_sentences` sentences of `answer_sentence` words each, and with probability
    `multi_turn` a second exchange."""
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    rows = []
    for i in range(n):
        turns = [sentence(*prompt), " ".join(sentence(*answer_sentence) for _ in range(rng.randint(*answer_sentences)))]
        if multi_turn and rng.random() < multi_turn:
            turns += [sentence(5, 20), sentence(10, 60)]
        rows.append({"conversations": turns, "source": f"synthetic-{i % 17}"})
    return rows
