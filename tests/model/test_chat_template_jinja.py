"""The recipe's template as the GGUF's Jinja chat template and as the Modelfile's Go template
(model/chat_template.py, model/modelfile.py): each must render what training rendered."""

from __future__ import annotations

import pytest

from sft_pipeline.config import GenerateConfig, TemplateConfig
from sft_pipeline.data.prompts import _render_plain, _with_system, render_prompt
from sft_pipeline.model.chat_template import (
    chat_layout,
    find_layout,
    gguf_chat_template,
    jinja_template,
    ollama_template,
    plain_layout,
)
from sft_pipeline.model.modelfile import ModelfileError, modelfile_text

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "It's \"quoted\", a \\ backslash,\n{{ braces }} and {% tags %}"},
     {"role": "assistant", "content": "TL;DR: 4.\n\nDetails:\n- two and two"},
     {"role": "user", "content": "And times two? ünïcødé"}],
    [{"role": "system", "content": "Own system."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]

PLAIN = {
    "seed": TemplateConfig(kind="seed"),
    "seed-system": TemplateConfig(kind="seed", system="You answer briefly."),
    # formats whose own text needs escaping in both languages: quotes, backslashes, braces, tabs
    "custom-awkward": TemplateConfig(kind="custom", user="<q>'{content}'\\</q>", assistant='{{A}} "{content}"\t',
                                     separator="\n---\n", system="It's {{sys}}"),
}


def _hf_render(template: str, messages, gen: bool, tokenizer) -> str:
    tokenizer.chat_template = template  # the tiny tokenizer is session-wide: the caller restores it
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


@pytest.fixture
def scratch_tokenizer(tiny_tokenizer):
    saved = tiny_tokenizer.chat_template
    yield tiny_tokenizer
    tiny_tokenizer.chat_template = saved


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "multi-turn", "own-system"])
def test_generated_jinja_renders_what_render_prompt_renders(name, messages, scratch_tokenizer):
    """transformers' engine (trim_blocks, lstrip_blocks) and llama-cpp-python's formatter, the one
    that reads a GGUF's tokenizer.chat_template, both give render_prompt's text exactly."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    cfg = PLAIN[name]
    template = gguf_chat_template(cfg, None)
    assert template == jinja_template(plain_layout(cfg))
    assert _hf_render(template, messages, True, scratch_tokenizer) == render_prompt(messages, cfg)
    assert _hf_render(template, messages, False, scratch_tokenizer) == _render_plain(_with_system(messages, cfg), cfg)[0]
    formatted = Jinja2ChatFormatter(template, eos_token="</s>", bos_token="<s>")(messages=messages)
    assert formatted.prompt == render_prompt(messages, cfg)


def test_layout_render_is_render_prompt():
    for cfg in PLAIN.values():
        for messages in CONVERSATIONS:
            assert plain_layout(cfg).render(messages, True) == render_prompt(messages, cfg)


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from sft_pipeline.model.loader import resolve

    return AutoTokenizer.from_pretrained(resolve("bundled:smollm2-135m-instruct").path)


@pytest.mark.parametrize("system", [None, "Be terse."])
def test_chat_kind_keeps_the_tokenizers_template_with_the_recipes_system(smol_tokenizer, system):
    import copy

    cfg = TemplateConfig(kind="chat", system=system)
    template = gguf_chat_template(cfg, smol_tokenizer)
    assert (template == smol_tokenizer.chat_template) == (system is None)
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = template
    for messages in CONVERSATIONS:
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            render_prompt(messages, cfg, smol_tokenizer)


def test_a_chatml_template_is_read_as_a_layout_with_its_default_system(smol_tokenizer):
    layout = chat_layout(TemplateConfig(kind="chat"), smol_tokenizer)
    assert layout is not None
    assert layout.prefix == {"system": "<|im_start|>system\n", "user": "<|im_start|>user\n",
                             "assistant": "<|im_start|>assistant\n"}
    assert set(layout.suffix.values()) == {"<|im_end|>\n"} and layout.generation == "<|im_start|>assistant\n"
    assert layout.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    cfg = TemplateConfig(kind="chat", system="Be terse.")
    assert chat_layout(cfg, smol_tokenizer).default_system == "Be terse."
    for messages in CONVERSATIONS:
        assert chat_layout(cfg, smol_tokenizer).render(messages, True) == render_prompt(messages, cfg, smol_tokenizer)


def test_a_template_that_rewrites_content_has_no_layout():
    from jinja2 import Template

    trims = Template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}</>{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert find_layout(lambda messages, gen: trims.render(messages=messages, add_generation_prompt=gen)) is None
    keeps = Template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    found = find_layout(lambda messages, gen: keeps.render(messages=messages, add_generation_prompt=gen))
    assert found is not None and found.prefix["user"] == "<user>" and found.default_system is None


def test_ollama_template_of_the_seed_format():
    """Go templates cannot run here (no Ollama): the exact text, read against Ollama's template
    docs: .Messages with .Role/.Content, literals printed through actions, the answer opened
    after a last non-assistant turn."""
    assert ollama_template(plain_layout(TemplateConfig(kind="seed"))) == (
        '{{- range $i, $m := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}'
        '{{- if $i }}{{ "\\n\\n" }}{{ end }}'
        '{{- if eq $m.Role "system" }}{{ $m.Content }}'
        '{{- else if eq $m.Role "user" }}{{ "Question: " }}{{ $m.Content }}'
        '{{- else }}{{ "Answer: " }}{{ $m.Content }}{{- end }}'
        '{{- if and $last (ne $m.Role "assistant") }}{{ "\\n\\nAnswer: " }}{{ end }}{{- end }}')


def test_ollama_template_of_chatml_closes_turns_except_an_open_answer(smol_tokenizer):
    text = ollama_template(chat_layout(TemplateConfig(kind="chat"), smol_tokenizer))
    assert '{{- else if eq $m.Role "user" }}{{ "<|im_start|>user\\n" }}{{ $m.Content }}{{ "<|im_end|>\\n" }}' in text
    assert '{{ "<|im_start|>assistant\\n" }}{{ $m.Content }}{{- if not $last }}{{ "<|im_end|>\\n" }}{{ end }}' in text
    assert "{{- if $i }}" not in text  # ChatML has no separator between turns
    # "{{" in a format is printed by an action, never opens one
    assert '{{ "{{A}} \\"" }}{{ $m.Content }}{{- if not $last }}{{ "\\"\\t" }}' in \
        ollama_template(plain_layout(PLAIN["custom-awkward"]))


def test_modelfile_greedy_and_sampling():
    layout = plain_layout(TemplateConfig(kind="seed", system="Be brief."))
    greedy = modelfile_text("model-Q4_K_M.gguf", layout, "Be brief.", ["</s>"], GenerateConfig(max_new_tokens=64),
                            "header line")
    lines = greedy.splitlines()
    assert lines[0] == "# header line" and lines[1] == "FROM ./model-Q4_K_M.gguf"
    assert lines[2] == f'TEMPLATE """{ollama_template(layout)}"""'
    assert lines[3:] == ['SYSTEM """Be brief."""', 'PARAMETER stop "</s>"', "PARAMETER temperature 0",
                         "PARAMETER repeat_penalty 1.0", "PARAMETER seed 42", "PARAMETER num_predict 64"]
    sampled = modelfile_text("m.gguf", None, None, ["<|im_end|>"], GenerateConfig(
        do_sample=True, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.5, seed=7, max_new_tokens=10), "h")
    assert "TEMPLATE" not in sampled.split("# no TEMPLATE")[0] and "SYSTEM" not in sampled
    assert sampled.splitlines()[-7:] == ['PARAMETER stop "<|im_end|>"', "PARAMETER temperature 0.7", "PARAMETER top_p 0.9",
                                         "PARAMETER top_k 40", "PARAMETER repeat_penalty 1.5", "PARAMETER seed 7",
                                         "PARAMETER num_predict 10"]
    with pytest.raises(ModelfileError, match='SYSTEM would contain """'):
        modelfile_text("m.gguf", layout, 'say """hi"""', [], GenerateConfig(), "h")
