import pytest
import torch


def test_mean_loss_equals_the_model_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sft_pipeline.evaluate import mean_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = list(range(20, 44))
    labels = [-100] * 10 + ids[10:]
    labels2 = [-100] * 6 + ids[6:12]
    blocks = [{"input_ids": ids, "labels": labels}, {"input_ids": ids[:12], "labels": labels2}]
    got = mean_loss(model, blocks, pad_id=0, batch_size=2, label="t")
    with torch.no_grad():
        l1 = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss * 14  # 14 labelled after shift
        l2 = model(input_ids=torch.tensor([ids[:12]]), labels=torch.tensor([labels2])).loss * 6
    assert got == pytest.approx(float((l1 + l2) / 20), rel=1e-5)


def test_style_share():
    from sft_pipeline.config import EvaluateConfig
    from sft_pipeline.evaluate import style_share

    rx = EvaluateConfig().style_regex
    good = "TL;DR: Short.\n\nDetails:\n- one\n- two"
    assert style_share([good, "Plain prose answer.", good + "\n- three", "TL;DR: x\n\nDetails:\n- only one"], rx) == 0.5
