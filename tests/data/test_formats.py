"""Record shapes -> normalized conversations, and the named reason when a record cannot be used."""

import pytest

from sft_pipeline.data.formats import FormatError, check_turns, detect_format, to_conversation


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


# ---- each shape converts to the exact conversation ----------------------------------------

def test_lima_single_turn():
    rec = {"conversations": ["What is 2+2?", "4."], "source": "math"}
    assert to_conversation(rec, "lima") == ([U("What is 2+2?"), A("4.")], None)


def test_lima_multi_turn_alternates_user_assistant():
    rec = {"conversations": ["q1", "a1", "q2", "a2"]}
    assert to_conversation(rec, "lima") == ([U("q1"), A("a1"), U("q2"), A("a2")], None)


def test_deeplake_lima():
    rec = {"question": "Why is the sky blue?", "answer": "Rayleigh scattering.", "source": "x"}
    assert to_conversation(rec, "deeplake_lima") == ([U("Why is the sky blue?"), A("Rayleigh scattering.")], None)


def test_deeplake_lima_utf8_bytes_are_decoded():
    rec = {"question": "caf\u00e9?".encode("utf-8"), "answer": b"yes"}
    assert to_conversation(rec, "deeplake_lima") == ([U("caf\u00e9?"), A("yes")], None)


def test_alpaca_without_input():
    rec = {"instruction": "Name a color.", "input": "", "output": "Blue."}
    assert to_conversation(rec, "alpaca") == ([U("Name a color."), A("Blue.")], None)


def test_alpaca_missing_input_key():
    rec = {"instruction": "Name a color.", "output": "Blue."}
    assert to_conversation(rec, "alpaca") == ([U("Name a color."), A("Blue.")], None)


def test_alpaca_with_input_joins_with_blank_line():
    rec = {"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"}
    assert to_conversation(rec, "alpaca") == ([U("Translate to French.\n\nHello"), A("Bonjour")], None)


def test_alpaca_whitespace_input_is_ignored():
    rec = {"instruction": "Say hi.", "input": "   \n", "output": "Hi"}
    assert to_conversation(rec, "alpaca") == ([U("Say hi."), A("Hi")], None)


def test_messages_with_system_turn():
    rec = {"messages": [S("Be brief."), U("Hi"), A("Hello."), U("Bye"), A("Bye.")]}
    assert to_conversation(rec, "messages") == ([S("Be brief."), U("Hi"), A("Hello."), U("Bye"), A("Bye.")], None)


def test_messages_extra_turn_keys_are_dropped():
    rec = {"messages": [{"role": "user", "content": "Hi", "name": "x"}, {"role": "assistant", "content": "Yo"}]}
    assert to_conversation(rec, "messages") == ([U("Hi"), A("Yo")], None)


