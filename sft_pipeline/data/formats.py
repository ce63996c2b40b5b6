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

Other tools' conventions are read into the same form, each in its own module: content as a
list of parts (data/content_parts.py), LLaMA-Factory's `function_call`/`observation` ShareGPT
turns and alpaca `function_call` (data/tool_values.py), per-turn weights (data/turn_weights.py:
an untrained assistant turn carries `train: false`) and reasoning (data/reasoning.py: an
assistant turn carries `reasoning`). What a record loses on the way (a dropped image part) is
counted in `notes`, which the load stage adds to its stats for the records it keeps.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable, Iterable

from ..errors import PipelineError
from .content_parts import is_parts, read_parts
from .reasoning import turn_reasoning
from .tool_values import function_call, tool_calls
from .turn_weights import check_trained, turn_trains

Message = dict[str, Any]
Result = tuple[list[Message] | None, str | None]
Notes = Counter  # what kept records lost or carry: "parts_dropped:<type>", "untrained_turns", "reasoning_turns"

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system",
                  # LLaMA-Factory's tool convention: a call is the assistant's turn, its result the tool's
                  "function_call": "assistant", "observation": "tool"}
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


def _turn_list(rec: dict[str, Any], key: str) -> tuple[list[Any] | tuple[Any, ...], str | None]:
    """The record's turns under `key` (LIMA's and ShareGPT's conversations, messages), or the
    reason they cannot be read: absent, or not a list."""
    turns = rec.get(key)
    if turns is None:
        return (), f"missing_field:{key}"
    if not isinstance(turns, (list, tuple)):
        return (), f"wrong_type:{key}"
    return turns, None


def _read_turns(rec: dict[str, Any], key: str, read_turn: Callable[[Any, str, Notes], Result],
                notes: Notes) -> tuple[list[list[Message]], str | None]:
    """Each turn under `key` as `read_turn` normalizes it (a turn may give one or more messages,
    each turn's list kept apart for the shapes that join turns), or the first turn's reason."""
    turns, why = _turn_list(rec, key)
    if why:
        return [], why
    read: list[list[Message]] = []
    for i, turn in enumerate(turns):
        msg, why = read_turn(turn, f"{key}[{i}]", notes)
        if why:
            return [], why
        read.append(msg or [])
    return read, None


def from_lima(rec: dict[str, Any], notes: Notes) -> Result:
    turns, why = _turn_list(rec, "conversations")
    if why:
        return None, why
    messages = []
    for i, turn in enumerate(turns):
        text, why = _text(turn, "conversations")
        if why:
            return None, why
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages, None


def from_deeplake_lima(rec: dict[str, Any], notes: Notes) -> Result:
    texts, why = _texts(rec, "question", "answer")
    return (None, why) if why else (_exchange(*texts), None)


def from_alpaca(rec: dict[str, Any], notes: Notes) -> Result:
    """instruction (+ input) and output; with a `function_call` column (glaive-style tool data)
    the assistant's turn is that call, then `observation` (its result) and `output` (the answer
    after it); without an observation the call ends the record and `output` is its text."""
    if rec.get("function_call") not in (None, "", []):  # glaive-style exports write "" for no call
        return _alpaca_call(rec)
    texts, why = _texts(rec, "instruction", "output")
    if why:
        return None, why
    instruction, output = texts
    prompt, why = _alpaca_prompt(rec, instruction)
    return (None, why) if why else (_exchange(prompt, output), None)


def _alpaca_prompt(rec: dict[str, Any], instruction: str) -> tuple[str | None, str | None]:
    extra = rec.get("input") or ""
    if not isinstance(extra, str):
        return None, "wrong_type:input"
    return (f"{instruction}\n\n{extra}" if extra.strip() else instruction), None


def _alpaca_call(rec: dict[str, Any]) -> Result:
    instruction, why = _text(rec.get("instruction"), "instruction")
    if why:
        return None, why
    prompt, why = _alpaca_prompt(rec, instruction)
    if why:
        return None, why
    calls, why = function_call(rec["function_call"])
    if why:
        return None, why
    output = rec.get("output")
    if output is not None and not isinstance(output, str):
        return None, "wrong_type:output"
    observation = rec.get("observation")
    if observation is None:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output or "", "tool_calls": calls}], None
    if isinstance(observation, (dict, list)):
        observation = json.dumps(observation, ensure_ascii=False)
    if not isinstance(observation, str):
        return None, "wrong_type:observation"
    if output is None:
        return None, "missing_field:output"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": observation}, {"role": "assistant", "content": output}], None


def _content(turn: dict[str, Any], role: str, calls: bool, key: str, notes: Notes) -> tuple[str | None, str | None, str | None]:
    """A turn's text, and the reasoning its parts held. A tool call's own text may be absent; a
    tool result given as JSON (an object, as some agent logs store it) is kept as that JSON's
    text; a list is a parts list (data/content_parts.py), its dropped parts counted in `notes`."""
    value = turn.get(key)
    if value is None and calls:
        return "", None, None
    if role == "tool" and isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False), None, None
    if is_parts(value):
        if role == "tool" and not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in value):
            return json.dumps(value, ensure_ascii=False), None, None  # a result that is a JSON list, as before
        parts, why = read_parts(value)
        if why:
            return None, None, why
        assert parts is not None
        notes.update(f"parts_dropped:{t}" for t in parts.dropped)
        return parts.text, parts.reasoning, None
    text, why = _text(value, key)
    return text, None, why


