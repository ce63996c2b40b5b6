"""One load row -> one template row (text, assistant spans, prompt, ...), or the named reason
it cannot be one.

The reasons are the template's, so they are found here and not in `load`: a tool call the
template cannot render (data/tools.py), reasoning it cannot render under `template.reasoning:
keep` (data/reasoning.py), and control text the recipe drops or that cannot be tokenized as
text (data/control.py). The template stage counts them as `load` counts its own.

An assistant turn that load marked `train: false` (a per-turn weight of 0) is rendered as
context and its span left out, so pack trains none of its tokens (data/turn_weights.py).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..config import TemplateConfig
from . import control, reasoning, tools
from .prompts import content_spans, render_sample


@dataclass(frozen=True)
class Context:
    """What rendering every row of a run needs, worked out once."""

    cfg: TemplateConfig
    tokenizer: Any
    support: tools.ToolSupport
    rx: re.Pattern | None
    reasoning_key: str | None = None  # the key the chat template renders reasoning under, if any

    @classmethod
    def build(cls, cfg: TemplateConfig, tokenizer: Any) -> "Context":
        chat = cfg.kind == "chat"
        support = tools.probe(tokenizer) if chat else tools.NONE
        return cls(cfg, tokenizer, support, control.pattern(tokenizer), reasoning.probe(tokenizer) if chat else None)


def _last(messages: list[dict[str, Any]], role: str) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == role), "")


def _control_reason(in_content: int, in_structured: int, mode: str) -> str | None:
    if in_content + in_structured and mode == "drop":
        return control.CONTROL_TEXT
    if in_structured and mode == "text":
        return control.UNPLACED
    return None


def _weights(messages: list[dict[str, Any]]) -> list[bool]:
    """Whether each assistant turn is trained; the `train` mark taken off every turn (it is
    this pipeline's, not the template's)."""
    return [m.pop("train", None) is not False for m in messages if m["role"] == "assistant"]


def make_row(rec: dict[str, Any], ctx: Context,
             notes: Counter[str] | None = None) -> tuple[dict[str, Any] | None, str | None, int]:
    """(the template row for a load row, or None and the reason), and how many of its fields
    hold control text (counted whether the row is kept or not). `notes` gains, for a kept row,
    its untrained turns and where its reasoning went ("reasoning:native", ...)."""
    messages = [tools.clean(m) for m in rec["messages"]]
    trained = _weights(messages)
    defined = tools.parse_tools(rec.get("tools"))
    key = ctx.reasoning_key if ctx.cfg.kind == "chat" else None
    messages, placed, why_reasoning = reasoning.place(messages, ctx.cfg.reasoning, key)
    contents, structured = control.fields(messages, rec.get("tools"))
    if placed.get("native"):  # the template writes it where no content marker can find it
        structured += [m[key] for m in messages if m.get(key)]
    in_content, in_structured = control.count(contents, ctx.rx), control.count(structured, ctx.rx)
    n = in_content + in_structured
    why = tools.drop_reason(messages, defined, ctx.support) or why_reasoning or _control_reason(
        in_content, in_structured, ctx.cfg.control_text)
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
    if not all(trained):
        assert len(spans) == len(trained)
        spans = [s for s, t in zip(spans, trained) if t]
    if notes is not None:
        notes.update({f"reasoning:{k}": v for k, v in placed.items()})
        if placed.get("native"):
            notes["reasoning:left_out_by_template"] += reasoning.left_out(messages, key, text)  # type: ignore[arg-type]
        if not all(trained):
            notes["untrained_turns"] += trained.count(False)
            notes["records_with_untrained_turns"] += 1
    return {"text": text, "spans": [list(s) for s in spans], "prompt": prompt,
            "reference": _last(messages, "assistant"), "question": _last(messages, "user"),
            "source": rec["source"], "content_spans": [list(s) for s in where], "control_fields": n}, None, n
