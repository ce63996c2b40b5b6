"""The chat loop: a line in, the answer streamed out, the exchange kept for the next turn.

Lines come from a terminal (with the prompt "> ") or from a pipe (each line echoed after "> ", so
the output reads as a transcript). /reset forgets the conversation; /exit, the end of the input
and Ctrl-C end the session, status 0: leaving is not an error. Turn n (from 0, counted again
after /reset) samples with seed generate.seed + n, so the same lines give the same transcript.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

from .backends import Backend
from .history import History, TooLong

COMMANDS = {"/reset": "forget the conversation", "/exit": "end the session (so do Ctrl-D and Ctrl-C)"}


@dataclass
class Output:
    """Where the session writes: answer text (pieces, as they come) and notes (to the side)."""

    text: Callable[[str], None]
    note: Callable[[str], None]


def read_lines(stream: TextIO, interactive: bool) -> Iterator[str]:
    """The user's lines: input() with its prompt on a terminal, else the stream's lines."""
    if interactive:
        while True:
            try:
                yield input("> ")
            except EOFError:
                return
    for line in stream:
        yield line.rstrip("\n")


def chat(backend: Backend, history: History, max_new_tokens: int, seed: int, lines: Iterator[str], out: Output,
         echo: bool) -> int:
    """Run the conversation until /exit, the end of `lines` or Ctrl-C; returns the turns answered."""
    answered = turn = 0
    out.note(f"chat: {', '.join(f'{k} {v}' for k, v in COMMANDS.items())}; context {backend.context} tokens")
    try:
        for line in lines:
            message = line.strip()
            if echo and message:
                out.text(f"> {message}\n")
            if not message:
                continue
            if message == "/exit":
                break
            if message == "/reset":
                history.reset()
                turn = 0
                out.note("(conversation cleared)")
                continue
            if message in ("/help", "/?"):
                out.note(", ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
                continue
            try:
                text, dropped = history.fit(message, backend.count, backend.context, max_new_tokens)
            except TooLong as exc:
                out.note(f"(not sent: {exc})")
                continue
            if dropped:
                out.note(f"(the conversation no longer fits the model's {backend.context}-token context: "
                         f"dropped the oldest {dropped} exchange{'s' if dropped > 1 else ''})")
            answer = backend.answer(text, seed + turn, out.text)
            out.text("\n")
            history.add(message, answer)
            answered += 1
            turn += 1
    except KeyboardInterrupt:
        out.text("\n")
    return answered
