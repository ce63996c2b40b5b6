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
