"""Record shapes -> conversations, or a named reason the record cannot be used.

Every shape becomes the same normalized form, a list of {"role", "content"} turns that
alternate user/assistant (after an optional leading system turn) and end on the assistant.
A record that cannot be made into that is never dropped silently: the caller counts it
under the reason returned here.

Tool calls (OpenAI-style chat data, `messages` shape) extend the form: an assistant turn may
carry "tool_calls" ([{"id", "name", "arguments"}], arguments a JSON object as text), and is
then followed by one or more "tool" turns (the results, with "tool_call_id"/"name" when the
source gives them) before the next assistant turn. Whether the model's template can render
them is the template stage's question (data/tools.py); here they are only kept intact.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from ..errors import PipelineError

Message = dict[str, Any]
Result = tuple[list[Message] | None, str | None]

FORMATS = ("lima", "deeplake_lima", "alpaca", "messages", "sharegpt", "prompt_completion")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant", "tool")


class FormatError(PipelineError, ValueError):
    """The records' shape cannot be told from their columns; the message lists the known shapes."""


def detect_format(columns: Iterable[str], first: dict[str, Any] | None = None) -> str:
    """The shape from the column names (and, for `conversations`, the first record's turns:
    strings are LIMA, {from, value} objects are ShareGPT)."""
    cols = set(columns)
    if "conversations" in cols:
        turns = (first or {}).get("conversations")
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return "sharegpt"
        return "lima"
    if "messages" in cols:
        return "messages"
    if {"question", "answer"} <= cols:
        return "deeplake_lima"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    raise FormatError(
        f"cannot tell the record shape from columns {sorted(cols)}; expected one of "
        "conversations (LIMA or ShareGPT), messages, question/answer (Deep Lake LIMA), "
        "instruction/output (alpaca), prompt/completion; or set data.format and data.columns"
    )


