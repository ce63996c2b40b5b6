"""Tool calls as sources write their values -> the normalized call {"id", "name", "arguments"}
(arguments the JSON text of an object), or None when a value is not a usable call.

Two conventions: OpenAI's `tool_calls` on an assistant message, and the single `function_call`
value LLaMA-Factory writes as a turn of its own (ShareGPT `from: function_call`) or alpaca-style
data writes as a column: {"name", "arguments"} or a list of them, often as JSON text.
"""

from __future__ import annotations

import json
from typing import Any

BAD_CALL = "bad_tool_call"


def tool_call(call: Any) -> dict[str, Any] | None:
    """One OpenAI-style call ({"type": "function", "function": {"name", "arguments"}}, or the
    same without the "function" wrapper) -> {"id", "name", "arguments"}, arguments as JSON
    text of an object; None when it is not a usable call."""
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        return None
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        return None
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    call_id = call.get("id")
    return {"id": call_id if isinstance(call_id, str) else None, "name": fn["name"],
            "arguments": json.dumps(args, ensure_ascii=False)}


def tool_calls(value: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """A `tool_calls` list -> the calls (None when there are none), or the reason BAD_CALL."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None, None
    if not isinstance(value, (list, tuple)):
        return None, BAD_CALL
    calls = [tool_call(c) for c in value]
    if any(c is None for c in calls):
        return None, BAD_CALL
    return calls, None  # type: ignore[return-value]


def function_call(value: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """A `function_call` value (one {"name", "arguments"} or a list of them, or either as JSON
    text, as LLaMA-Factory's ShareGPT data and glaive-style alpaca data store it) -> the calls,
    or BAD_CALL. Unlike `tool_calls`, the value is the turn itself: an empty one is no call."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None, BAD_CALL
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        return None, BAD_CALL
    return tool_calls(value)
