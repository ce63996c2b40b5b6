"""What the template stage (and pack's labels) make of the conventions load reads from other
tools (tests/data/test_other_tools_inputs.py): untrained turns stay as context with no label,
LLaMA-Factory tool turns train on the call and never on the observation, reasoning goes where
template.reasoning says and is counted, and a load split widens its schema only when it must."""

from __future__ import annotations

import copy
import json

import pytest
from helpers import write_jsonl

from sft_pipeline.config import TemplateConfig
from sft_pipeline.data.arrow_io import SplitWriter, folder_schema, iter_batches
from sft_pipeline.data.samples import Context, make_row
from sft_pipeline.data.tokens import IGNORE, tokenize
from sft_pipeline.stages.load import LOAD_SCHEMA, WIDE_SCHEMA, load_split, write_rows
from sft_pipeline.stages.template import template_split

# ChatML that renders an assistant turn's reasoning_content in <think> before its content, as
# Qwen3's and DeepSeek-R1's templates do (Qwen3 only after the last user turn: LAST_ONLY)
THINKING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LAST_ONLY = THINKING.replace("m.role == 'assistant' and m.reasoning_content", "m.role == 'assistant' and m.reasoning_content and loop.last")
GPT_OSS_LIKE = THINKING.replace("reasoning_content", "thinking")


def _tok(tiny_tokenizer, template):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = template
    return tok


def _rows(tmp_path, rows, fmt):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    kept, _ = load_split(str(path), "train", fmt, None)
    return kept


def _trained(row, tok):
    ids, labels = tokenize([row["text"]], [row["spans"]], tok, "assistant", add_eos=False).sample(0)
    return tok.decode([int(t) for t in labels if t != IGNORE])


def test_an_untrained_turn_is_context_and_has_no_label(tmp_path, tiny_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "draft", "loss_weight": 0},
                          {"role": "user", "content": "better?"}, {"role": "assistant", "content": "final"}]}]
    from collections import Counter

    notes = Counter()
    row, why, _ = make_row(_rows(tmp_path, rows, "messages")[0], Context.build(TemplateConfig(kind="chat"), tiny_tokenizer), notes)
    assert why is None and "draft" in row["text"]  # kept as context
    assert [row["text"][s:e] for s, e in row["spans"]] == ["final<|im_end|>\n"]
    assert _trained(row, tiny_tokenizer) == "final<|im_end|>\n"
    assert notes == Counter({"untrained_turns": 1, "records_with_untrained_turns": 1})


@pytest.mark.parametrize("kind", ["seed", "custom"])
def test_untrained_turns_in_plain_formats(tmp_path, tiny_tokenizer, kind):
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "bad", "weight": 0},
                               {"from": "human", "value": "again"}, {"from": "gpt", "value": "good"}]}]
    row, why, _ = make_row(_rows(tmp_path, rows, "sharegpt")[0], Context.build(TemplateConfig(kind=kind), tiny_tokenizer))
    assert why is None and "bad" in row["text"]
    assert [row["text"][s:e] for s, e in row["spans"]] == ["good"]


def test_plain_formats_train_the_eos_only_after_a_trained_last_turn(tmp_path, tiny_tokenizer):
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "good"},
                               {"from": "human", "value": "again"}, {"from": "gpt", "value": "bad", "weight": 0}]}]
    row, why, _ = make_row(_rows(tmp_path, rows, "sharegpt")[0], Context.build(TemplateConfig(kind="seed"), tiny_tokenizer))
    ids, labels = tokenize([row["text"]], [row["spans"]], tiny_tokenizer, "assistant", add_eos=True).sample(0)
    assert labels[-1] == IGNORE  # the EOS closes "bad", which is not trained
    assert tiny_tokenizer.decode([int(t) for t in labels if t != IGNORE]).strip() == "good"


