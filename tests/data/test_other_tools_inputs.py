"""A corpus of data as other tools write it, beside tests/data/test_bad_inputs.py and in its style:
content as parts, LLaMA-Factory's ShareGPT tool turns, alpaca function calls, per-turn
weights, reasoning. Every entry is a small file written into tmp_path with its exact kept
conversations, its dropped-by-reason counts, and what the kept records carry or lost (parts
dropped by type, untrained and reasoning turns: load's stats); or, for a value that cannot be
honoured, the one-line error naming the file, line and value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from sft_pipeline.data.sources import SourceError
from sft_pipeline.stages.load import load_split


@dataclass
class Stop:
    pattern: str  # a regex for the whole SourceError message


@dataclass
class Loads:
    kept: list[list[dict[str, Any]]] | int
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # parts_dropped, untrained_turns, reasoning_turns
    check: Callable[[list[dict[str, Any]]], None] | None = None


def U(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def A(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def S(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def H(value: Any, **extra: Any) -> dict[str, Any]:
    return {"from": "human", "value": value, **extra}


def G(value: Any, **extra: Any) -> dict[str, Any]:
    return {"from": "gpt", "value": value, **extra}


def text(t: str, key: str = "text") -> dict[str, str]:
    return {"type": "text", key: t}


def calls(*spec: tuple[str, str], content: str = "") -> dict[str, Any]:
    """A normalized tool-call turn: calls as (name, arguments JSON text), no ids."""
    return {"role": "assistant", "content": content,
            "tool_calls": [{"id": None, "name": n, "arguments": a} for n, a in spec]}


def result(t: str) -> dict[str, Any]:
    return {"role": "tool", "content": t}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}

CASES: list[Any] = []
KINDS: set[str] = set()


def case(kind: str, name: str, fmt: str = "auto"):
    def register(build):
        KINDS.add(kind)
        CASES.append(pytest.param(build, fmt, id=f"{kind}/{name}"))
        return build

    return register


# 1. content as a list of text parts -------------------------------------------------------------

@case("content_parts_text", "openai_hf_and_value_keys", fmt="messages")
def _(tmp):
    rows = [{"messages": [U([text("What is "), text("2+2?", "value")]), A([text("4")])]},
            {"messages": [U([{"text": "untyped "}, "and a bare string"]), A([{"type": "output_text", "text": "ok"}])]},
            {"messages": [U("plain"), A("text, as before")]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[U("What is 2+2?"), A("4")], [U("untyped and a bare string"), A("ok")], [U("plain"), A("text, as before")]])


# 2. non-text parts: dropped, counted by type; a turn left empty is empty -----------------------

@case("content_parts_nontext", "images_and_audio_dropped_and_counted", fmt="messages")
def _(tmp):
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    rows = [{"messages": [U([text("Describe this."), img]), A("A cat.")]},
            {"messages": [U([{"type": "input_audio", "input_audio": {"data": "UklG"}}, text("Transcribe.")]), A("Hello.")]},
            {"messages": [U([img]), A("A dog.")]},  # only an image: the user turn is empty
            {"messages": [U([text("Two images"), img, img]), A("Both cats.")]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[U("Describe this."), A("A cat.")], [U("Transcribe."), A("Hello.")], [U("Two images"), A("Both cats.")]],
        {"empty_turn": 1}, {"parts_dropped": {"image_url": 3, "input_audio": 1}})


# 3. parts that cannot be read ------------------------------------------------------------------

@case("content_parts_malformed", "number_part_and_non_string_text", fmt="messages")
def _(tmp):
    rows = [{"messages": [U([text("q")]), A("a")]},
            {"messages": [U([text("q"), 7]), A("a")]},
            {"messages": [U([{"type": "text", "text": ["nested"]}]), A("a")]},
            {"messages": [U([]), A("a")]}]  # no parts at all: an empty turn
    return write_jsonl(tmp / "d.jsonl", rows), Loads([[U("q"), A("a")]], {"wrong_type:content": 2, "empty_turn": 1})


# 4. LLaMA-Factory's ShareGPT tool convention ----------------------------------------------------

@case("sharegpt_llamafactory_tools", "function_call_observation_tools_json_and_system")
def _(tmp):
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})
    rows = [{"conversations": [H("Weather in Oslo?"), {"from": "function_call", "value": call},
                               {"from": "observation", "value": '{"sky": "rain"}'}, G("Rain in Oslo.")],
             "system": "You can call tools.", "tools": json.dumps([WEATHER])},
            {"conversations": [H("Two cities?"),
                               {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "A"}},
                                                                              {"name": "get_weather", "arguments": '{"city": "B"}'}])},
                               {"from": "observation", "value": "sun; snow"}, G("Sun and snow.")], "system": "", "tools": ""},
            {"conversations": [H("Hi"), G("Hello")]}]

    def check(kept):
        # LLaMA-Factory's bare function schema, wrapped as chat templates read it
        assert json.loads(kept[0]["tools"]) == [{"type": "function", "function": WEATHER}] and "tools" not in kept[1] and "tools" not in kept[2]

    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[S("You can call tools."), U("Weather in Oslo?"), calls(("get_weather", '{"city": "Oslo"}')),
          result('{"sky": "rain"}'), A("Rain in Oslo.")],
         [U("Two cities?"), calls(("get_weather", '{"city": "A"}'), ("get_weather", '{"city": "B"}')),
          result("sun; snow"), A("Sun and snow.")],
         [U("Hi"), A("Hello")]], check=check)


# 5. LLaMA-Factory tool turns that are not usable ------------------------------------------------

@case("sharegpt_llamafactory_malformed", "bad_calls_orphan_results_and_system_twice", fmt="sharegpt")
def _(tmp):
    obs = {"from": "observation", "value": "r"}
    rows = [{"conversations": [H("q"), G("a")]},
            {"conversations": [H("q"), {"from": "function_call", "value": "get_weather(Oslo)"}, obs, G("a")]},  # not JSON
            {"conversations": [H("q"), {"from": "function_call", "value": '{"arguments": {}}'}, obs, G("a")]},  # no name
            {"conversations": [H("q"), obs, G("a")]},                                        # a result nobody asked for
            {"conversations": [H("q"), {"from": "function_call", "value": '{"name": "f"}'}, obs]},  # ends on the result
            {"conversations": [{"from": "system", "value": "s1"}, H("q"), G("a")], "system": "s2"},
            {"conversations": [H("q"), G("a")], "system": 5}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[U("q"), A("a")]], {"bad_tool_call": 2, "roles_out_of_order": 2, "ends_on_tool": 1, "wrong_type:system": 1})


# 6. the assistant's words, then its call, as two ShareGPT turns --------------------------------

@case("sharegpt_text_then_call", "merged_into_one_calling_turn", fmt="sharegpt")
def _(tmp):
    rows = [{"conversations": [H("q"), G("Let me look."), {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
                               {"from": "observation", "value": "r"}, G("a")]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads([[U("q"), calls(("f", "{}"), content="Let me look."), result("r"), A("a")]])


# 7. OpenAI tool_calls + tools with content parts ------------------------------------------------

@case("openai_tools_with_parts", "parts_in_calls_results_and_answers", fmt="messages")
def _(tmp):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    rows = [{"messages": [U([text("q")]), {"role": "assistant", "content": [text("Checking.")], "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "c1", "content": [text("result")]}, A([text("a")])],
             "tools": [{"type": "function", "function": WEATHER}]},
            {"messages": [U("q2"), {"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "c1", "content": [1, {"value": 2}]}, A("a2")]}]  # a JSON list result
    kept = [[U("q"), {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "c1", "name": "f", "arguments": '{"x": 1}'}]},
             {"role": "tool", "content": "result", "tool_call_id": "c1"}, A("a")],
            [U("q2"), {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "f", "arguments": '{"x": 1}'}]},
             {"role": "tool", "content": '[1, {"value": 2}]', "tool_call_id": "c1"}, A("a2")]]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(kept)


# 8. alpaca-style rows with a function call -----------------------------------------------------

@case("alpaca_function_call", "with_and_without_the_result", fmt="alpaca")
def _(tmp):
    fc = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    rows = [{"instruction": "Weather?", "input": "Oslo", "function_call": fc, "observation": "rain", "output": "Rain."},
            {"instruction": "Weather?", "function_call": json.dumps(fc)},                  # the call is the answer
            {"instruction": "Weather?", "function_call": "not json", "output": "x"},
            {"instruction": "Weather in Bergen?", "function_call": fc, "observation": "rain"},  # no answer after it
            {"instruction": "plain", "output": "as before", "function_call": None},
            {"instruction": "plain too", "output": "no call", "function_call": ""}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[U("Weather?\n\nOslo"), calls(("get_weather", '{"city": "Oslo"}')), result("rain"), A("Rain.")],
         [U("Weather?"), calls(("get_weather", '{"city": "Oslo"}'))],
         [U("plain"), A("as before")], [U("plain too"), A("no call")]],
        {"bad_tool_call": 1, "missing_field:output": 1})


# 9. per-turn weights -----------------------------------------------------------------------------

@case("turn_weights", "loss_weight_weight_and_train_keys", fmt="messages")
def _(tmp):
    rows = [{"messages": [U("q1"), A("draft", loss_weight=0), U("better?"), A("final", loss_weight=1)]},
            {"messages": [U("q2"), A("old", weight=0.0), U("again"), A("new")]},
            {"messages": [U("q3"), A("skip", train=False), U("and"), A("keep", train=True)]},
            {"messages": [U("q4", weight=0), A("a4", training=True)]},               # a user turn's weight changes nothing
            {"messages": [U("q5"), A("none trained", loss_weight=0)]},
            {"messages": [U("q6"), A("says both", weight=1, train=False)]},
            {"messages": [U("q7"), A("a7", weight="high")]},
            {"messages": [U("q8"), A("a8", train="no")]}]
    kept = [[U("q1"), A("draft", train=False), U("better?"), A("final")],
            [U("q2"), A("old", train=False), U("again"), A("new")],
            [U("q3"), A("skip", train=False), U("and"), A("keep")],
            [U("q4"), A("a4")]]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        kept, {"no_trained_turn": 1, "bad_turn_weight": 1, "wrong_type:weight": 1, "wrong_type:train": 1},
        {"untrained_turns": 3})


@case("turn_weights", "sharegpt_weight_as_axolotl_writes_it", fmt="sharegpt")
def _(tmp):
    rows = [{"conversations": [H("q"), G("bad answer", weight=0), H("try again"), G("good answer", weight=1)]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[U("q"), A("bad answer", train=False), U("try again"), A("good answer")]], notes={"untrained_turns": 1})


# 10. a fractional weight is refused, never rounded -----------------------------------------------

@case("turn_weight_fractional", "half_weight_stops_with_record_and_value", fmt="messages")
def _(tmp):
    rows = [{"messages": [U("q"), A("a")]}, {"messages": [U("q"), A("a", loss_weight=0.5), U("q2"), A("b")]}]
    p = write_jsonl(tmp / "d.jsonl", rows)
    return p, Stop(re.escape(f"{p}:2: messages[1].loss_weight: 0.5: only 0 or 1 can be honoured") + ".+; make it 0 or 1")


@case("turn_weight_fractional", "negative_weight_on_sharegpt", fmt="sharegpt")
def _(tmp):
    p = write_jsonl(tmp / "d.jsonl", [{"conversations": [H("q"), G("a", weight=-1)]}])
    return p, Stop(re.escape(f"{p}:1: conversations[1].weight: -1: only 0 or 1 can be honoured") + ".+")


# 11. reasoning beside the content ----------------------------------------------------------------

@case("reasoning_fields", "reasoning_content_reasoning_and_thinking", fmt="messages")
def _(tmp):
    rows = [{"messages": [U("2+2?"), A("4", reasoning_content="2 and 2 make 4.")]},
            {"messages": [U("3+3?"), A("6", reasoning="Three twice.")]},
            {"messages": [U("4+4?"), A("8", thinking="Doubling four."), U("and 5+5?"), A("10", reasoning_content="  ")]},
            {"messages": [U("q", reasoning_content="a user does not think aloud"), A("a")]},
            {"messages": [U("q"), A("a", reasoning_content={"steps": []})]}]
    kept = [[U("2+2?"), A("4", reasoning="2 and 2 make 4.")], [U("3+3?"), A("6", reasoning="Three twice.")],
            [U("4+4?"), A("8", reasoning="Doubling four."), U("and 5+5?"), A("10")]]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        kept, {"reasoning_on_user": 1, "wrong_type:reasoning_content": 1}, {"reasoning_turns": 3})


# 12. reasoning as a part of the content ----------------------------------------------------------

@case("reasoning_parts", "thinking_and_reasoning_parts_never_joined_to_the_answer", fmt="messages")
def _(tmp):
    rows = [{"messages": [U("q"), A([{"type": "thinking", "thinking": "Let me see."}, text("Answer.")])]},
            {"messages": [U("q2"), A([{"type": "reasoning", "text": "Hmm."}, text("Two.")])]},
            {"messages": [U("q3"), A([{"type": "thinking", "thinking": 3}, text("x")])]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads(
        [[U("q"), A("Answer.", reasoning="Let me see.")], [U("q2"), A("Two.", reasoning="Hmm.")]],
        {"wrong_type:reasoning": 1}, {"reasoning_turns": 2})


# 13. TRL's prompt/completion lists with parts ----------------------------------------------------

@case("prompt_completion_parts", "conversational_pairs_with_parts", fmt="prompt_completion")
def _(tmp):
    rows = [{"prompt": [{"role": "user", "content": [text("q"), {"type": "image", "image": "x.png"}]}],
             "completion": [{"role": "assistant", "content": [text("a")], "reasoning_content": "r"}]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads([[U("q"), A("a", reasoning="r")]],
                                                     notes={"parts_dropped": {"image": 1}, "reasoning_turns": 1})


# 14. ShareGPT turns whose value is a parts list --------------------------------------------------

@case("sharegpt_value_parts", "parts_under_value", fmt="sharegpt")
def _(tmp):
    rows = [{"conversations": [H([text("look", "value"), {"type": "image", "value": "a.png"}]), G([text("a cat")])]},
            {"conversations": [H([{"type": "video"}]), G("nothing to see")]}]
    return write_jsonl(tmp / "d.jsonl", rows), Loads([[U("look"), A("a cat")]], {"empty_turn": 1},
                                                     {"parts_dropped": {"image": 1}})


# ---- the corpus test ----------------------------------------------------------------------------

def test_corpus_covers_at_least_12_kinds():
    assert len(KINDS) >= 12, sorted(KINDS)


@pytest.mark.parametrize("build, fmt", CASES)
def test_other_tools_input(tmp_path, build, fmt):
    source, expect = build(tmp_path)
    if isinstance(expect, Stop):
        with pytest.raises(SourceError) as info:
            load_split(str(source), "train", fmt, None)
        msg = str(info.value)
        assert "\n" not in msg and re.fullmatch(expect.pattern, msg), msg
        return
    kept, stats = load_split(str(source), "train", fmt, None)
    present = sum(1 for line in Path(source).read_text().splitlines() if line.strip())
    assert stats["read"] == present
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["read"]
    assert stats["dropped"] == expect.dropped
    if isinstance(expect.kept, int):
        assert stats["kept"] == expect.kept
    else:
        assert [k["messages"] for k in kept] == expect.kept
    notes = {k: stats[k] for k in ("parts_dropped", "untrained_turns", "reasoning_turns") if k in stats}
    assert notes == expect.notes
    if expect.check:
        expect.check(kept)
