"""bf16 where the hardware runs it fast, fp32 elsewhere, and both code paths tested on any host.

The CPU profile is injected (SFT_PIPELINE_CPU_PROFILE), so an AVX2 host runs the bf16 path
(emulated bf16: slow, but correct at these tiny shapes) and a bf16 host runs the fp32 path.
"""

from __future__ import annotations

import json

import pytest
import torch

from sft_pipeline.config import recipe_from_dict
from sft_pipeline.model import precision
from sft_pipeline.model.hardware import PROFILE_ENV, Hardware, HardwareError, default_threads, detect

BF16_CPU = Hardware("cpu", bf16_fast=True, reason="test: AVX512-BF16", cpu_count=2, memory_bytes=24 * 1024**3)
AVX2_CPU = Hardware("cpu", bf16_fast=False, reason="test: AVX2 only", cpu_count=2, memory_bytes=24 * 1024**3)
PROFILES = {"bf16": "bf16", "avx2": "fp32"}  # injected profile -> the precision `auto` must pick

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU host decides precision by its GPU")


@cpu_only
@pytest.mark.parametrize("profile", PROFILES)
def test_injected_profile_decides_what_detection_reports(profile, monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, profile)
    hw = detect()
    assert hw.bf16_fast == (profile == "bf16") and PROFILE_ENV in hw.reason
    recipe = recipe_from_dict({})
    assert precision.plan(recipe, hw).compute == PROFILES[profile]


@cpu_only
def test_a_bad_profile_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "avx9000")
    with pytest.raises(HardwareError, match=f"^{PROFILE_ENV}=avx9000: expected one of auto, bf16, avx2$"):
        detect()


def test_bf16_cpu_trains_bf16_weights_under_autocast_with_fp32_adapter():
    p = precision.plan(recipe_from_dict({}), BF16_CPU)
    assert (p.compute, p.weights, p.autocast, p.adapter, p.warning) == ("bf16", "bfloat16", True, "float32", None)
    fp32_weights = precision.plan(recipe_from_dict({"model": {"dtype": "float32"}}), BF16_CPU)
    assert (fp32_weights.compute, fp32_weights.weights, fp32_weights.autocast) == ("bf16", "float32", True)
    assert "model.dtype" in fp32_weights.why


def test_avx2_cpu_trains_fp32_without_autocast_and_warns_on_bf16():
    p = precision.plan(recipe_from_dict({}), AVX2_CPU)
    assert (p.compute, p.weights, p.autocast) == ("fp32", "float32", False)
    asked = precision.plan(recipe_from_dict({"train": {"precision": "bf16"}}), AVX2_CPU)
    assert asked.compute == "bf16" and "slowly" in asked.warning
    with precision.autocast(p, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast(asked, "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_threads_follow_physical_cores_unless_overridden(monkeypatch):
    import psutil

    monkeypatch.delenv("SFT_PIPELINE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == (psutil.cpu_count(logical=False) or psutil.cpu_count(), "physical cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("SFT_PIPELINE_THREADS", "1")
    assert default_threads() == (1, "SFT_PIPELINE_THREADS")
    monkeypatch.setenv("SFT_PIPELINE_THREADS", "many")
    with pytest.raises(HardwareError, match="SFT_PIPELINE_THREADS=many"):
        default_threads()


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (2, 48), generator=g)
    labels = ids.clone()
    labels[:, :10] = -100
    position_ids = torch.cat([torch.arange(20), torch.arange(28)]).repeat(2, 1)
    return {"input_ids": ids, "labels": labels, "position_ids": position_ids}


@pytest.mark.parametrize("hw", [BF16_CPU, AVX2_CPU], ids=["bf16", "fp32"])
def test_labelled_loss_under_the_plans_autocast_is_the_models_own_loss(hw, recipe_factory):
    """The train stage's loss runs the backbone and LM head outside the model's forward; under
    bf16 it must take the same autocast (it failed with 'expected m1 and m2 to have the same
    dtype' before), give the model's own loss, and leave fp32 gradients on fp32 LoRA weights."""
    from sft_pipeline.model.build import build_model
    from sft_pipeline.training import attention
    from sft_pipeline.training.loss import labelled_loss

    recipe = recipe_factory(lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    torch.manual_seed(0)
    model = build_model(recipe, hw, checkpointing=False)
    with torch.no_grad():  # a non-zero B, so the adapter takes part in the loss
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    attention.use(model.get_base_model(), attention.register())
    plan = precision.plan(recipe, hw)
    batch = _batch(model.config.vocab_size)
    with precision.autocast(plan, "cpu"):
        loss, count = labelled_loss(model, batch)
        own = model(**batch).loss
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss.detach()) - float(own.detach())) <= (2e-2 if plan.compute == "bf16" else 1e-5) * float(own.detach())
    loss.backward()
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                        and torch.isfinite(p.grad).all() for p in lora)
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and p.ndim == 2}
    assert frozen == {plan.weights_dtype}


@cpu_only
@pytest.mark.parametrize("profile", PROFILES)
def test_every_stage_runs_in_the_profiles_precision(profile, recipe_factory, monkeypatch):
    """load..merge and evaluate on the tiny model under each CPU profile: the precision each stage
    recorded is the profile's, the adapter is fp32, training moved it, and the merge verifies."""
    from safetensors.torch import load_file

    from sft_pipeline.orchestration.pipeline import update_stage, update_stages

    monkeypatch.setenv(PROFILE_ENV, profile)
    want = PROFILES[profile]
    recipe = recipe_factory(train={"max_steps": 3, "learning_rate": 5e-2, "eval_strategy": "steps", "eval_steps": 3},
                            evaluate={"max_prompts": 2, "pairs": 1})
    run = update_stages(recipe)
    update_stage(run, "evaluate")
    prep = json.loads((run.path / "prepare" / "prepare.json").read_text())
    assert prep["precision"]["compute"] == want and prep["trainable_dtypes"] == ["float32"]
    assert prep["dtype"] == ("bfloat16" if want == "bf16" else "float32")
    metrics = json.loads((run.path / "train" / "metrics.json").read_text())
    assert metrics["precision"] == want and metrics["attention"] == "packed_sdpa" and metrics["padding_free"]
    assert metrics["fast_lora_dropout"] > 0
    # under autocast the LoRA layers keep their bf16 input (PEFT's cast to fp32 is turned off)
    cast = f"off on {metrics['fast_lora_dropout']} layers" if want == "bf16" else "kept"  # every LoRA layer
    assert metrics["lora_input_cast"].startswith(cast)
    assert all(torch.isfinite(torch.tensor(metrics["eval_losses"])))
    trained = load_file(str(run.path / "train" / "adapter" / "adapter_model.safetensors"))
    start = load_file(str(run.path / "prepare" / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    assert json.loads((run.path / "merge" / "verify.json").read_text())["passed"]
    report = json.loads((run.path / "evaluate" / "report.json").read_text())
    assert report["precision"]["compute"] == want
    assert len(report["after"]["answers"]) == 2
