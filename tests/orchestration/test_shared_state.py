"""Helpers leave no state behind: a tokenizer passed to generate or probe_batch keeps its padding
side, and packed attention keeps no tensor past the forward that made it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch


@pytest.fixture
def own_tokenizer(tiny_model_dir):
    """A fresh tokenizer, not the session's: these tests set its padding side."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPTS = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nWhat is the capital of France, and why?<|im_end|>\n<|im_start|>assistant\n"]


def test_generate_pads_left_without_changing_the_callers_tokenizer(tiny_model_dir, own_tokenizer):
    from transformers import AutoModelForCausalLM

    from sft_pipeline.config import GenerateConfig
    from sft_pipeline.model.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    own_tokenizer.padding_side = "right"
    alone = [generate(model, own_tokenizer, [p], GenerateConfig(max_new_tokens=6, batch_size=1))[0] for p in PROMPTS]
    batched = generate(model, own_tokenizer, PROMPTS, GenerateConfig(max_new_tokens=6, batch_size=2))
    assert own_tokenizer.padding_side == "right"
    # greedy answers do not depend on the batch only when the prompts are padded on the left
    assert batched == alone


def test_probe_batch_pads_right_without_changing_the_callers_tokenizer(own_tokenizer):
    from sft_pipeline.model.merging import probe_batch

    own_tokenizer.padding_side = "left"
    batch = probe_batch(own_tokenizer, PROMPTS)
    assert own_tokenizer.padding_side == "left"
    short = batch["attention_mask"][0]
    assert short[0] == 1 and short[-1] == 0  # the short text's padding is on its right


def test_spans_are_computed_once_per_forward(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_pipeline.training import attention

    attention.register()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attention.NAME)
    model = LlamaForCausalLM(config).eval()
    calls = []
    real = attention.sample_spans
    monkeypatch.setattr(attention, "sample_spans", lambda pos: calls.append(pos) or real(pos))
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        for _ in range(2):  # two forwards, each with its own position_ids
            model(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]))
    assert len(calls) == 2  # once per forward, not once per layer (3 layers)


def test_no_tensor_is_kept_after_its_forward():
    from sft_pipeline.training.attention import forward_spans

    pos = torch.tensor([[0, 1, 2, 0, 1]])
    first = forward_spans(pos)
    assert first == [[(0, 3), (3, 5)]] and forward_spans(pos) is first  # the layers after the first
    alive = weakref.ref(pos)
    del pos
    gc.collect()
    assert alive() is None  # the cache did not keep the batch's tensor alive
    from sft_pipeline.training import attention

    assert attention._forward_spans == []  # nor its spans


def test_a_tensor_written_in_place_gets_new_spans():
    from sft_pipeline.training.attention import forward_spans

    pos = torch.tensor([[0, 1, 2, 0, 1]])
    assert forward_spans(pos) == [[(0, 3), (3, 5)]]
    pos[0, 3:] = torch.tensor([3, 4])  # one sample now
    assert forward_spans(pos) == [[(0, 5)]]
