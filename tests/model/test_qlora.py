"""QLoRA completes: the NF4 model computes in evaluation what it computes in training, the merge
into its dequantized weights reproduces the adapter on the NF4 base within merge.tolerance (fp32
and bf16 compute), and recipes/demo-qlora.yaml runs load..merge on a tiny model.

Why the first test exists: bitsandbytes on a CPU with AVX512-BF16 (this project's machine) runs a
Linear4bit, in eval mode without gradients, through a repacked inference kernel in bf16 with
bf16-rounded block scales, whatever the compute dtype; the merge check compared the merged model
with that and failed (0.638 on the demo recipe). models.load_model turns it off. On a CPU without
AVX512-BF16 bitsandbytes never takes that path, and the first test passes either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sft_pipeline.rundir.files import read_json

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TOLERANCE = 1e-3
TEXTS = ["What is the capital of France? Paris is the capital of France.",
         "TL;DR: Water boils at 100 degrees.\n\nDetails:\n- At sea level"]


@pytest.fixture(scope="module")
def nf4_model_dir(tmp_path_factory):
    """A 2-layer Llama wide enough for bitsandbytes' CPU inference kernel (64 inputs: one NF4
    block) with logits of a few units (init 0.1), so scale rounding shows in them."""
    from helpers import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("nf4-llama"), hidden_size=64, intermediate_size=128,
                           initializer_range=0.1)


def _qlora_model(ref, dtype, adapter_dir=None):
    """What prepare builds for an NF4 recipe (seed preparation, LoRA on all linear layers), with a
    random non-zero B so the adapter changes the logits; saved to adapter_dir if given."""
    from peft import LoraConfig, get_peft_model

    from sft_pipeline.model.build import seed_preparation
    from sft_pipeline.model.loader import load_model

    base = load_model(str(ref), dtype=dtype, quantization="nf4", compute_dtype=dtype)
    seed_preparation(base, checkpointing=False)
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    if adapter_dir is not None:
        model.save_pretrained(str(adapter_dir))
    return model


def _compute(dtype):
    """bf16 compute runs under autocast, as training does (norms are fp32 after seed preparation)."""
    from contextlib import nullcontext

    return nullcontext() if dtype == torch.float32 else torch.autocast(device_type="cpu", dtype=dtype)


def _batch(ref):
    from sft_pipeline.model.loader import load_tokenizer
    from sft_pipeline.model.merging import probe_batch

    batch = probe_batch(load_tokenizer(str(ref)), TEXTS)
    return batch, batch["attention_mask"].float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nf4_model_computes_the_same_in_eval_as_in_training(nf4_model_dir, dtype):
    from sft_pipeline.model.merging import logits_of, max_gap

    model = _qlora_model(nf4_model_dir, dtype)
    batch, mask = _batch(nf4_model_dir)
    with _compute(dtype):
        model.train()
        training = logits_of(model, batch)  # training's forward (no_grad changes nothing here)
        model.eval()
        evaluation = logits_of(model, batch)  # evaluation, generation, merge's reference
        model.train()
        after = logits_of(model, batch)  # training again, after an evaluation
    assert max_gap(training, evaluation, mask) == 0.0
    assert max_gap(training, after, mask) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dequantized_merge_matches_the_adapter_on_the_nf4_base(nf4_model_dir, tmp_path, dtype):
    """The merge stage's own steps: the adapter on the NF4 base (the reference, computed in fp32
    on the same NF4 codes, scales and other weights when training computes in bf16), the merge base
    dequantized from it, PEFT's merge; logits within merge.tolerance."""
    from types import SimpleNamespace

    from peft import PeftModel

    from sft_pipeline.model import merging as merge

    adapter = tmp_path / "adapter"
    _qlora_model(nf4_model_dir, dtype, adapter)
    batch, mask = _batch(nf4_model_dir)
    recipe = SimpleNamespace(model=SimpleNamespace(ref=str(nf4_model_dir), trust_remote_code=False, allow_pickle=False))

    from sft_pipeline.model.build import seed_preparation
    from sft_pipeline.model.loader import load_model

    base = load_model(str(nf4_model_dir), dtype=dtype, quantization="nf4", compute_dtype=dtype)
    seed_preparation(base, checkpointing=False)
    reference = PeftModel.from_pretrained(base, str(adapter))
    reference.eval()
    assert merge.compute_dtype_of(reference) == dtype
    with _compute(dtype):
        native = merge.logits_of(reference, batch)
    merge.upcast_to_fp32(reference)
    ref_logits = merge.logits_of(reference, batch)
    merged = PeftModel.from_pretrained(merge.dequantized_base(recipe, torch.float32, source=reference),
                                       str(adapter)).merge_and_unload()
    merged.eval()
    merged_logits = merge.logits_of(merged, batch)
    gap = merge.max_gap(merged_logits, ref_logits, mask)
    assert gap < TOLERANCE / 10, gap
    if dtype == torch.float32:
        assert merge.max_gap(native, ref_logits, mask) == 0.0  # nothing was upcast
    else:
        # bf16 compute moves the logits by more than the tolerance by itself: that is why the
        # check compares against the same NF4 model in fp32, and the merged model is as close to
        # what bf16 training computed as that fp32 reference is
        rounding = merge.max_gap(native, ref_logits, mask)
        assert rounding > TOLERANCE
        assert merge.max_gap(merged_logits, native, mask) < 1.5 * rounding


def _demo_qlora(tiny_model_dir, tmp_path, precision):
    from sft_pipeline.config import load_recipe

    return load_recipe(RECIPES / "demo-qlora.yaml", [
        f"run_dir={tmp_path / precision}",
        f"model.ref={tiny_model_dir}",
        f"train.precision={precision}",
        "data.max_records=12", "pack.seq_length=256",
        "lora.r=4", "lora.lora_alpha=8",
        "train.max_steps=2", "train.learning_rate=1e-2", "train.per_device_train_batch_size=2",
        "train.eval_strategy=no", "train.save_strategy=no", "train.logging_steps=1",
        "tracking.tensorboard=false",
    ])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_demo_qlora_recipe_runs_through_merge(tiny_model_dir, tmp_path, precision):
    from sft_pipeline.orchestration.pipeline import update_stages

    recipe = _demo_qlora(tiny_model_dir, tmp_path, precision)
    assert recipe.model.quantization == "nf4" and recipe.merge.base == "dequantized"
    run = update_stages(recipe)  # load .. merge
    assert read_json(run.path / "prepare" / "prepare.json")["quantization"] == "nf4"
    verify = read_json(run.path / "merge" / "verify.json")
    assert verify["passed"] and verify["quantized_training"] and verify["base"] == "dequantized"
    assert verify["max_abs_logit_gap"] < verify["tolerance"] == TOLERANCE
    assert verify["reference_compute_dtype"] == "float32"
    assert verify["training_compute_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert (run.path / "merge" / "model" / "model.safetensors").is_file()


def test_demo_qlora_is_the_demo_recipe_with_nf4():
    from sft_pipeline.config import load_recipe

    demo, qlora = load_recipe(RECIPES / "demo.yaml"), load_recipe(RECIPES / "demo-qlora.yaml")
    assert qlora.model.quantization == "nf4" and qlora.train.precision == "auto"
    for section in ("data", "template", "pack", "lora", "train", "generate"):
        assert getattr(qlora, section) == getattr(demo, section), section
    assert qlora.model.model_copy(update={"quantization": "none"}) == demo.model
