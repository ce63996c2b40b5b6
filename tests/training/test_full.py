"""method: lora | qlora | full. Full fine-tuning on the tiny model: every weight trained in fp32
master weights, its own memory estimate, the trained model as the export (merge links it),
evaluate and generate on it, and resume from its checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from helpers import opt_1_3b_config, printed_table, saved_activation_bytes
from typer.testing import CliRunner

from sft_pipeline.cli import app
from sft_pipeline.config import (
    RecipeError,
    load_recipe,
    recipe_from_dict,
    recipe_to_yaml,
)
from sft_pipeline.model import precision
from sft_pipeline.model.hardware import Hardware
from sft_pipeline.orchestration.pipeline import update_stage, update_stages
from sft_pipeline.rundir.files import read_json

AVX2_CPU = Hardware("cpu", bf16_fast=False, reason="test: AVX2 only", cpu_count=2, memory_bytes=24 * 1024**3)
BF16_CPU = Hardware("cpu", bf16_fast=True, reason="test: AVX512-BF16", cpu_count=2, memory_bytes=24 * 1024**3)
runner = CliRunner()


# ---- the method key: one way to say each method ------------------------------------------------

@pytest.mark.parametrize("tree, method, quantization", [
    ({}, "lora", "none"),
    ({"model": {"quantization": "nf4"}}, "qlora", "nf4"),  # recipes written before `method`
    ({"method": "qlora"}, "qlora", "nf4"),
    ({"method": "qlora", "model": {"quantization": "nf4"}}, "qlora", "nf4"),
    ({"method": "full"}, "full", "none"),
])
def test_method_and_quantization_say_one_thing(tree, method, quantization):
    recipe = recipe_from_dict(tree)
    assert (recipe.method, recipe.model.quantization) == (method, quantization)
    again = recipe_from_dict(yaml.safe_load(recipe_to_yaml(recipe)))  # the frozen recipe.yaml reads the same
    assert (again.method, again.model.quantization) == (method, quantization)


@pytest.mark.parametrize("tree, keys", [
    ({"method": "full", "model": {"quantization": "nf4"}}, ("method: full", "model.quantization: nf4")),
    ({"method": "lora", "model": {"quantization": "nf4"}}, ("method: lora", "method: qlora")),
    ({"method": "qlora", "model": {"quantization": "none"}}, ("method: qlora", "model.quantization: none")),
    ({"method": "full", "model": {"dtype": "bfloat16"}}, ("model.dtype: bfloat16", "method: full")),
    ({"method": "full", "merge": {"dtype": "float16"}}, ("merge.dtype: float16", "method: full")),
    ({"method": "sgd"}, ("method:",)),
])
def test_nonsense_combinations_are_one_line_naming_the_keys(tmp_path, tree, keys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "run_dir": str(tmp_path / "run"), **tree}))
    result = runner.invoke(app, ["validate", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: ") and all(k in lines[0] for k in keys), lines[0]
    assert "Value error" not in lines[0]
    with pytest.raises(RecipeError):
        recipe_from_dict(tree)


def test_set_method_full_on_the_demo_recipe():
    recipe = load_recipe("recipes/demo.yaml", ["method=full"])
    assert recipe.method == "full" and recipe.model.quantization == "none"
    with pytest.raises(RecipeError, match="method: full with model.quantization: nf4"):
        load_recipe("recipes/demo-qlora.yaml", ["method=full"])


def test_demo_full_recipe_is_the_demo_in_full_at_a_full_fine_tuning_learning_rate():
    full, lora = load_recipe("recipes/demo-full.yaml"), load_recipe("recipes/demo.yaml")
    assert full.method == "full" and 1e-5 <= full.train.learning_rate <= 5e-5
    assert lora.train.learning_rate >= 10 * full.train.learning_rate
    same = ("data", "template", "pack", "evaluate", "generate")
    assert all(getattr(full, s) == getattr(lora, s) for s in same)


# ---- precision: fp32 master weights, bf16 only under autocast ----------------------------------

def test_full_keeps_fp32_weights_where_lora_would_take_bf16_ones():
    full = precision.plan(recipe_from_dict({"method": "full"}), BF16_CPU)
    assert (full.compute, full.weights, full.autocast) == ("bf16", "float32", True) and "method full" in full.why
    lora = precision.plan(recipe_from_dict({}), BF16_CPU)
    assert lora.weights == "bfloat16"
    assert precision.plan(recipe_from_dict({"method": "full"}), AVX2_CPU).compute == "fp32"


def test_build_model_full_trains_every_weight_in_fp32(recipe_factory):
    from sft_pipeline.model.build import build_model, count_params

    model = build_model(recipe_factory(method="full"), BF16_CPU, checkpointing=True)
    assert not hasattr(model, "peft_config")
    params = list(model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert model.is_gradient_checkpointing
    trainable, total = count_params(model)
    assert trainable == total == sum(p.numel() for p in params)
    # the tied LM head is the embedding: counted once
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert total < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.float32  # the seed's fp32 LM-head output, kept under full
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


# ---- the memory estimate ---------------------------------------------------------------------

def test_full_estimate_counts_16_bytes_per_parameter_and_decides_checkpointing():

    from sft_pipeline.training.memory import GIB
    from sft_pipeline.training.memory_plan import plan_memory

    tree = {"pack": {"seq_length": 1024}, "train": {"per_device_train_batch_size": 8}}
    full, _, plan = plan_memory(recipe_from_dict({**tree, "method": "full"}), opt_1_3b_config(), AVX2_CPU)
    lora, _, _ = plan_memory(recipe_from_dict(tree), opt_1_3b_config(), AVX2_CPU)
    assert lora.weights > 0 and lora.adapter_and_optimizer < full.adapter_and_optimizer / 50
    assert plan["trainable"] == plan["total"] == 1_315_758_080  # OPT-1.3B without LoRA
    assert full.weights == 0 and full.adapter_and_optimizer == 16 * plan["total"]  # fp32 weight, grad, 2 moments
    assert 19.5 < full.adapter_and_optimizer / GIB < 19.7
    small = Hardware("cpu", bf16_fast=False, reason="test", cpu_count=2, memory_bytes=int(full.total(False) / 0.9))
    _, on, why = plan_memory(recipe_from_dict({**tree, "method": "full"}), opt_1_3b_config(), small)
    assert on and "estimated without it" in why["why"]
    roomy = Hardware("cpu", bf16_fast=False, reason="test", cpu_count=2, memory_bytes=int(full.total(False) / 0.7))
    assert not plan_memory(recipe_from_dict({**tree, "method": "full"}), opt_1_3b_config(), roomy)[1]


@pytest.mark.parametrize("hw", [AVX2_CPU, BF16_CPU], ids=["fp32", "bf16-autocast"])
def test_full_activation_estimate_counts_what_autograd_keeps(recipe_factory, hw):
    """Within 10% of the bytes autograd saves in a full fine-tuning forward (per-sample attention,
    labelled-positions loss), fp32 and under bf16 autocast (where the weights' bf16 copies count)."""
    from transformers import AutoConfig

    from sft_pipeline.model.build import build_model
    from sft_pipeline.training.attention import register
    from sft_pipeline.training.memory_plan import plan_memory

    recipe = recipe_factory(method="full", pack={"seq_length": 64}, train={"per_device_train_batch_size": 2})
    est, _, plan = plan_memory(recipe, AutoConfig.from_pretrained(recipe.model.ref), hw)
    assert plan["attention"] == "packed_sdpa"
    register()
    model = build_model(recipe, hw, checkpointing=False)
    model.set_attn_implementation("packed_sdpa")
    model.train()
    measured = saved_activation_bytes(model, precision.autocast(precision.plan(recipe, hw), "cpu"))
    assert abs(measured - est.activations_full) / measured < 0.10, (measured, est.activations_full)


# ---- the stages under method full ----------------------------------------------------------------

@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir):
    """Every stage and evaluate under method full, with a checkpoint at each of its 3 steps."""
    from helpers import lima_rows, write_jsonl

    root = tmp_path_factory.mktemp("full")
    write_jsonl(root / "data" / "train.jsonl", lima_rows(12, multi_every=4))
    write_jsonl(root / "data" / "test.jsonl", lima_rows(4))
    recipe = recipe_from_dict({
        "name": "full", "run_dir": str(root / "run"), "method": "full", "data": {"source": str(root / "data")},
        "model": {"ref": str(tiny_model_dir)}, "pack": {"seq_length": 64},
        "train": {"max_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1, "learning_rate": 1e-3,
                  "lr_scheduler_type": "constant", "eval_strategy": "epoch", "save_strategy": "steps",
                  "save_steps": 1, "save_total_limit": None},
        "tracking": {"wandb": "off", "tensorboard": False}, "generate": {"max_new_tokens": 8, "batch_size": 4},
        # the train-split loss pass and a style pattern: what the checks below compare
        "evaluate": {"max_prompts": 2, "pairs": 1, "train_loss": True, "style_regex": ".*"},
    })
    run = update_stages(recipe)
    update_stage(run, "evaluate")
    return run


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_prepare_records_full_and_saves_no_adapter(full_run):
    rec = read_json(full_run.path / "prepare" / "prepare.json")
    assert rec["method"] == "full" and rec["trainable_params"] == rec["total_params"] > 0
    assert rec["trainable_percent"] == 100.0 and rec["lora_targets"] == [] and rec["dtype"] == "float32"
    assert rec["memory_estimate_bytes"]["weights"] == 0
    assert rec["memory_estimate_bytes"]["adapter_and_optimizer"] == 16 * rec["total_params"]
    assert not (full_run.path / "prepare" / "adapter").exists()
    assert read_json(full_run.path / "prepare" / "summary.json")["method"] == "full"


