"""The train stage's speed measures keep its results: the labelled-positions loss is the model's
own loss (value and gradients), the trainer uses it only where it is, step timing, and the
benchmark's model building and FLOP counting (its GPU path on a tiny config)."""

import pytest
import torch

from sft_pipeline.hardware import Hardware
from sft_pipeline.loss import labelled_loss, unsupported_reason

CPU = Hardware("cpu", bf16_fast=False, reason="test", cpu_count=2, memory_bytes=24 * 1024**3)


def _packed_batch(vocab: int, seed: int = 0):
    """Two rows of bfd-packed samples: position_ids restart per sample, prompts labelled -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (2, 24), generator=g)
    pos = torch.tensor([list(range(10)) + list(range(14)), list(range(24))])
    labels = ids.clone()
    labels[0, :4] = -100
    labels[0, 10:15] = -100
    labels[1, :9] = -100
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def _lora_model(recipe_factory, **model):
    from sft_pipeline.stages.prepare import build_model

    torch.manual_seed(0)
    m = build_model(recipe_factory(model=model, lora={"lora_dropout": 0.0}), CPU, checkpointing=False)
    with torch.no_grad():  # B starts at zero: give the adapter something to differentiate
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return m


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("limit", [None, 0], ids=["materialized", "chunked"])
def test_labelled_loss_is_the_models_own_loss(recipe_factory, limit):
    model = _lora_model(recipe_factory)
    batch = _packed_batch(model.config.vocab_size)

    want = model(**batch, use_cache=False).loss
    want.backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    kwargs = {} if limit is None else {"limit_bytes": limit}
    got, count = labelled_loss(model, batch, **kwargs)
    got.backward()
    assert int(count) == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (float(got), float(want))
    for name, grad in _grads(model).items():
        assert torch.allclose(grad, want_grads[name], rtol=1e-4, atol=1e-7), name


def test_labelled_loss_divides_by_num_items_in_batch(recipe_factory):
    model = _lora_model(recipe_factory)
    batch = _packed_batch(model.config.vocab_size)
    mean, count = labelled_loss(model, batch)
    scaled, _ = labelled_loss(model, batch, num_items_in_batch=torch.tensor(100))
    assert torch.allclose(scaled * 100, mean * count, rtol=1e-5)


def test_labelled_loss_with_no_labelled_position_is_a_differentiable_zero(recipe_factory):
    model = _lora_model(recipe_factory)
    batch = _packed_batch(model.config.vocab_size)
    batch["labels"][:] = -100
    loss, count = labelled_loss(model, batch)
    loss.backward()
    assert float(loss) == 0.0 and int(count) == 0


def test_models_that_transform_their_logits_keep_their_own_loss(recipe_factory):
    model = _lora_model(recipe_factory)
    assert unsupported_reason(model) is None
    model.get_base_model().config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in unsupported_reason(model)
