import torch
from helpers import opt_1_3b_config

from sft_pipeline.config import recipe_from_dict
from sft_pipeline.model.build import build_model, count_params, seed_preparation
from sft_pipeline.model.hardware import Hardware
from sft_pipeline.training.memory_plan import plan_memory

CPU = Hardware("cpu", bf16_fast=False, reason="test", cpu_count=2, memory_bytes=24 * 1024**3)


def test_opt_1_3b_seed_lora_counts_match_the_seed():
    """The seed prints: trainable params: 3145728 || all params: 1318903808 || trainable%: 0.2385"""
    recipe = recipe_from_dict({"lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                                        "target_modules": ["q_proj", "v_proj"]},
                               "pack": {"seq_length": 1024}, "train": {"per_device_train_batch_size": 8}})
    est, checkpointing, plan = plan_memory(recipe, opt_1_3b_config(), CPU)
    assert (plan["trainable"], plan["total"]) == (3_145_728, 1_318_903_808)
    assert round(100 * plan["trainable"] / plan["total"], 4) == 0.2385
    # 1.3B fp32 weights alone are ~4.9 GiB; batch 8 x 1024 activations do not fit 24 GB without checkpointing
    assert 4.8 < est.weights / 1024**3 < 5.0
    assert checkpointing and est.total(True) < est.total(False)


def test_checkpointing_auto_stays_off_when_memory_is_ample(tiny_model_dir):
    from transformers import AutoConfig

    recipe = recipe_from_dict({"model": {"ref": str(tiny_model_dir)}})
    _, checkpointing, plan = plan_memory(recipe, AutoConfig.from_pretrained(tiny_model_dir), CPU)
    assert not checkpointing and plan["why"].startswith("auto:")


def test_seed_preparation_freezes_and_casts_norms_to_fp32(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    seed_preparation(model, checkpointing=True)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.ndim == 1)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if p.ndim == 2)
    assert model.is_gradient_checkpointing
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as Trainer runs a bf16 model
        out = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.dtype == torch.float32  # the seed's CastOutputToFloat on the LM head


def test_build_model_lora_all_linear(recipe_factory):
    recipe = recipe_factory()
    model = build_model(recipe, CPU, checkpointing=False)
    trainable, total = count_params(model)
    # 2 layers x (q,k,v,o,gate,up,down) adapted at r=4
    assert sorted({t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules}) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_qlora_nf4_trains_on_cpu(recipe_factory):
    """bitsandbytes NF4 with double quantization: forward and backward on the CPU."""
    import bitsandbytes as bnb

    recipe = recipe_factory(model={"quantization": "nf4"})
    model = build_model(recipe, CPU, checkpointing=True)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 14
    assert linears[0].weight.quant_type == "nf4" and linears[0].weight.quant_state.nested  # double quant
    ids = torch.tensor([[5, 6, 7, 8]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_prepare_stage_records_counts_and_adapter(recipe_factory):
    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.rundir.files import read_json
    from sft_pipeline.stages import open_run_directory

    recipe = recipe_factory()
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    assert update_stage(run, "prepare")
    rec = read_json(run.path / "prepare" / "prepare.json")
    assert rec["trainable_params"] > 0 and rec["total_params"] > rec["trainable_params"]
    assert (run.path / "prepare" / "adapter" / "adapter_model.safetensors").is_file()
    assert rec["memory_estimate_bytes"]["total_with_checkpointing"] <= rec["memory_estimate_bytes"]["total_without_checkpointing"]


def test_memory_total_takes_the_larger_transient_and_the_factor_of_the_mode():
    from sft_pipeline.training.memory import MemoryEstimate

    est = MemoryEstimate(weights=100, adapter_and_optimizer=10, activations_full=400, activations_checkpointed=40,
                         logits=60, evaluation=0, runtime=50, allocator_factor=2.0, allocator_factor_checkpointed=3.0)
    assert est.total(False) == 50 + 100 + 10 + (400 + 60) * 2
    assert est.total(True) == 50 + 100 + 10 + (40 + 60) * 3
    evaluating = MemoryEstimate(**{**est.__dict__, "evaluation": 200})
    assert evaluating.total(True) == 50 + 100 + 10 + 200 * 3  # the eval batch is the larger transient
    logits_heavy = MemoryEstimate(**{**est.__dict__, "activations_full": 50, "logits": 500})
    assert logits_heavy.total(True) == logits_heavy.total(False)  # never above running without checkpointing