def test_train_changes_every_kind_of_weight_and_saves_a_standalone_model(full_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base, trained = _weights(tiny_model_dir), _weights(full_run.path / "train" / "model")
    assert base.keys() == trained.keys()
    for kind in ("embed_tokens", "q_proj", "down_proj", "input_layernorm", "model.norm"):
        names = [k for k in base if kind in k]
        assert names and all(not torch.equal(base[k], trained[k]) for k in names), kind
    assert all(t.dtype == torch.float32 for t in trained.values())
    assert not (full_run.path / "train" / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(full_run.path / "train" / "model")
    assert model.config.use_cache  # training turned the KV cache off; the export has it back
    assert (full_run.path / "train" / "model" / "tokenizer.json").is_file()


def test_train_metrics_say_which_speed_pieces_apply_to_full(full_run):
    m = read_json(full_run.path / "train" / "metrics.json")
    assert (m["method"], m["learning_rate"], m["steps"], m["weights_dtype"]) == ("full", 1e-3, 3, "float32")
    assert m["labelled_loss"] == "on" and m["attention"] == "packed_sdpa" and m["padding_free"] is True
    assert m["fast_lora_dropout"].startswith("off: method full") and "no LoRA" in m["lora_input_cast"]
    assert m["peak_over_estimate"] is not None and m["eval_losses"]


def test_merge_exports_the_trained_model_itself(full_run):
    import os

    trained, merged = full_run.path / "train" / "model", full_run.path / "merge" / "model"
    files = sorted(p.name for p in trained.iterdir())
    assert files == sorted(p.name for p in merged.iterdir()) and "model.safetensors" in files
    linked = [f for f in files if f != "generation_config.json"]
    assert all(os.path.samefile(trained / f, merged / f) for f in linked)  # hard links: no second copy
    # but the recipe's generate settings are a file of merge's own, not written through the link
    assert not os.path.samefile(trained / "generation_config.json", merged / "generation_config.json")
    verify = read_json(full_run.path / "merge" / "verify.json")
    assert verify["passed"] and verify["merged"] is False and verify["method"] == "full"
    assert verify["export"] == "train/model, hardlinked" and verify["files"] == len(linked)
    assert all(full_run.stage_state(s) == "complete" for s in ("prepare", "train", "merge", "evaluate"))


def test_link_tree_copies_where_it_cannot_link(tmp_path, monkeypatch):
    import errno
    import os

    from sft_pipeline.rundir import files

    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a").write_text("a")
    (tmp_path / "src" / "sub" / "b").write_text("b")

    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "link", cross_device)
    assert files.link_tree(tmp_path / "src", tmp_path / "dst") == "copied"
    assert (tmp_path / "dst" / "sub" / "b").read_text() == "b"
    assert not os.path.samefile(tmp_path / "src" / "a", tmp_path / "dst" / "a")


def test_evaluate_compares_the_base_with_the_trained_model(full_run, tiny_model_dir):
    import datasets
    from transformers import AutoModelForCausalLM

    from sft_pipeline.model.hardware import detect
    from sft_pipeline.model.loader import load_tokenizer
    from sft_pipeline.stages.evaluate import mean_loss
    from sft_pipeline.training import attention

    report = read_json(full_run.path / "evaluate" / "report.json")
    assert report["method"] == "full" and report["prompts"] == 2
    blocks = datasets.load_from_disk(str(full_run.path / "pack" / "eval"))
    pad = load_tokenizer(str(tiny_model_dir)).pad_token_id
    compute = precision.plan(full_run.recipe, detect())
    attention.register()
    for phase, folder in (("before", tiny_model_dir), ("after", full_run.path / "train" / "model")):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="packed_sdpa").eval()
        want = mean_loss(model, blocks, pad, 8, phase, padding_free=True, autocast=lambda: precision.autocast(compute, "cpu"))
        assert report[phase]["loss"]["eval"] == pytest.approx(want, rel=1e-6), phase
    assert report["after"]["loss"]["train"] < report["before"]["loss"]["train"]


