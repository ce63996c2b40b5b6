"""A conversation's turns, rendered with the recipe's template, kept within the model's context.

The prompt of every turn is the whole conversation so far rendered by data/prompts.py, the
same function that rendered the training text: a model answers in chat as it was trained to,
whatever the template kind (chat, seed, custom). When the conversation no longer fits (prompt
plus the answer's max_new_tokens over the context), the oldest exchanges go first, and the
caller is told how many went.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import TemplateConfig
from ..data.prompts import render_prompt
from ..errors import PipelineError


class TooLong(PipelineError, ValueError):
    """The newest message alone does not fit the model's context: the message says by how much."""


@dataclass
class History:
    template: TemplateConfig
    tokenizer: Any  # renders kind chat (its chat template); None is fine for seed and custom
    turns: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.turns.clear()

    def prompt(self, message: str) -> str:
        """The text the model continues to answer `message` after the turns so far."""
        return render_prompt([*self.turns, {"role": "user", "content": message}], self.template, self.tokenizer)

    def fit(self, message: str, count: Callable[[str], int], context: int, answer_tokens: int) -> tuple[str, int]:
        """(the prompt for `message`, exchanges dropped from the oldest so that its tokens plus
        `answer_tokens` fit `context`). The dropped exchanges are gone from the history: a later
        turn would not fit them either. TooLong when the message alone does not fit."""
        dropped = 0
        while True:
            text = self.prompt(message)
            size = count(text)
            if size + answer_tokens <= context:
                return text, dropped
            if not self.turns:
                raise TooLong(f"this message is {size} tokens; with {answer_tokens} for the answer "
                              f"(generate.max_new_tokens) that is over the model's {context}-token context")
            del self.turns[:2]  # one exchange: the user's turn and the answer to it
            dropped += 1

    def add(self, message: str, answer: str) -> None:
        self.turns += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