# ---- detect_format -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "columns, expected",
    [
        (["conversations", "source"], "lima"),
        (["messages"], "messages"),
        (["question", "answer", "source"], "deeplake_lima"),
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_the_shapes_a_recipe_may_name_are_the_shapes_converted():
    """config.FORMAT (what data.format accepts) sits below data/ and cannot import CONVERTERS:
    a shape added to one and not the other is caught here, not as a KeyError in load."""
    import typing

    from sft_pipeline.config import FORMAT
    from sft_pipeline.data.formats import CONVERTERS

    assert set(typing.get_args(FORMAT)) == {"auto", *CONVERTERS}


@pytest.mark.parametrize("columns", [["text"], ["question"], ["instruction", "input"], []])
def test_detect_format_unknown_columns(columns):
    with pytest.raises(FormatError, match=r"cannot tell the record shape from columns") as info:
        detect_format(columns)
    assert str(sorted(columns)) in str(info.value)
    assert "data.format" in str(info.value)


# ---- drop reasons ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rec, fmt, reason",
    [
        (["q", "a"], "lima", "not_a_mapping"),
        ("just text", "messages", "not_a_mapping"),
        (None, "alpaca", "not_a_mapping"),
        ({"source": "x"}, "lima", "missing_field:conversations"),
        ({"question": "q"}, "deeplake_lima", "missing_field:answer"),
        ({"answer": "a"}, "deeplake_lima", "missing_field:question"),
        ({"question": "q", "answer": None}, "deeplake_lima", "missing_field:answer"),
        ({"instruction": "i"}, "alpaca", "missing_field:output"),
        ({"output": "o"}, "alpaca", "missing_field:instruction"),
        ({"source": "x"}, "messages", "missing_field:messages"),
        ({"messages": [{"content": "hi"}]}, "messages", "missing_field:role"),
        ({"messages": [{"role": "user"}]}, "messages", "missing_field:content"),
        ({"conversations": "q then a"}, "lima", "wrong_type:conversations"),
        ({"conversations": ["q", 42]}, "lima", "wrong_type:conversations"),
        ({"question": 1, "answer": "a"}, "deeplake_lima", "wrong_type:question"),
        ({"question": "q", "answer": ["a"]}, "deeplake_lima", "wrong_type:answer"),
        ({"instruction": "i", "input": 3, "output": "o"}, "alpaca", "wrong_type:input"),
        ({"messages": "hi"}, "messages", "wrong_type:messages"),
        ({"messages": ["hi", "there"]}, "messages", "wrong_type:messages"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages", "wrong_type:content"),
        ({"conversations": ["q", "   \n\t"]}, "lima", "empty_turn"),
        ({"question": "", "answer": "a"}, "deeplake_lima", "empty_turn"),
        ({"question": "q", "answer": "  "}, "deeplake_lima", "empty_turn"),
        ({"conversations": ["only a question"]}, "lima", "ends_on_user"),
        ({"conversations": ["q1", "a1", "q2"]}, "lima", "ends_on_user"),
        ({"messages": [U("q")]}, "messages", "ends_on_user"),
        ({"messages": [U("q1"), U("q2"), A("a")]}, "messages", "roles_out_of_order"),
        ({"messages": [A("a"), U("q")]}, "messages", "roles_out_of_order"),
        ({"messages": [U("q"), S("late system"), A("a")]}, "messages", "roles_out_of_order"),
        ({"messages": [U("q"), {"role": "bot", "content": "a"}]}, "messages", "unknown_role"),
        ({"messages": [{"role": "human", "content": "q"}, A("a")]}, "messages", "unknown_role"),
        ({"conversations": []}, "lima", "empty_conversation"),
        ({"messages": []}, "messages", "empty_conversation"),
        ({"messages": [S("system only")]}, "messages", "empty_conversation"),
        ({"question": b"\xff\xfe", "answer": "a"}, "deeplake_lima", "not_utf8:question"),
        ({"question": "q", "answer": b"caf\xe9"}, "deeplake_lima", "not_utf8:answer"),
        ({"conversations": ["q", b"\xc3\x28"]}, "lima", "not_utf8:conversations"),
    ],
)
def test_drop_reason(rec, fmt, reason):
    assert to_conversation(rec, fmt) == (None, reason)


def test_check_turns_accepts_a_good_conversation():
    assert check_turns([S("s"), U("q"), A("a")]) is None
    assert check_turns([U("q"), A("a"), U("q2"), A("a2")]) is None


def test_check_turns_reports_the_first_broken_rule():
    # out of order (turn 2) comes before the empty turn (turn 3)
    assert check_turns([U("q"), U("q2"), A(" ")]) == "roles_out_of_order"
    assert check_turns([U(" "), U("q2")]) == "empty_turn"


# ---- tool calls (OpenAI-style chat data) -------------------------------------------------------

def _call(name="get_weather", args='{"city": "Paris"}', call_id="c1", wrapped=True):
    fn = {"name": name, "arguments": args}
    return {"id": call_id, "type": "function", "function": fn} if wrapped else {"id": call_id, **fn}


def _calls(*calls, content=""):
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def _norm(name="get_weather", args='{"city": "Paris"}', call_id="c1"):
    return {"id": call_id, "name": name, "arguments": args}


def test_tool_call_turns_are_kept_with_their_calls_and_results():
    rec = {"messages": [U("Weather?"), _calls(_call(), content=None),
                        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "sunny", "extra": 1},
                        A("Sunny.")]}
    assert to_conversation(rec, "messages") == ([
        U("Weather?"), _calls(_norm()),
        {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"}, A("Sunny.")], None)


@pytest.mark.parametrize("args, expected", [
    ({"city": "Paris"}, '{"city": "Paris"}'),          # a mapping, as HF's chat-template docs write it
    ('{"city":"Paris"}', '{"city": "Paris"}'),          # OpenAI's JSON text, in one spelling
    ("", "{}"), ({}, "{}"),                             # a function without arguments
    ('{"q": "caf\\u00e9"}', '{"q": "café"}'),
])
def test_tool_call_arguments_become_one_json_text(args, expected):
    rec = {"messages": [U("q"), _calls(_call(args=args, wrapped=False)), {"role": "tool", "content": "r"}, A("a")]}
    messages, why = to_conversation(rec, "messages")
    assert why is None and messages[1]["tool_calls"] == [_norm(args=expected)]


def test_a_tool_result_given_as_json_is_kept_as_its_text():
    rec = {"messages": [U("q"), _calls(_call()), {"role": "tool", "content": {"temp": 21, "unit": "°C"}}, A("a")]}
    messages, _ = to_conversation(rec, "messages")
    assert messages[2] == {"role": "tool", "content": '{"temp": 21, "unit": "°C"}'}


def test_prompt_completion_lists_carry_tool_calls():
    rec = {"prompt": [U("q")], "completion": [_calls(_call()), {"role": "tool", "content": "r"}, A("a")]}
    messages, why = to_conversation(rec, "prompt_completion")
    assert why is None and [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("turns, reason", [
    ([U("q"), _calls(_call(args="{oops")), {"role": "tool", "content": "r"}, A("a")], "bad_tool_call"),
    ([U("q"), _calls(_call(args="[1]")), {"role": "tool", "content": "r"}, A("a")], "bad_tool_call"),
    ([U("q"), _calls(_call(name="  ")), {"role": "tool", "content": "r"}, A("a")], "bad_tool_call"),
    ([U("q"), _calls({"type": "code_interpreter"}), {"role": "tool", "content": "r"}, A("a")], "bad_tool_call"),
    ([U("q"), {"role": "assistant", "content": "", "tool_calls": {"name": "f"}}, A("a")], "bad_tool_call"),
    ([U("q"), {"role": "tool", "content": "r"}, A("a")], "roles_out_of_order"),
    ([U("q"), _calls(_call()), U("q2"), A("a")], "roles_out_of_order"),
    ([U("q"), A("a"), {"role": "tool", "content": "r"}, A("a2")], "roles_out_of_order"),
    ([U("q"), _calls(_call()), {"role": "tool", "content": "r"}], "ends_on_tool"),
    ([U("q"), _calls(_call()), {"role": "tool", "content": 7}, A("a")], "wrong_type:content"),
    ([U("q"), {"role": "assistant", "content": None}], "missing_field:content"),  # no call: an answer is needed
    ([U("q"), {"role": "assistant", "content": " ", "tool_calls": []}], "empty_turn"),
])
def test_tool_call_drop_reasons(turns, reason):
    assert to_conversation({"messages": turns}, "messages") == (None, reason)


def test_check_turns_allows_results_in_a_row_and_an_empty_result():
    assert check_turns([U("q"), _calls(_norm(), _norm(call_id="c2")), {"role": "tool", "content": ""},
                        {"role": "tool", "content": "r2"}, _calls(_norm()), {"role": "tool", "content": "r3"},
                        A("a")]) is None


@pytest.mark.parametrize("value, expected", [
    ([{"type": "function", "function": {"name": "f"}}], ('[{"type": "function", "function": {"name": "f"}}]', None)),
    ('[{"name": "f"}]', ('[{"name": "f"}]', None)),
    (None, (None, None)), ([], (None, None)), ("", (None, None)), ("[]", (None, None)),
    ("[{broken", (None, "bad_tools")), ({"name": "f"}, (None, "bad_tools")), (["f"], (None, "bad_tools")),
])
def test_record_tools(value, expected):
    from sft_pipeline.data.formats import record_tools

    assert record_tools({"messages": [], "tools": value}) == expected
    assert record_tools({"functions": value}, {"tools": "functions"}) == expected  # data.columns maps it too


def test_a_normalized_tool_conversation_reads_back_as_itself():
    """A split folder `load` wrote is itself a source (messages shape, null fields on other
    turns): reading it again gives the same conversation."""
    normalized = [U("q"), _calls(_norm(), _norm(args="{}", call_id=None), content="Checking."),
                  {"role": "tool", "content": "r", "tool_call_id": "c1", "name": "get_weather"}, A("a")]
    assert to_conversation({"messages": normalized}, "messages") == (normalized, None)
    as_arrow = [{"role": m["role"], "content": m["content"], "tool_calls": m.get("tool_calls"),
                 "tool_call_id": m.get("tool_call_id"), "name": m.get("name")} for m in normalized]
    assert to_conversation({"messages": as_arrow}, "messages") == (normalized, None)
