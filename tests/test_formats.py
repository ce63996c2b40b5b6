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
