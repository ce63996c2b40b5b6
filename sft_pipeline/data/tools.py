"""Tool calls at the template stage: can the model's chat template render them, and the
messages in the form chat templates read.

Templates differ: a ChatML template written before tool calls renders a tool-call turn as an
empty assistant turn (the call is lost, the model would learn to answer with nothing), and
the seed and custom formats have no place for a call at all. No metadata says which template
can, so the template is asked: it renders a probe conversation, and a template whose text
shows the call's name and arguments and the tool's result renders tool calls. A record whose
tool parts the template cannot render is dropped under TOOL_CALLS or TOOL_DEFINITIONS, never
trained without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TOOL_CALLS = "tool_calls_unsupported"  # a tool call or result the template cannot render
TOOL_DEFINITIONS = "tool_definitions_unsupported"  # tool definitions the template cannot render

_NAME, _KEY, _VALUE, _RESULT = "probe_fn_q7x", "probe_key_q7x", "probe_value_q7x", "probe_result_q7x"
_DEFINED = "probe_defined_q7x"


@dataclass(frozen=True)
class ToolSupport:
    """What a template renders: tool calls with their results, and tool definitions."""

    calls: bool = False
    definitions: bool = False


NONE = ToolSupport()


def clean(message: dict[str, Any]) -> dict[str, Any]:
    """A turn read back from Arrow, without the null fields other turns use."""
    out = {k: v for k, v in message.items() if v is not None and k != "tool_calls"}
    if message.get("tool_calls"):
        out["tool_calls"] = [{k: v for k, v in c.items() if v is not None} for c in message["tool_calls"]]
    return out


def has_tool_parts(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """A normalized turn in the form transformers' chat templates read: calls wrapped as
    {"type": "function", "function": {"name", "arguments"}} with the arguments as a mapping
    (templates write them with `tojson`; a string there would be quoted twice)."""
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"type": "function", "function": {"name": c["name"], "arguments": json.loads(c["arguments"])},
             **({"id": c["id"]} if c.get("id") else {})}
            for c in message["tool_calls"]]
    return out


def _renders(tokenizer: Any, messages: list[dict[str, Any]], tools: list | None, wanted: tuple[str, ...]) -> bool:
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception:  # noqa: BLE001 (a template refusing the probe, however it refuses, cannot render it)
        return False
    return all(w in text for w in wanted)


def probe(tokenizer: Any) -> ToolSupport:
    """Render a conversation with one tool call, its result and an answer, and one with a tool
    definition, through the tokenizer's chat template, and look for them in the text."""
    call = {"type": "function", "function": {"name": _NAME, "arguments": {_KEY: _VALUE}}, "id": "call_0"}
    convo = [{"role": "user", "content": "Question?"},
             {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": _RESULT, "tool_call_id": "call_0", "name": _NAME},
             {"role": "assistant", "content": "Answer."}]
    definition = {"type": "function", "function": {"name": _DEFINED, "description": "Probe.",
                                                   "parameters": {"type": "object", "properties": {}}}}
    plain = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": "Answer."}]
    return ToolSupport(calls=_renders(tokenizer, convo, None, (_NAME, _KEY, _VALUE, _RESULT)),
                       definitions=_renders(tokenizer, plain, [definition], (_DEFINED,)))


def drop_reason(messages: list[dict[str, Any]], tools: list | None, support: ToolSupport) -> str | None:
    """Why a record cannot be rendered with this support, or None when it can."""
    if has_tool_parts(messages) and not support.calls:
        return TOOL_CALLS
    if tools and not support.definitions:
        return TOOL_DEFINITIONS
    return None


def parse_tools(tools: str | None) -> list | None:
    """A record's tool definitions (JSON text in the load stage's Arrow) as the list templates read."""
    return json.loads(tools) if tools else None
