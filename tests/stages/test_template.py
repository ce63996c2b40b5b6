import pytest

from sft_pipeline.config import TemplateConfig
from sft_pipeline.data.prompts import needs_eos, render, render_prompt, render_sample

CONV = [
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye?"},
    {"role": "assistant", "content": "Goodbye."},
]


def test_seed_template_is_question_answer_and_spans_cover_answers():
    text, spans = render(CONV[:2], TemplateConfig(kind="seed"))
    assert text == "Question: Hi?\n\nAnswer: Hello."
    assert [text[s:e] for s, e in spans] == ["Hello."]


def test_seed_multi_turn_spans():
    text, spans = render(CONV, TemplateConfig(kind="seed"))
    assert text == "Question: Hi?\n\nAnswer: Hello.\n\nQuestion: Bye?\n\nAnswer: Goodbye."
    assert [text[s:e] for s, e in spans] == ["Hello.", "Goodbye."]


def test_seed_prompt_ends_where_the_answer_starts():
    assert render_prompt(CONV[:1], TemplateConfig(kind="seed")) == "Question: Hi?\n\nAnswer: "


def test_custom_template_with_system_turn():
    cfg = TemplateConfig(kind="custom", user="### User: {content}", assistant="### Bot: {content} ###", separator="\n")
    text, spans = render([{"role": "system", "content": "Be brief."}, *CONV[:2]], cfg)
    assert text == "Be brief.\n### User: Hi?\n### Bot: Hello. ###"
    assert [text[s:e] for s, e in spans] == ["Hello. ###"]


def test_chat_template_spans_include_end_of_turn(tiny_tokenizer):
    text, spans = render(CONV, TemplateConfig(kind="chat"), tiny_tokenizer)
    assert [text[s:e] for s, e in spans] == ["Hello.<|im_end|>\n", "Goodbye.<|im_end|>\n"]
    assert text.startswith("<|im_start|>user\nHi?<|im_end|>")


def test_chat_system_prompt_is_added(tiny_tokenizer):
    cfg = TemplateConfig(kind="chat", system="Short.")
    prompt = render_prompt(CONV[:1], cfg, tiny_tokenizer)
    assert prompt == "<|im_start|>system\nShort.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"


def test_eos_only_for_plain_templates():
    assert needs_eos(TemplateConfig(kind="seed")) and not needs_eos(TemplateConfig(kind="chat"))


@pytest.mark.parametrize("kind", ["seed", "custom", "chat"])
@pytest.mark.parametrize("turns", [2, 4])
def test_render_sample_prompt_is_the_prompt_for_the_last_answer(tiny_tokenizer, kind, turns):
    """The template stage takes the prompt from render_sample's by-product; it must be exactly
    what render_prompt gives generation and evaluation."""
    conv = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "And water?"}, {"role": "assistant", "content": "Wet."}][:turns]
    cfg = TemplateConfig(kind=kind, system="Be brief." if kind == "chat" else None)
    text, spans, prompt = render_sample(conv, cfg, tiny_tokenizer)
    assert (text, spans) == render(conv, cfg, tiny_tokenizer)
    assert prompt == render_prompt(conv[:-1], cfg, tiny_tokenizer)
    assert text.startswith(prompt) and text[len(prompt):].startswith(conv[-1]["content"])


# ---- tool calls: rendered by a template that can, dropped and counted where it cannot ---------

import json  # noqa: E402

from sft_pipeline.data import tools as tool_support  # noqa: E402
from sft_pipeline.data.samples import Context, make_row  # noqa: E402

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]}
RESULT = {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "c1"}
AGENT = [{"role": "user", "content": "Weather in Paris?"}, CALL, RESULT, {"role": "assistant", "content": "Clear skies."}]


def load_row(messages, tools=None):
    """A row as the template stage reads it from load's Arrow (null fields on other turns)."""
    full = [{"role": m["role"], "content": m["content"], "tool_calls": m.get("tool_calls"),
             "tool_call_id": m.get("tool_call_id"), "name": m.get("name")} for m in messages]
    return {"messages": full, "source": "s", "tools": json.dumps(tools) if tools else None}


