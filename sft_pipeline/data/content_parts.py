"""Content given as a list of parts, as the OpenAI and HF chat formats write multimodal turns:
`[{"type": "text", "text": "..."}, {"type": "image_url", ...}]` (some tools key the text as
`value`). This pipeline trains on text, so the text parts are joined and every other part is
dropped, counted by its type: a turn never loses a part without a count, and a turn whose
parts were all images ends up empty and is dropped as `empty_turn` by the usual rule.

Text parts are joined with nothing between them: that is what the chat templates that read
parts (Llama 3.2 Vision, Qwen2-VL, ...) render, so the text trained on is the text the model
is shown at inference. Reasoning parts (`{"type": "thinking", "thinking": ...}`, Anthropic's
shape; `reasoning`) are returned apart: they are never merged into the answer (data/reasoning.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEXT_TYPES = ("text", "input_text", "output_text")
REASONING_TYPES = ("reasoning", "thinking", "reasoning_text")
TEXT_KEYS = ("text", "value")


@dataclass
class Parts:
    """A parts list read: the joined text, the joined reasoning (None when there is none), and
    the type of every part dropped, in order."""

    text: str = ""
    reasoning: str | None = None
    dropped: list[str] = field(default_factory=list)


def is_parts(value: Any) -> bool:
    """A list (or tuple) content is a parts list; a string is plain text, as before."""
    return isinstance(value, (list, tuple))


def _part_text(part: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((part[k] for k in keys if part.get(k) is not None), None)


def read_parts(value: list[Any] | tuple[Any, ...]) -> tuple[Parts | None, str | None]:
    """(the parts read, None) or (None, the reason the turn cannot be read): a part that is
    neither an object nor a string, or a text part whose text is not a string, is
    `wrong_type:content` (the turn would otherwise be trained on a part of itself)."""
    texts: list[str] = []
    thoughts: list[str] = []
    out = Parts()
    for part in value:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            return None, "wrong_type:content"
        kind = part.get("type")
        if kind is None and _part_text(part, TEXT_KEYS) is not None:
            kind = "text"  # {"text": "..."} without a type, as some exports write it
        if kind in TEXT_TYPES:
            text = _part_text(part, TEXT_KEYS)
            if not isinstance(text, str):
                return None, "wrong_type:content"
            texts.append(text)
        elif kind in REASONING_TYPES:
            text = _part_text(part, (kind, *TEXT_KEYS))
            if not isinstance(text, str):
                return None, "wrong_type:reasoning"
            thoughts.append(text)
        else:
            out.dropped.append(kind if isinstance(kind, str) and kind else "untyped")
    out.text = "".join(texts)
    joined = "".join(thoughts)
    out.reasoning = joined if joined.strip() else None
    return out, None
