"""The FLOP count train logs MFU with, and the rate it divides by: one count for train and the
benchmark, counted from the model train holds, the rated peak of a known GPU or a measured
matmul kept for the resumed run."""

from __future__ import annotations

import pytest


def _peft(tiny_model_dir, targets="all-linear", quantize=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))


def test_the_model_counted_is_the_config_counted(tiny_model_dir):
    """train counts the model it holds; the benchmark counts from a config: the same numbers."""
    from sft_pipeline.training.flops import shape_from_config, shape_from_model

    model = _peft(tiny_model_dir)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape_from_model(model) == shape_from_config(model.get_base_model().config, lora)


def test_frozen_layers_outside_lora_are_counted_too(tiny_model_dir):
    """LoRA on q and v only: k, o and the MLP still cost 4 FLOPs a weight per token."""
    from sft_pipeline.training.flops import linear_params, shape_from_model

    model = _peft(tiny_model_dir, targets=["q_proj", "v_proj"])
    shape = shape_from_model(model)
    assert shape.linear == linear_params(model.get_base_model().config)
    assert shape.lora == 2 * (4 * (32 + 32) + 4 * (32 + 16))  # 2 layers, r=4: q 32->32, v 32->16


def test_step_flops_is_the_benchmarks():
    import importlib.util
    from pathlib import Path

    from sft_pipeline.training import flops

    path = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.step_flops is flops.step_flops and bench.matmul_rate is flops.matmul_rate


def test_rated_peak_for_known_gpus_only():
    from sft_pipeline.training.flops import rated

    assert rated("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert rated("NVIDIA L40S", "bf16") == 362e12  # not the L4's
    assert rated("NVIDIA L4", "bf16") == 121e12
    assert rated("Tesla T4", "bf16") is None and rated("Some New GPU", "bf16") is None and rated(None, "fp32") is None


def test_measured_rate_is_kept_for_the_resumed_run(tmp_path):
    from sft_pipeline.model.hardware import Hardware
    from sft_pipeline.training.flops import device_rate

    hw = Hardware("cpu", bf16_fast=False, reason="test", cpu_count=2, memory_bytes=1 << 30)
    cache = tmp_path / "matmul_rate.json"
    first = device_rate(hw, "fp32", cache)
    assert first.flops_per_second > 1e8 and first.how.startswith("measured: best fp32 torch.matmul")
    again = device_rate(hw, "fp32", cache)
    assert again.flops_per_second == first.flops_per_second and again.how.endswith("(cached at first start)")
    other = device_rate(hw, "bf16", cache, bf16_emulated=True)  # another dtype: measured, not the cached fp32 rate
    assert "bf16" in other.how and "cached" not in other.how


def test_window_rate_is_flops_over_time_against_the_rate():
    from sft_pipeline.training.flops import FlopShape
    from sft_pipeline.training.step_scalars import scalars, window_rate

    shape = FlopShape(linear=1000, lora=10, vocab=50, hidden=8, layers=2, heads=2, head_dim=4)
    work = [{"tokens": 100, "labelled": 40, "attention_pairs": 5000}, {"tokens": 60, "labelled": 20, "attention_pairs": 1800}]
    got = window_rate([0.5, 1.5], work, shape, rate=1e9)
    flops = 160 * (4 * 1000 + 60) + 60 * 4 * 50 * 8 + 6 * 2 * 2 * 4 * 6800
    assert got["train/tokens_per_second"] == pytest.approx(80.0)
    assert got["train/mfu"] == pytest.approx(flops / 2.0 / 1e9)
    row = scalars({"loss": 2.0, "learning_rate": 1e-3, "grad_norm": 0.5, "epoch": 0.1}, 7, got)
    assert row["train/global_step"] == 7 and row["train/perplexity"] == pytest.approx(7.389056, rel=1e-6)
    assert scalars({"loss": 1e4}, 1)["train/perplexity"] == float("inf")  # a diverged run, not an exception
    assert scalars({"train_runtime": 3.0}, 9) == {"train/global_step": 9}  # the end totals: no history row


def test_measuring_the_rate_leaves_torch_random_stream_alone():
    import torch

    from sft_pipeline.training.flops import matmul_rate

    torch.manual_seed(1)
    want = torch.rand(3)
    torch.manual_seed(1)
    matmul_rate("cpu", torch.float32, (64,), repeats=1)
    assert torch.equal(torch.rand(3), want)
