import numpy as np
import pytest

from sft_pipeline.config import PackConfig, TemplateConfig
from sft_pipeline.stages.pack import IGNORE, Tokens, bfd_bins, fit, pack, pack_wrapped, tokenize
from sft_pipeline.stages.template import render


def _samples(lengths, start=10):
    out, tok = [], start
    for n in lengths:
        ids = np.arange(tok, tok + n)
        out.append((ids, ids.copy()))
        tok += n
    return out


def _pack(samples, cfg, eos_id=2):
    blocks, stats = pack(Tokens.from_samples(samples), cfg, eos_id)
    return blocks.rows(), stats


def reference_constant_length(samples, seq_length, eos):
    """The seed's ConstantLengthDataset loop, written plainly."""
    buffer, blocks = [], []
    for ids, _ in samples:
        buffer.extend(list(ids) + [eos])
    for i in range(0, len(buffer), seq_length):
        block = buffer[i : i + seq_length]
        if len(block) == seq_length:
            blocks.append(block)
    return blocks


def test_wrapped_equals_reference_loop():
    samples = _samples([5, 9, 3, 14, 7, 1])
    blocks, stats = pack_wrapped(Tokens.from_samples(samples), 8, eos_id=2)
    assert [b["input_ids"] for b in blocks.rows()] == reference_constant_length(samples, 8, 2)
    assert stats["tail_tokens_dropped"] == (sum([5, 9, 3, 14, 7, 1]) + 6) % 8


def test_bfd_bins_best_fit_decreasing():
    assert bfd_bins([6, 5, 4, 3, 2], 8) == [[0, 4], [1, 3], [2]]


def test_bfd_keeps_samples_whole_and_restarts_positions():
    samples = _samples([6, 5, 4, 3, 2])
    blocks, stats = _pack(samples, PackConfig(seq_length=8, strategy="bfd"))
    seen = sorted(t for b in blocks for t in b["input_ids"])
    assert seen == sorted(t for s in samples for t in s[0].tolist())  # nothing lost or duplicated
    for b in blocks:
        assert len(b["input_ids"]) <= 8
        starts = [i for i, p in enumerate(b["position_ids"]) if p == 0]
        lengths = np.diff(starts + [len(b["position_ids"])]).tolist()
        for s, n in zip(starts, lengths):
            assert b["position_ids"][s : s + n] == list(range(n))
    assert stats["blocks"] == 3 and stats["tokens"] == 20


def test_overlong_truncate_and_drop_are_counted():
    samples = _samples([12, 3])
    _, t = _pack(samples, PackConfig(seq_length=8, strategy="bfd", overlong="truncate"))
    _, d = _pack(samples, PackConfig(seq_length=8, strategy="bfd", overlong="drop"))
    assert (t["truncated"], t["dropped_overlong"], t["blocks"]) == (1, 0, 2)
    assert (d["truncated"], d["dropped_overlong"], d["blocks"]) == (0, 1, 1)


def test_truncation_that_removes_every_trained_token_drops_the_sample():
    ids = np.arange(10, 22)
    labels = np.where(np.arange(12) >= 9, ids, IGNORE)  # the answer starts at token 9
    _, stats = _pack([(ids, labels)], PackConfig(seq_length=8, strategy="none"))
    assert stats["dropped_no_labels"] == 1 and stats["blocks"] == 0


@pytest.mark.parametrize("kind", ["seed", "chat"])
def test_loss_on_assistant_labels_exactly_the_answers(tiny_tokenizer, kind):
    conv = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital."},
            {"role": "user", "content": "And water?"},
            {"role": "assistant", "content": "Water boils at 100 degrees."}]
    cfg = TemplateConfig(kind=kind)
    text, spans = render(conv, cfg, tiny_tokenizer)
    ids, labels = tokenize([text], [spans], tiny_tokenizer, "assistant", add_eos=(kind == "seed")).sample(0)
    trained = tiny_tokenizer.decode([int(t) for t in labels if t != IGNORE])
    if kind == "chat":
        expected = "Paris is the capital.<|im_end|>\nWater boils at 100 degrees.<|im_end|>\n"
    else:  # byte-level BPE keeps the space before each answer; EOS closes the last answer
        expected = " Paris is the capital. Water boils at 100 degrees.<|im_end|>"
    assert trained == expected
    assert all(l == IGNORE or l == i for i, l in zip(ids, labels))


def test_loss_on_all_labels_every_token(tiny_tokenizer):
    ids, labels = tokenize(["hello world"], [[]], tiny_tokenizer, "all", add_eos=True).sample(0)
    assert labels.tolist() == ids.tolist() and ids[-1] == tiny_tokenizer.eos_token_id


def test_bfd_block_logits_equal_each_sample_alone(tiny_model_dir):
    """No attention across packed samples: logits inside the block == logits of the sample alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_pipeline.collate import PackedCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    samples = _samples([7, 5, 9], start=20)
    blocks, _ = _pack(samples, PackConfig(seq_length=32, strategy="bfd"))
    assert len(blocks) == 1
    batch = PackedCollator(pad_id=0)(blocks)
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False matters: with a cache, transformers ignores the packed position_ids
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for n in [7, 5, 9]:  # members keep dataset order inside the block
            ids = torch.tensor(blocks[0]["input_ids"][offset : offset + n])[None]
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(packed[offset : offset + n], alone, atol=1e-5, rtol=1e-5)
            offset += n