def test_a_tool_template_renders_calls_and_results_and_trains_on_the_calls_only(tool_tokenizer):
    from sft_pipeline.data.tokens import IGNORE, tokenize

    row, why, _ = make_row(load_row(AGENT, [WEATHER]), Context.build(TemplateConfig(kind="chat"), tool_tokenizer))
    assert why is None
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    assert row["text"] == (
        "<|im_start|>system\n# Tools\n<tools>\n" + json.dumps(WEATHER) + "\n</tools><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n" + call_text +
        '<|im_start|>tool\n<tool_response>\n{"sky": "clear"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\nClear skies.<|im_end|>\n")
    assert [row["text"][s:e] for s, e in row["spans"]] == [call_text, "Clear skies.<|im_end|>\n"]
    assert row["prompt"] == row["text"][: row["spans"][-1][0]]  # what generation continues: calls and results included
    assert (row["question"], row["reference"]) == ("Weather in Paris?", "Clear skies.")
    ids, labels = tokenize([row["text"]], [row["spans"]], tool_tokenizer, "assistant", add_eos=False).sample(0)
    trained = tool_tokenizer.decode([int(t) for t in labels if t != IGNORE])
    assert trained == call_text + "Clear skies.<|im_end|>\n"  # the loss is on the call, never on the tool's result


def _tokenizer_with(tiny_tokenizer, template):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = template
    return tok


def test_the_probe_asks_the_template_what_it_renders(tiny_tokenizer, tool_tokenizer):
    from helpers import TOOL_CHATML

    calls_only = TOOL_CHATML[TOOL_CHATML.index("{%- for m in messages %}"):]
    refuses = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}" \
              "{{ m.role + ': ' + m.content }}{% endfor %}"
    S = tool_support.ToolSupport
    assert tool_support.probe(tool_tokenizer) == S(calls=True, definitions=True)
    assert tool_support.probe(tiny_tokenizer) == S(calls=False, definitions=False)  # ChatML: the call would vanish
    assert tool_support.probe(_tokenizer_with(tiny_tokenizer, calls_only)) == S(calls=True, definitions=False)
    assert tool_support.probe(_tokenizer_with(tiny_tokenizer, refuses)) == S(calls=False, definitions=False)


@pytest.mark.parametrize("kind", ["chat", "seed", "custom"])
def test_tool_parts_a_template_cannot_render_are_a_named_drop(tiny_tokenizer, kind):
    """ChatML without tool support renders a call as an empty assistant turn; seed and custom
    have no place for one: the record is dropped under a named reason, never trained without it."""
    ctx = Context.build(TemplateConfig(kind=kind), tiny_tokenizer)
    assert make_row(load_row(AGENT), ctx)[:2] == (None, "tool_calls_unsupported")
    assert make_row(load_row(CONV[:2], [WEATHER]), ctx)[:2] == (None, "tool_definitions_unsupported")
    row, why, _ = make_row(load_row(CONV[:2]), ctx)
    text, spans = render(CONV[:2], TemplateConfig(kind=kind), tiny_tokenizer)
    assert why is None and row["text"] == text and row["spans"] == [list(s) for s in spans]


def test_definitions_the_template_cannot_render_drop_even_where_calls_render(tiny_tokenizer):
    from helpers import TOOL_CHATML

    tok = _tokenizer_with(tiny_tokenizer, TOOL_CHATML[TOOL_CHATML.index("{%- for m in messages %}"):])
    ctx = Context.build(TemplateConfig(kind="chat"), tok)
    assert make_row(load_row(AGENT), ctx)[1] is None
    assert make_row(load_row(AGENT, [WEATHER]), ctx)[:2] == (None, "tool_definitions_unsupported")


def _agent_data(folder, n_tool=3, n_plain=5):
    from helpers import write_jsonl

    def agent(i):
        return {"messages": [{"role": "user", "content": f"Weather in city {i}?"},
                             {"role": "assistant", "content": None, "tool_calls": [
                                 {"id": f"c{i}", "type": "function",
                                  "function": {"name": "get_weather", "arguments": json.dumps({"city": f"c{i}"})}}]},
                             {"role": "tool", "tool_call_id": f"c{i}", "content": "clear"},
                             {"role": "assistant", "content": f"Clear in city {i}."}], "tools": [WEATHER]}

    plain = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                           {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(n_plain)]
    rows = plain[:2] + [agent(i) for i in range(n_tool)] + plain[2:]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", [plain[0], agent(9)])
    return folder