@pytest.mark.parametrize("which", ["trained", "merged"])
def test_generate_with_the_trained_model(full_run, which):
    result = runner.invoke(app, ["generate", str(full_run.path), "--prompt", "What is 2 plus 2?", "--model", which])
    assert result.exit_code == 0 and ">>> What is 2 plus 2?" in result.output, result.output


def test_status_after_a_full_run(full_run):
    result = runner.invoke(app, ["status", str(full_run.path)])
    assert result.exit_code == 0 and result.output.count("complete") == 7, result.output
    assert "the trained model (hardlinked)" in result.output


# ---- resume ------------------------------------------------------------------------------------

def _crashed_at(full_run, tmp_path, step: int):
    """A second run directory whose train was killed after saving checkpoint-<step>."""
    crashed = update_stages(full_run.recipe.model_copy(update={"run_dir": str(tmp_path / "crashed")}), until="prepare")
    work = crashed.work_dir("train")
    (work / "checkpoints").mkdir(parents=True)
    (work / ".fingerprint").write_text(crashed.fingerprint("train"))
    shutil.copytree(full_run.path / "train" / "checkpoints" / f"checkpoint-{step}", work / "checkpoints" / f"checkpoint-{step}")
    return crashed


def test_a_killed_full_run_resumes_to_the_same_model(full_run, tmp_path):
    crashed = _crashed_at(full_run, tmp_path, 1)
    update_stages(crashed.recipe, until="train")
    metrics = read_json(crashed.path / "train" / "metrics.json")
    assert metrics["resumed_from"].endswith("checkpoint-1") and len(metrics["step_seconds"]) == 2
    want, got = _weights(full_run.path / "train" / "model"), _weights(crashed.path / "train" / "model")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_full_run_killed_after_its_last_checkpoint_takes_it_as_the_result(full_run, tmp_path):
    crashed = _crashed_at(full_run, tmp_path, 3)
    update_stages(crashed.recipe, until="train")
    metrics = read_json(crashed.path / "train" / "metrics.json")
    assert metrics["resumed_from"].endswith("checkpoint-3") and metrics["step_seconds"] == []
    want, got = _weights(full_run.path / "train" / "model"), _weights(crashed.path / "train" / "model")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_an_incomplete_full_checkpoint_is_removed(tmp_path):
    from sft_pipeline.training.checkpoints import resumable_checkpoint

    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt = folder / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (ckpt / name).write_text("x")
    (folder / "checkpoint-1" / "model.safetensors").write_text("x")
    # 2: sharded, its second shard not written yet; 3: killed before its weights
    (folder / "checkpoint-2" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "checkpoint-2" / "model-00001-of-00002.safetensors").write_text("x")
    assert resumable_checkpoint(folder, full=True).endswith("checkpoint-1")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-1"]
    assert resumable_checkpoint(folder, full=False) is None  # a LoRA run finds no adapter in it


def test_compare_reads_a_real_full_run(full_run):

    result = runner.invoke(app, ["compare", str(full_run.path)])
    assert result.exit_code == 0, result.output
    got = printed_table(result.output)
    prep = read_json(full_run.path / "prepare" / "prepare.json")
    report = read_json(full_run.path / "evaluate" / "report.json")
    assert got["method"] == ["full"] and got["learning rate"] == ["0.001"]
    assert got["trainable params"] == [f"{prep['total_params']:,} (100.00%)"]
    assert got["eval loss"] == [f"{report['after']['loss']['eval']:.4f}"] and got["style share"][0].endswith("%")
    assert all(cells[0] != "-" for cells in got.values()), got
