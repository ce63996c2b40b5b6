"""One load row -> one template row (text, assistant spans, prompt, ...), or the named reason
it cannot be one.

The reasons are the template's, so they are found here and not in `load`: a tool call the
template cannot render (data/tools.py), and control text the recipe drops or that cannot be
tokenized as text (data/control.py). The template stage counts them as `load` counts its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import TemplateConfig
from . import control, tools
from .prompts import content_spans, render_sample


@dataclass(frozen=True)
class Context:
    """What rendering every row of a run needs, worked out once."""

    cfg: TemplateConfig
    tokenizer: Any
    support: tools.ToolSupport
    rx: re.Pattern | None

    @classmethod
    def build(cls, cfg: TemplateConfig, tokenizer: Any) -> "Context":
        support = tools.probe(tokenizer) if cfg.kind == "chat" else tools.NONE
        return cls(cfg, tokenizer, support, control.pattern(tokenizer))


def _last(messages: list[dict[str, Any]], role: str) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == role), "")


def _control_reason(in_content: int, in_structured: int, mode: str) -> str | None:
    if in_content + in_structured and mode == "drop":
        return control.CONTROL_TEXT
    if in_structured and mode == "text":
        return control.UNPLACED
    return None


def make_row(rec: dict[str, Any], ctx: Context) -> tuple[dict[str, Any] | None, str | None, int]:
    """(the template row for a load row, or None and the reason), and how many of its fields
    hold control text (counted whether the row is kept or not)."""
    messages = [tools.clean(m) for m in rec["messages"]]
    defined = tools.parse_tools(rec.get("tools"))
    contents, structured = control.fields(messages, rec.get("tools"))
    in_content, in_structured = control.count(contents, ctx.rx), control.count(structured, ctx.rx)
    n = in_content + in_structured
    why = tools.drop_reason(messages, defined, ctx.support) or _control_reason(in_content, in_structured,
                                                                                ctx.cfg.control_text)
    if why:
        return None, why, n
    if ctx.cfg.kind == "chat":
        messages = [tools.chat_message(m) for m in messages]
    text, spans, prompt = render_sample(messages, ctx.cfg, ctx.tokenizer, defined)
    where: list[tuple[int, int]] | None = []
    if in_content and ctx.cfg.control_text == "text":
        where = content_spans(messages, ctx.cfg, text, ctx.tokenizer, defined)
        if where is None:
            return None, control.UNPLACED, n
    return {"text": text, "spans": [list(s) for s in spans], "prompt": prompt,
            "reference": _last(messages, "assistant"), "question": _last(messages, "user"),
            "source": rec["source"], "content_spans": [list(s) for s in where], "control_fields": n}, None, n