def test_llamafactory_tool_turns_train_on_the_call_and_never_on_the_observation(tmp_path, tool_tokenizer):
    rows = [{"conversations": [{"from": "human", "value": "Weather in Oslo?"},
                               {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
                               {"from": "observation", "value": "rain"}, {"from": "gpt", "value": "Rain."}],
             "tools": json.dumps([{"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {}}}])}]
    row, why, _ = make_row(_rows(tmp_path, rows, "sharegpt")[0], Context.build(TemplateConfig(kind="chat"), tool_tokenizer))
    assert why is None
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    assert '"name": "get_weather", "description": "d"' in row["text"]  # the schema reached the template's tools block
    assert "<tool_response>\nrain\n</tool_response>" in row["text"]
    assert _trained(row, tool_tokenizer) == call_text + "Rain.<|im_end|>\n"


REASONED = [{"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}]}]


def test_reasoning_is_rendered_where_the_template_has_a_place_for_it(tmp_path, tiny_tokenizer):
    from collections import Counter

    for template in (THINKING, GPT_OSS_LIKE):  # (transformers 5 also aliases the three names itself)
        tok = _tok(tiny_tokenizer, template)
        ctx = Context.build(TemplateConfig(kind="chat"), tok)
        assert ctx.reasoning_key in ("reasoning_content", "thinking", "reasoning")
        notes = Counter()
        row, why, _ = make_row(_rows(tmp_path, REASONED, "messages")[0], ctx, notes)
        assert why is None
        assert _trained(row, tok) == "<think>\nTwo and two.\n</think>\n\n4<|im_end|>\n"
        assert row["reference"] == "4"  # the answer alone, never merged with the reasoning
        assert notes == Counter({"reasoning:native": 1})


def test_keep_drops_the_record_where_the_template_has_no_place_for_reasoning(tmp_path, tiny_tokenizer):
    ctx = Context.build(TemplateConfig(kind="chat"), tiny_tokenizer)  # plain ChatML
    assert ctx.reasoning_key is None
    assert make_row(_rows(tmp_path, REASONED, "messages")[0], ctx)[:2] == (None, "reasoning_unsupported")
    assert make_row(_rows(tmp_path, REASONED, "messages")[0], Context.build(TemplateConfig(kind="seed"), tiny_tokenizer))[:2] == \
        (None, "reasoning_unsupported")


@pytest.mark.parametrize("kind", ["chat", "seed"])
def test_drop_and_inline_are_the_recipes_choice_and_counted(tmp_path, tiny_tokenizer, kind):
    from collections import Counter

    tok = _tok(tiny_tokenizer, THINKING)  # inline writes it into the content even where the template could
    rec = _rows(tmp_path, REASONED, "messages")[0]
    notes = Counter()
    row, why, _ = make_row(rec, Context.build(TemplateConfig(kind=kind, reasoning="drop"), tok), notes)
    assert why is None and "Two and two." not in row["text"] and notes == Counter({"reasoning:dropped": 1})
    notes = Counter()
    row, why, _ = make_row(rec, Context.build(TemplateConfig(kind=kind, reasoning="inline"), tok), notes)
    assert why is None and notes == Counter({"reasoning:inlined": 1})
    answer = [row["text"][s:e] for s, e in row["spans"]][0]
    assert answer.startswith("<think>\nTwo and two.\n</think>\n\n4") or answer.startswith("Answer: <think>\nTwo and two.\n</think>\n\n4")


def test_turns_whose_reasoning_the_template_leaves_out_are_counted(tmp_path, tiny_tokenizer):
    from collections import Counter

    rows = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning": "r1"},
                          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning": "r2"}]}]
    notes = Counter()
    row, why, _ = make_row(_rows(tmp_path, rows, "messages")[0],
                           Context.build(TemplateConfig(kind="chat"), _tok(tiny_tokenizer, LAST_ONLY)), notes)
    assert why is None and "r1" not in row["text"] and "r2" in row["text"]
    assert notes == Counter({"reasoning:native": 2, "reasoning:left_out_by_template": 1})


def test_a_load_split_widens_its_schema_only_when_a_turn_needs_it(tmp_path, tiny_tokenizer):
    plain = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], "source": ""}
             for i in range(1500)]
    with SplitWriter(tmp_path / "plain", LOAD_SCHEMA, batch_rows=1000) as w:
        write_rows(w, iter(plain))
    assert folder_schema(tmp_path / "plain") == LOAD_SCHEMA
    late = plain + [{"messages": [{"role": "user", "content": "q"},
                                  {"role": "assistant", "content": "a", "reasoning": "r", "train": False},
                                  {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}], "source": ""}]
    with SplitWriter(tmp_path / "wide", LOAD_SCHEMA, batch_rows=1000) as w:
        write_rows(w, iter(late))  # 1000 rows already written narrow when the wide one comes
    assert folder_schema(tmp_path / "wide") == WIDE_SCHEMA
    back = [r for b in iter_batches(tmp_path / "wide") for r in b.to_pylist()]
    assert len(back) == 1501 and back[0]["messages"][1]["reasoning"] is None
    assert back[-1]["messages"][1]["reasoning"] == "r" and back[-1]["messages"][1]["train"] is False
    ctx = Context.build(TemplateConfig(kind="chat", reasoning="inline"), tiny_tokenizer)
    stats = template_split(tmp_path / "wide", tmp_path / "tpl", ctx)
    assert stats["kept"] == 1501
    assert stats["turn_weights"] == {"untrained_turns": 1, "records": 1}
    assert stats["reasoning"] == {"mode": "inline", "template_key": None, "turns": {"inlined": 1}}
    plain_stats = template_split(tmp_path / "plain", tmp_path / "tpl2", ctx)
    assert "turn_weights" not in plain_stats and "reasoning" not in plain_stats


def test_a_load_output_with_reasoning_and_weights_reads_back_as_itself(tmp_path):
    """This project's load folder is a source too (a saved dataset): the wider turns round-trip."""
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0},
                          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b", "thinking": "t"}]},
            {"messages": [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "x"}]}]
    kept = _rows(tmp_path, rows, "messages")
    with SplitWriter(tmp_path / "load" / "train", LOAD_SCHEMA) as w:
        write_rows(w, iter(kept))
    again, stats = load_split(str(tmp_path / "load" / "train"), "train", "auto", None)
    assert [r["messages"] for r in again] == [r["messages"] for r in kept]
    assert (stats["untrained_turns"], stats["reasoning_turns"]) == (1, 1)
