"""Reasoning on assistant turns (a model's thinking before its answer): read at load, placed by
the template stage, never merged into the answer without the recipe saying so.

Sources write it as a field beside the content (`reasoning_content`: DeepSeek-R1 and Qwen3's
templates, OpenAI-compatible servers; `reasoning`; `thinking`: gpt-oss) or as a part of the
content (data/content_parts.py). The normalized turn keeps it as `reasoning`.

At the template stage `template.reasoning` decides:
- keep (default): the model's chat template renders it, under the key it reads (asked by a
  probe, as tool calls are: no metadata says). A template that has no place for reasoning, and
  the seed and custom formats, cannot: the record is dropped as REASONING_UNSUPPORTED rather
  than trained without its reasoning or with it pasted into the answer. A template that renders
  it on some turns only (Qwen3 shows the reasoning of the turns after the last user turn) is
  rendered as it is, and the turns it leaves out are counted.
- drop: the reasoning is removed, counted; the answer is trained alone.
- inline: written into the turn's content as `<think>\\n...\\n</think>\\n\\n` before the answer,
  on every template (the template's own place unused), and trained with the answer: a model
  taught to think before answering is the point of reasoning data.
"""

from __future__ import annotations

from typing import Any

FIELDS = ("reasoning_content", "reasoning", "thinking")  # as sources write it, first found wins
TEMPLATE_KEYS = ("reasoning_content", "thinking", "reasoning")  # what chat templates read, probed in order
REASONING_UNSUPPORTED = "reasoning_unsupported"
INLINE_OPEN, INLINE_CLOSE = "<think>\n", "\n</think>\n\n"
_PROBE = "probe_reasoning_q7x"


def turn_reasoning(turn: dict[str, Any], role: str, from_parts: str | None) -> tuple[str | None, str | None]:
    """(a turn's reasoning or None, the reason the record is dropped or None). A reasoning field
    must be text; on a turn other than the assistant's it is a mistake (no model writes a user's
    thinking), named rather than dropped quietly."""
    found = [from_parts] if from_parts is not None else []
    for key in FIELDS:
        value = turn.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return None, f"wrong_type:{key}"
        if value.strip():
            found.append(value)
            break
    if not found:
        return None, None
    if role != "assistant":
        return None, f"reasoning_on_{role}"
    return "\n\n".join(found), None


def has_reasoning(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("reasoning") for m in messages)


def probe(tokenizer: Any) -> str | None:
    """The message key under which the chat template renders an assistant turn's reasoning, or
    None when it renders it under none of TEMPLATE_KEYS."""
    for key in TEMPLATE_KEYS:
        convo = [{"role": "user", "content": "Question?"},
                 {"role": "assistant", "content": "Answer.", key: _PROBE}]
        try:
            text = tokenizer.apply_chat_template(convo, tokenize=False)
        except Exception:  # noqa: BLE001 (a template refusing the key, however it refuses, cannot render it)
            continue
        if _PROBE in text and "Answer." in text:
            return key
    return None


def place(messages: list[dict[str, Any]], mode: str, key: str | None) -> tuple[list[dict[str, Any]], dict[str, int], str | None]:
    """The turns as the template gets them (the internal `reasoning` key replaced by the
    template's own key, moved into the content, or removed), how many turns went each way,
    and the reason the record is dropped (keep, with no template key) or None."""
    n = sum(1 for m in messages if m.get("reasoning"))
    if not n:
        return messages, {}, None
    if mode == "keep" and key is None:
        return messages, {}, REASONING_UNSUPPORTED
    out = []
    for m in messages:
        m = dict(m)
        thought = m.pop("reasoning", None)
        if thought and mode == "keep":
            m[key] = thought  # type: ignore[index]
        elif thought and mode == "inline":
            m["content"] = f"{INLINE_OPEN}{thought}{INLINE_CLOSE}{m['content']}"
        out.append(m)
    return out, {{"keep": "native", "inline": "inlined", "drop": "dropped"}[mode]: n}, None


def left_out(messages: list[dict[str, Any]], key: str, text: str) -> int:
    """The turns whose reasoning the template did not write into the rendered text."""
    return sum(1 for m in messages if m.get(key) and m[key] not in text)
