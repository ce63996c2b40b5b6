import pytest
import torch


def test_mean_loss_equals_the_model_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sft_pipeline.stages.evaluate import mean_loss

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


def test_mean_loss_padding_free_with_per_sample_attention_equals_padded(tiny_model_dir):
    """evaluate's loss passes on bfd blocks: packed_sdpa on padding-free rows gives the loss of
    padded rows under the model's own attention with its block-diagonal mask."""
    from transformers import AutoModelForCausalLM

    from sft_pipeline.stages.evaluate import mean_loss
    from sft_pipeline.training import attention

    g = torch.Generator().manual_seed(0)
    blocks = []
    for lengths in ([9, 15], [20], [5, 7, 6]):
        ids = torch.randint(20, 300, (sum(lengths),), generator=g).tolist()
        labels = [t if i % 3 else -100 for i, t in enumerate(ids)]
        blocks.append({"input_ids": ids, "labels": labels, "position_ids": [p for n in lengths for p in range(n)]})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    padded = mean_loss(model, blocks, pad_id=0, batch_size=3, label="t")
    attention.register()
    assert attention.use(model, "packed_sdpa") == "packed_sdpa"
    packed = mean_loss(model, blocks, pad_id=0, batch_size=3, label="t", padding_free=True)
    assert packed == pytest.approx(padded, rel=1e-5)


def test_style_share():
    from sft_pipeline.config import HOUSE_STYLE
    from sft_pipeline.stages.evaluate import style_share

    rx = HOUSE_STYLE
    good = "TL;DR: Short.\n\nDetails:\n- one\n- two"
    assert style_share([good, "Plain prose answer.", good + "\n- three", "TL;DR: x\n\nDetails:\n- only one"], rx) == 0.5


def test_train_split_loss_only_when_asked(tmp_path):
    from sft_pipeline.stages.evaluate import scored_splits

    for name in ("train", "eval"):
        (tmp_path / name).mkdir()
    assert scored_splits(tmp_path, train_loss=False) == ["eval"]
    assert scored_splits(tmp_path, train_loss=True) == ["train", "eval"]
    (tmp_path / "eval").rmdir()
    assert scored_splits(tmp_path, train_loss=False) == []


def test_answer_rows_keep_earlier_evaluations_of_the_same_adapter_only(tmp_path):
    import json

    from sft_pipeline.config import HOUSE_STYLE
    from sft_pipeline.stages.evaluate import answer_rows

    good = "TL;DR: Short.\n\nDetails:\n- one\n- two"
    report = {"before": {"answers": ["plain", "x"]}, "after": {"answers": [good, "y"]}}
    first = answer_rows(tmp_path / "answers.json", "run1", ["q1", "q2"], report, HOUSE_STYLE)
    assert [(r["evaluation"], r["prompt"], r["after_follows_style"], r["before_follows_style"]) for r in first["rows"]] == [
        (1, "q1", True, False), (1, "q2", False, False)]
    (tmp_path / "answers.json").write_text(json.dumps(first))
    second = answer_rows(tmp_path / "answers.json", "run1", ["q1", "q2"], report, None)
    assert [r["evaluation"] for r in second["rows"]] == [1, 1, 2, 2] and "after_follows_style" not in second["rows"][-1]
    retrained = answer_rows(tmp_path / "answers.json", "run2", ["q1", "q2"], report, None)
    assert [r["evaluation"] for r in retrained["rows"]] == [1, 1]  # another trained adapter: a table of its own