def _extras(msg: Message, turn: dict[str, Any], from_parts: str | None, where: str, notes: Notes) -> str | None:
    """Reasoning and training weight from a source turn onto its normalized one."""
    thought, why = turn_reasoning(turn, msg["role"], from_parts)
    if why:
        return why
    trains, why = turn_trains(turn, where)
    if why:
        return why
    if thought is not None:
        msg["reasoning"] = thought
        notes["reasoning_turns"] += 1
    if not trains and msg["role"] == "assistant":
        msg["train"] = False
        notes["untrained_turns"] += 1
    return None


def _message(turn: Any, where: str, notes: Notes) -> Result:
    """One `messages` turn -> a normalized one; extra keys (a user's `name`) are dropped."""
    if not isinstance(turn, dict):
        return None, "wrong_type:messages"
    role, why = _text(turn.get("role"), "role")
    if why:
        return None, why
    calls, why = tool_calls(turn.get("tool_calls")) if role == "assistant" else (None, None)
    if why:
        return None, why
    text, thought, why = _content(turn, role, calls is not None, "content", notes)
    if why:
        return None, why
    if role not in ROLES:
        return None, "unknown_role"
    msg: Message = {"role": role, "content": text}
    if calls:
        msg["tool_calls"] = calls
    if role == "tool":
        msg.update({k: turn[k] for k in ("tool_call_id", "name") if isinstance(turn.get(k), str)})
    why = _extras(msg, turn, thought, where, notes)
    return (None, why) if why else ([msg], None)


def from_messages(rec: dict[str, Any], notes: Notes) -> Result:
    read, why = _read_turns(rec, "messages", _message, notes)
    return (None, why) if why else ([m for msgs in read for m in msgs], None)


def _wrapped(tool: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory writes a definition as the bare function schema ({"name", "description",
    "parameters"}); chat templates read OpenAI's {"type": "function", "function": {...}}."""
    if "name" in tool and "function" not in tool and "type" not in tool:
        return {"type": "function", "function": tool}
    return tool


def record_tools(rec: Any, columns: dict[str, str] | None = None,
                 wrap_bare: bool = False) -> tuple[str | None, str | None]:
    """A record's tool definitions ("tools": a list of OpenAI function schemas, or that list
    as JSON text, as many agent datasets store it) -> the list as JSON text, or None when
    there are none; a value that is not such a list is the reason `bad_tools`. `wrap_bare`
    (ShareGPT and alpaca records, LLaMA-Factory's shapes) wraps bare function schemas."""
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
    tools = [_wrapped(t) for t in value] if wrap_bare else list(value)
    return json.dumps(tools, ensure_ascii=False), None


def _sharegpt_turn(turn: Any, where: str, notes: Notes) -> Result:
    """One {from, value} turn -> a normalized one. `from: function_call` is the assistant's
    tool call (the value its {"name", "arguments"} JSON), `from: observation` the result."""
    if not isinstance(turn, dict):
        return None, "wrong_type:conversations"
    source_role, why = _text(turn.get("from"), "from")
    if why:
        return None, why
    role = SHAREGPT_ROLES.get(source_role, "")
    if source_role == "function_call":
        calls, why = function_call(turn.get("value"))
        if why:
            return None, why
        msg: Message = {"role": role, "content": "", "tool_calls": calls}
        thought = None
    else:
        text, thought, why = _content(turn, role, False, "value", notes)
        if why:
            return None, why
        if not role:
            return None, "unknown_role"
        msg = {"role": role, "content": text}
    why = _extras(msg, turn, thought, where, notes)
    return (None, why) if why else ([msg], None)


def _system_column(rec: dict[str, Any], messages: list[Message]) -> str | None:
    """LLaMA-Factory's ShareGPT keeps the system prompt in a `system` column, beside the turns."""
    system = rec.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return None
    if not isinstance(system, str):
        return "wrong_type:system"
    if messages and messages[0]["role"] == "system":
        return "roles_out_of_order"  # two system prompts: which one holds is not ours to guess
    messages.insert(0, {"role": "system", "content": system})
    return None


def from_sharegpt(rec: dict[str, Any], notes: Notes) -> Result:
    read, why = _read_turns(rec, "conversations", _sharegpt_turn, notes)
    if why:
        return None, why
    messages: list[Message] = []
    for msg in read:
        prev = messages[-1] if messages else None
        if msg[0].get("tool_calls") and prev and prev["role"] == "assistant" and not prev.get("tool_calls"):
            # the assistant's words, then its call, as two turns: one assistant turn that calls
            prev["tool_calls"] = msg[0]["tool_calls"]
            if msg[0].get("train") is False and prev.get("train") is not False:
                prev["train"] = False
            continue
        messages += msg
    why = _system_column(rec, messages)
    return (None, why) if why else (messages, None)


def from_prompt_completion(rec: dict[str, Any], notes: Notes) -> Result:
    """TRL's prompt/completion pairs: two strings, or two lists of role/content messages."""
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        return from_messages({"messages": [*prompt, *completion]}, notes)
    texts, why = _texts(rec, "prompt", "completion")
    return (None, why) if why else (_exchange(*texts), None)


# the record shapes data.format names (config.FORMAT lists the same ones, and "auto")
CONVERTERS: dict[str, Callable[[dict[str, Any], Notes], Result]] = {
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


def to_conversation(rec: Any, fmt: str, columns: dict[str, str] | None = None, notes: Notes | None = None) -> Result:
    """One record -> (messages, None) or (None, reason). `notes` (when given) gains what the
    record lost on the way and what its turns carry, whether it is kept or not: the caller
    decides what to count (load counts the kept records' notes)."""
    if not isinstance(rec, dict):
        return None, "not_a_mapping"
    rec = rename_columns(rec, columns or {})
    messages, why = CONVERTERS[fmt](rec, Counter() if notes is None else notes)
    if why:
        return None, why
    assert messages is not None
    why = check_turns(messages) or check_trained(messages)
    return (None, why) if why else (messages, None)