def _text(value: Any, field: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, f"missing_field:{field}"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"not_utf8:{field}"
    if not isinstance(value, str):
        return None, f"wrong_type:{field}"
    return value, None


def _texts(rec: dict[str, Any], *fields: str) -> tuple[list[str], str | None]:
    """Each field's text, or the reason the first missing or unreadable one drops the record."""
    texts = []
    for field in fields:
        text, why = _text(rec.get(field), field)
        if why:
            return [], why
        texts.append(text)
    return texts, None


def _exchange(prompt: str, answer: str) -> list[Message]:
    """One user turn and the assistant's answer: what the single-exchange formats become."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _next_roles(prev: Message | None) -> tuple[str, ...]:
    """The roles that may follow `prev`: a call waits for its result, a result for more
    results or the assistant's next turn."""
    if prev is None or (prev["role"] == "assistant" and not prev.get("tool_calls")):
        return ("user",)
    if prev["role"] == "user":
        return ("assistant",)
    if prev["role"] == "assistant":
        return ("tool",)
    return ("tool", "assistant")


def check_turns(messages: list[Message]) -> str | None:
    """The rules every normalized conversation obeys; the first broken one is the reason.
    A tool result may be empty (a function that returns nothing); an assistant turn may be,
    when it is a tool call."""
    if not messages:
        return "empty_conversation"
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body:
        return "empty_conversation"
    prev = None
    for msg in body:
        if msg["role"] not in ROLES:
            return "unknown_role"
        if msg["role"] not in _next_roles(prev):
            return "roles_out_of_order"
        if not msg["content"].strip() and msg["role"] != "tool" and not msg.get("tool_calls"):
            return "empty_turn"
        prev = msg
    if body[-1]["role"] == "tool":
        return "ends_on_tool"
    if body[-1]["role"] != "assistant":
        return "ends_on_user"
    return None


def from_lima(rec: dict[str, Any]) -> Result:
    turns = rec.get("conversations")
    if turns is None:
        return None, "missing_field:conversations"
    if not isinstance(turns, (list, tuple)):
        return None, "wrong_type:conversations"
    messages = []
    for i, turn in enumerate(turns):
        text, why = _text(turn, "conversations")
        if why:
            return None, why
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages, None


def from_deeplake_lima(rec: dict[str, Any]) -> Result:
    texts, why = _texts(rec, "question", "answer")
    return (None, why) if why else (_exchange(*texts), None)


def from_alpaca(rec: dict[str, Any]) -> Result:
    texts, why = _texts(rec, "instruction", "output")
    if why:
        return None, why
    instruction, output = texts
    extra = rec.get("input") or ""
    if not isinstance(extra, str):
        return None, "wrong_type:input"
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _exchange(prompt, output), None


def _role_turns(rec: dict[str, Any], field: str, role_key: str, text_key: str, roles: dict[str, str]) -> Result:
    """A list of turn objects -> messages; `roles` maps the source's role names to ours."""
    turns = rec.get(field)
    if turns is None:
        return None, f"missing_field:{field}"
    if not isinstance(turns, (list, tuple)):
        return None, f"wrong_type:{field}"
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None, f"wrong_type:{field}"
        texts, why = _texts(turn, role_key, text_key)
        if why:
            return None, why
        role, text = texts
        if role not in roles:
            return None, "unknown_role"
        messages.append({"role": roles[role], "content": text})
    return messages, None


def _tool_call(call: Any) -> dict[str, Any] | None:
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


def _tool_calls(value: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None, None
    if not isinstance(value, (list, tuple)):
        return None, "bad_tool_call"
    calls = [_tool_call(c) for c in value]
    if any(c is None for c in calls):
        return None, "bad_tool_call"
    return calls, None  # type: ignore[return-value]


def _content(turn: dict[str, Any], role: str, calls: bool) -> tuple[str | None, str | None]:
    """A turn's text. A tool call's own text may be absent; a tool result given as JSON (an
    object or list, as some agent logs store it) is kept as that JSON's text."""
    value = turn.get("content")
    if value is None and calls:
        return "", None
    if role == "tool" and isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False), None
    return _text(value, "content")


def _message(turn: Any) -> Result:
    """One `messages` turn -> a normalized one; extra keys (a user's `name`) are dropped."""
    if not isinstance(turn, dict):
        return None, "wrong_type:messages"
    role, why = _text(turn.get("role"), "role")
    if why:
        return None, why
    calls, why = _tool_calls(turn.get("tool_calls")) if role == "assistant" else (None, None)
    if why:
        return None, why
    text, why = _content(turn, role, calls is not None)
    if why:
        return None, why
    if role not in ROLES:
        return None, "unknown_role"
    msg: Message = {"role": role, "content": text}
    if calls:
        msg["tool_calls"] = calls
    if role == "tool":
        msg.update({k: turn[k] for k in ("tool_call_id", "name") if isinstance(turn.get(k), str)})
    return [msg], None


def from_messages(rec: dict[str, Any]) -> Result:
    turns = rec.get("messages")
    if turns is None:
        return None, "missing_field:messages"
    if not isinstance(turns, (list, tuple)):
        return None, "wrong_type:messages"
    messages: list[Message] = []
    for turn in turns:
        msg, why = _message(turn)
        if why:
            return None, why
        messages += msg or []
    return messages, None


def record_tools(rec: Any, columns: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """A record's tool definitions ("tools": a list of OpenAI function schemas, or that list
    as JSON text, as many agent datasets store it) -> the list as JSON text, or None when
    there are none; a value that is not such a list is the reason `bad_tools`."""
    if not isinstance(rec, dict):
        return None, None
    value = rename_columns(rec, columns or {}).get("tools")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except ValueError:
            return None, "bad_tools"
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None, None
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, dict) for t in value):
        return None, "bad_tools"
    return json.dumps(list(value), ensure_ascii=False), None


def from_sharegpt(rec: dict[str, Any]) -> Result:
    return _role_turns(rec, "conversations", "from", "value", SHAREGPT_ROLES)


def from_prompt_completion(rec: dict[str, Any]) -> Result:
    """TRL's prompt/completion pairs: two strings, or two lists of role/content messages."""
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        return from_messages({"messages": [*prompt, *completion]})
    texts, why = _texts(rec, "prompt", "completion")
    return (None, why) if why else (_exchange(*texts), None)


CONVERTERS: dict[str, Callable[[dict[str, Any]], Result]] = {
    "lima": from_lima,
    "deeplake_lima": from_deeplake_lima,
    "alpaca": from_alpaca,
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "prompt_completion": from_prompt_completion,
}


def rename_columns(rec: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """data.columns maps the names a shape expects to the source's own, e.g. {question: prompt_text}."""
    if not columns:
        return rec
    out = dict(rec)
    for expected, actual in columns.items():
        if actual in rec:
            out[expected] = out.pop(actual) if actual != expected else rec[actual]
    return out


def to_conversation(rec: Any, fmt: str, columns: dict[str, str] | None = None) -> Result:
    """One record -> (messages, None) or (None, reason)."""
    if not isinstance(rec, dict):
        return None, "not_a_mapping"
    rec = rename_columns(rec, columns or {})
    messages, why = CONVERTERS[fmt](rec)
    if why:
        return None, why
    assert messages is not None
    why = check_turns(messages)
    return (None, why) if why else (messages, None)