@pytest.mark.parametrize("tool_template", [True, False], ids=["tool_template", "chatml"])
def test_template_stage_counts_what_it_drops(recipe_factory, tmp_path, tool_model_dir, tiny_model_dir, tool_template):
    import datasets

    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.rundir.files import read_json
    from sft_pipeline.stages import open_run_directory

    data = _agent_data(tmp_path / "agent")
    recipe = recipe_factory(data={"source": str(data)}, model={"ref": str(tool_model_dir if tool_template else tiny_model_dir)})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    update_stage(run, "load")
    update_stage(run, "template")
    stats = read_json(run.path / "template" / "stats.json")
    for split, read, tools in (("train", 8, 3), ("eval", 2, 1)):
        st = stats[split]
        assert st["read"] == read and st["kept"] + sum(st["dropped"].values()) == st["read"]
        assert st["kept"] == len(datasets.load_from_disk(str(run.path / "template" / split)))
        assert st["dropped"] == ({} if tool_template else {"tool_calls_unsupported": tools})
    assert (stats["tool_calls"], stats["tool_definitions"]) == (tool_template, tool_template)
    if not tool_template:
        assert stats["train"]["dropped_examples"] == {"tool_calls_unsupported": ["load/train row 2", "load/train row 3",
                                                                                 "load/train row 4"]}
    summary = read_json(run.path / "template" / "summary.json")
    assert summary["train"]["samples"] == stats["train"]["kept"] and summary["train"]["dropped"] == (0 if tool_template else 3)
    texts = datasets.load_from_disk(str(run.path / "template" / "train"))["text"]
    assert sum("<tool_call>" in t for t in texts) == (3 if tool_template else 0)


def test_template_stage_stops_when_no_row_of_a_split_can_be_rendered(recipe_factory, tmp_path, tiny_model_dir):
    from helpers import write_jsonl

    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.stages import open_run_directory
    from sft_pipeline.stages.template import TemplateStageError

    data = _agent_data(tmp_path / "agent")
    write_jsonl(data / "test.jsonl", [json.loads((data / "train.jsonl").read_text().splitlines()[2])])
    run = open_run_directory((recipe := recipe_factory(data={"source": str(data)})).resolved_run_dir(), recipe)
    update_stage(run, "load")
    with pytest.raises(TemplateStageError) as info:
        update_stage(run, "template")
    assert str(info.value) == "template: split 'eval' has no row the template can render ({'tool_calls_unsupported': 1})"
    from sft_pipeline.data.prompts import TemplateError

    assert isinstance(info.value, TemplateError)  # a user error: the CLI prints its one line and exits 2
    assert run.stage_state("template") == "missing"


# ---- where the record's content lies in the text (for control text, data/control.py) ----------

from sft_pipeline.data.prompts import content_spans  # noqa: E402

SYS_CONV = [{"role": "system", "content": "Be brief."}, *CONV]


@pytest.mark.parametrize("kind", ["seed", "custom", "chat"])
def test_content_spans_are_each_turns_content(tiny_tokenizer, kind):
    cfg = TemplateConfig(kind=kind, user="<u>{content}</u>", assistant="<a>{content}</a>") if kind == "custom" \
        else TemplateConfig(kind=kind)
    text, _ = render(SYS_CONV, cfg, tiny_tokenizer)
    spans = content_spans(SYS_CONV, cfg, text, tiny_tokenizer)
    assert [text[s:e] for s, e in spans] == [m["content"] for m in SYS_CONV]


def test_content_spans_leave_out_the_recipes_system_prompt(tiny_tokenizer):
    cfg = TemplateConfig(kind="chat", system="Recipe says hi.")
    text, _ = render(CONV, cfg, tiny_tokenizer)
    assert "Recipe says hi." in text
    assert [text[s:e] for s, e in content_spans(CONV, cfg, text, tiny_tokenizer)] == [m["content"] for m in CONV]


def test_content_spans_in_a_template_that_trims_and_one_that_rewrites(tiny_tokenizer):
    """Llama 3 and Gemma trim content: found, trimmed. A template that changes content
    otherwise cannot say where it went: None (the template stage drops such a record when its
    content has control text, as control_text_unplaced)."""
    trims = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    rewrites = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | replace('.', '!') }}<|im_end|>\n{% endfor %}"
    conv = [{"role": "user", "content": "  Hi?\n"}, {"role": "assistant", "content": "Hello. "}]
    cfg = TemplateConfig(kind="chat")
    tok = _tokenizer_with(tiny_tokenizer, trims)
    text, _ = render(conv, cfg, tok)
    assert [text[s:e] for s, e in content_spans(conv, cfg, text, tok)] == ["Hi?", "Hello."]
    tok = _tokenizer_with(tiny_tokenizer, rewrites)
    assert content_spans(conv, cfg, render(conv, cfg, tok)[0], tok) is None
