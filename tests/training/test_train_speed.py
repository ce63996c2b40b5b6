"""The train stage's speed measures keep its results: the labelled-positions loss is the model's
own loss (value and gradients), the trainer uses it only where it is, step timing, and the
benchmark's model building and FLOP counting (its GPU path on a tiny config)."""

import pytest
import torch
from helpers import saved_activation_bytes

from sft_pipeline.model.hardware import Hardware
from sft_pipeline.training.loss import labelled_loss, unsupported_reason

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
    from sft_pipeline.model.build import build_model

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


def test_labelled_loss_without_gradients_is_the_same_loss_in_slices(recipe_factory, monkeypatch):
    import sft_pipeline.training.loss as loss_module

    model = _lora_model(recipe_factory)
    batch = _packed_batch(model.config.vocab_size)
    monkeypatch.setattr(loss_module, "NO_GRAD_SLICE_BYTES", model.config.vocab_size * 4 * 3)  # 3 positions a slice
    with torch.no_grad():
        want = model(**batch, use_cache=False).loss
        got, count = labelled_loss(model, batch)
    assert int(count) > 3
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (float(got), float(want))


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


# ---- per-sample attention for packed rows ---------------------------------------------------------

def _tiny_llama(kv_heads=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def test_sample_spans_follow_position_restarts():
    from sft_pipeline.training.attention import sample_spans

    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert sample_spans(pos) == [[(0, 3), (3, 5), (5, 9)], [(0, 9)]]


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_packed_sdpa_equals_the_block_diagonal_mask(kv_heads, compute):
    """Same logits and gradients as transformers' SDPA with the mask it builds from position_ids,
    in fp32 and under bf16 autocast (to bf16 rounding: the two run different SDPA kernels)."""
    from sft_pipeline.training.attention import register

    register()
    model = _tiny_llama(kv_heads)
    batch = _packed_batch(300)
    batch["position_ids"][1] = torch.tensor(list(range(20)) + list(range(4)))  # a padding-like tail segment
    out = {}
    for impl in ("sdpa", "packed_sdpa"):
        model.set_attn_implementation(impl)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute == "bf16"):
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        logits.float().pow(2).mean().backward()
        out[impl] = (logits.detach().float(), [p.grad.clone() for p in model.parameters()])
    tol = {"fp32": (1e-5, 1e-4), "bf16": (2e-2, 5e-2)}[compute]
    torch.testing.assert_close(out["packed_sdpa"][0], out["sdpa"][0], atol=tol[0], rtol=tol[1])
    for a, b in zip(out["packed_sdpa"][1], out["sdpa"][1]):
        atol = tol[0] if compute == "fp32" else tol[0] * a.abs().max().item()  # bf16: relative to the gradient's scale
        torch.testing.assert_close(a, b, atol=atol, rtol=tol[1])


def test_attention_choice_keeps_packed_samples_apart_or_falls_back(tiny_model_dir):
    from transformers import AutoConfig, BloomConfig, OPTConfig

    from sft_pipeline.training.attention import choose
    from sft_pipeline.training.isolation import probe

    assert choose(AutoConfig.from_pretrained(tiny_model_dir), None, "cpu") == "packed_sdpa"
    assert choose(AutoConfig.from_pretrained(tiny_model_dir), "eager", "cpu") == "eager"  # a recipe's choice stands
    # OPT's default attention lets packed samples see each other; per-sample attention does not
    assert probe(OPTConfig(), None) > 1e-2 and choose(OPTConfig(), None, "cpu") == "packed_sdpa"
    assert choose(BloomConfig(), None, "cpu") is None  # no SDPA attention interface: the model's default


# ---- padding-free batches ------------------------------------------------------------------------

def _blocks():
    return [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, 6, 7, -100, 9, 10], "position_ids": [0, 1, 2, 0, 1, 2]},
        {"input_ids": [11, 12, 13, 14], "labels": [11, 12, 13, 14], "position_ids": [0, 1, 2, 3]},
    ]


def test_padding_free_collator_makes_one_row_without_padding():
    from sft_pipeline.training.collate import PackedCollator, batch_work

    batch = PackedCollator(pad_id=0, padding_free=True)(_blocks())
    assert batch["input_ids"].shape == (1, 10) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
    # each sample's first label is no target: the position before it belongs to another sample
    assert batch["labels"][0].tolist() == [-100, 6, 7, -100, 9, 10, -100, 12, 13, 14]
    padded = PackedCollator(pad_id=0)(_blocks())
    assert padded["labels"][1].tolist() == [-100, 12, 13, 14, -100, -100]
    want = {"tokens": 10, "labelled": 7, "attention_pairs": 9 + 9 + 16}
    assert batch_work(batch, 0) == want and batch_work(padded, 0) == want


def test_padding_free_loss_equals_the_padded_batch(recipe_factory):
    from sft_pipeline.training.attention import register
    from sft_pipeline.training.collate import PackedCollator

    register()
    model = _lora_model(recipe_factory)
    model.get_base_model().set_attn_implementation("packed_sdpa")
    results = []
    for padding_free in (False, True):
        model.zero_grad(set_to_none=True)
        batch = PackedCollator(pad_id=0, padding_free=padding_free)(_blocks())
        loss, count = labelled_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), int(count), _grads(model)))
    (a, n_a, g_a), (b, n_b, g_b) = results
    assert n_a == n_b == 7
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], atol=1e-7, rtol=1e-4)


# ---- fast LoRA dropout ------------------------------------------------------------------------------

def test_fast_dropout_drops_p_and_scales_the_rest():
    from sft_pipeline.training.dropout import FastDropout

    drop = FastDropout(0.05).train()
    x = torch.ones(400, 1000)
    y = drop(x)
    assert abs(float((y == 0).float().mean()) - 0.05) < 0.003
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.95))
    assert torch.equal(drop.eval()(x), x)


def test_fast_dropout_draws_from_torchs_seed():
    from sft_pipeline.training.dropout import FastDropout

    drop = FastDropout(0.1).train()
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a, b = drop(x), drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), a) and not torch.equal(a, b)


def test_fast_dropout_replaces_peft_dropout_and_survives_checkpoint_recompute(recipe_factory):
    """With gradient checkpointing the recomputed forward draws the same masks (torch restores its
    RNG state), so gradients equal a run without checkpointing."""
    from sft_pipeline.model.build import build_model
    from sft_pipeline.training.dropout import FastDropout, use_fast_dropout

    batch = _packed_batch(300)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(recipe_factory(lora={"lora_dropout": 0.3}), CPU, checkpointing=checkpointing)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        assert use_fast_dropout(model) == 14  # 2 layers x 7 linear layers
        assert all(isinstance(m, FastDropout) for m in model.modules() if isinstance(m, (torch.nn.Dropout, FastDropout)))
        model.train()
        torch.manual_seed(1)
        loss, _ = labelled_loss(model, batch)
        loss.backward()
        grads.append(_grads(model))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-7, rtol=1e-5)


# ---- the trainer and the train stage ---------------------------------------------------------------

def test_pipeline_trainer_loss_equals_sfttrainers(recipe_factory, tmp_path):
    """compute_loss is SFTTrainer's, value and gradients, minus the entropy/accuracy metrics."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sft_pipeline.model.loader import load_tokenizer
    from sft_pipeline.training.collate import PackedCollator
    from sft_pipeline.training.trainer import trainer_class

    recipe = recipe_factory()
    model = _lora_model(recipe_factory)
    tok = load_tokenizer(recipe.model.ref)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, dataset_kwargs={"skip_prepare_dataset": True},
                     remove_unused_columns=False, max_steps=1)
    blocks = datasets.Dataset.from_list(_blocks())
    trainer = trainer_class()(model=model, args=args, train_dataset=blocks, processing_class=tok,
                              data_collator=PackedCollator(tok.pad_token_id))
    batch = _packed_batch(model.config.vocab_size)
    results = []
    for compute in (SFTTrainer.compute_loss, type(trainer).compute_loss):
        model.zero_grad(set_to_none=True)
        loss = compute(trainer, model, dict(batch), num_items_in_batch=torch.tensor(20))
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    for name in results[0][1]:
        torch.testing.assert_close(results[1][1][name], results[0][1][name], atol=1e-7, rtol=1e-4)
    assert "entropy" in trainer._metrics["train"]  # SFTTrainer's pass computed it; ours adds none
    trainer._metrics["train"].clear()
    type(trainer).compute_loss(trainer, model, dict(batch))
    assert set(trainer._metrics["train"]) == {"num_tokens"}


def test_a_compiled_or_wrapped_model_takes_the_labelled_loss_through_its_own_forward(recipe_factory, tmp_path):
    """labelled_loss calls the backbone directly; under torch.compile or a DDP wrapper that would
    step around the wrapper, so those take the labelled loss through the wrapper's forward
    (logits_to_keep; tests/training/test_distributed.py checks its value and gradients, and DDP's result)."""
    import datasets
    from trl import SFTConfig

    from sft_pipeline.model.loader import load_tokenizer
    from sft_pipeline.training.collate import PackedCollator
    from sft_pipeline.training.trainer import trainer_class

    recipe = recipe_factory()
    model = _lora_model(recipe_factory)
    tok = load_tokenizer(recipe.model.ref)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, dataset_kwargs={"skip_prepare_dataset": True},
                     remove_unused_columns=False, max_steps=1)
    trainer = trainer_class()(model=model, args=args, train_dataset=datasets.Dataset.from_list(_blocks()),
                              processing_class=tok, data_collator=PackedCollator(tok.pad_token_id))
    batch = _packed_batch(model.config.vocab_size)
    compiled = torch.compile(model)  # wrapped, not compiled until called
    assert trainer._labelled_loss_applies(model, batch) and not trainer._through_forward(model)
    assert trainer._labelled_loss_applies(compiled, batch) and trainer._through_forward(compiled)


def test_step_rate_leaves_out_the_warm_up_step():
    from sft_pipeline.training.callbacks import step_rate

    work = [{"tokens": 1000}, {"tokens": 100}, {"tokens": 300}, {"tokens": 200}]
    assert step_rate([50.0, 1.0, 3.0, 2.0], work) == {"seconds_per_step": 2.0, "tokens_per_second": 100.0}
    assert step_rate([4.0], [{"tokens": 8}]) == {"seconds_per_step": 4.0, "tokens_per_second": 2.0}
    assert step_rate([], []) == {"seconds_per_step": None, "tokens_per_second": None}


def test_train_stage_records_its_speed_setup_and_step_times(recipe_factory):
    from sft_pipeline.orchestration.pipeline import update_stages
    from sft_pipeline.rundir.files import read_json

    recipe = recipe_factory(train={"max_steps": 3})
    run = update_stages(recipe, until="train")
    m = read_json(run.path / "train" / "metrics.json")
    assert m["attention"] == "packed_sdpa" and m["padding_free"] and m["fast_lora_dropout"] == 14
    assert len(m["step_seconds"]) == 3 and m["seconds_per_step"] > 0 and m["tokens_per_second"] > 0
    assert all(w["tokens"] > 0 and w["labelled"] > 0 for w in m["step_work"])
    assert m["peak_rss_bytes"] > 0 and m["peak_over_estimate"] > 0
    prep = read_json(run.path / "prepare" / "prepare.json")
    assert prep["training_attention"] == "packed_sdpa" and prep["gradient_checkpointing"] is False


# ---- the memory estimate ---------------------------------------------------------------------------

def test_memory_estimate_counts_what_autograd_keeps(recipe_factory):
    """The activation term equals the bytes autograd saves for backward in a training forward
    (LoRA, fast dropout, per-sample attention, labelled-positions loss) within 10%."""
    from transformers import AutoConfig

    from sft_pipeline.model.build import build_model
    from sft_pipeline.training.attention import register
    from sft_pipeline.training.dropout import use_fast_dropout
    from sft_pipeline.training.memory_plan import plan_memory

    recipe = recipe_factory(pack={"seq_length": 64}, train={"per_device_train_batch_size": 2})
    est, _, _ = plan_memory(recipe, AutoConfig.from_pretrained(recipe.model.ref), CPU)
    register()
    torch.manual_seed(0)
    model = build_model(recipe, CPU, checkpointing=False)
    model.get_base_model().set_attn_implementation("packed_sdpa")
    use_fast_dropout(model)
    model.train()
    measured = saved_activation_bytes(model)
    assert abs(measured - est.activations_full) / measured < 0.10, (measured, est.activations_full)


def test_memory_estimate_turns_checkpointing_on_only_when_needed(recipe_factory):
    from transformers import AutoConfig

    from sft_pipeline.model.hardware import Hardware
    from sft_pipeline.training.memory_plan import plan_memory

    recipe = recipe_factory(pack={"seq_length": 2048}, train={"per_device_train_batch_size": 64})
    config = AutoConfig.from_pretrained(recipe.model.ref)
    est, ckpt, plan = plan_memory(recipe, config, CPU)
    assert not ckpt and est.total(False) < 0.8 * CPU.memory_bytes
    small = Hardware("cpu", bf16_fast=False, reason="test", cpu_count=2, memory_bytes=int(est.total(False) / 0.9))
    _, ckpt, plan = plan_memory(recipe, config, small)
    assert ckpt and "estimated without it" in plan["why"]


# ---- the benchmark's model shapes, FLOP count and GPU path (on a CPU, tiny) -------------------------

def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llama_1b_shape_and_linear_parameter_count():
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    bench = _bench()
    config = bench.llama_1b_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size, config.tie_word_embeddings) == (2048, 16, 32, 8, 8192, 128256, True)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n)
    assert bench.linear_params(config) == linear
    assert 1.23e9 < sum(p.numel() for p in model.parameters()) < 1.24e9  # Llama-3.2-1B: 1.236B


def test_step_flops_formula():
    bench = _bench()
    config = bench.llama_1b_config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=1000)
    n_lin = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)
    assert bench.linear_params(config) == n_lin
    work = {"tokens": 100, "labelled": 40, "attention_pairs": 60**2 + 40**2}
    want = 100 * (4 * n_lin + 6 * 500) + 40 * 4 * 1000 * 64 + 6 * 2 * 4 * 16 * (60**2 + 40**2)
    assert bench.step_flops(config, 500, work) == want


def test_gpu_recipe_is_qlora_bf16_on_the_random_model(tmp_path, tiny_model_dir):
    bench = _bench()
    recipe = bench.bench_recipe(tmp_path, "cuda", 5, shape="tiny", tokenizer=str(tiny_model_dir))
    assert recipe.model.quantization == "nf4" and recipe.model.dtype == "bfloat16"
    assert recipe.pack.strategy == "bfd" and recipe.train.max_steps == 5
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "data" / "train.jsonl").is_file()


@pytest.mark.slow
def test_benchmark_runs_its_qlora_path_on_a_tiny_random_model(tmp_path, tiny_model_dir):
    """The GPU benchmark's path (random Llama shape, NF4, synthetic data, TRL against the train
    stage) end to end on a CPU with a tiny shape: the losses agree and the table is printed."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "bench" / "train_throughput.py"), "--shape", "tiny", "--steps", "2",
                           "--variants", "tuned,pipeline,pipeline_ckpt", "--workdir", str(tmp_path), "--tokenizer", str(tiny_model_dir),
                           "--json", str(tmp_path / "out.json")], capture_output=True, text=True, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio 4/2" in proc.stdout and "MFU of 4" in proc.stdout and "MFU of 2" in proc.stdout
    assert "memory (4, " in proc.stdout and "memory (5, " in proc.stdout
    import json

    results = json.loads((tmp_path / "out.json").read_text())["results"]
    a, b, c = (results[v]["losses"] for v in ("tuned", "pipeline", "pipeline_ckpt"))
    # tuned TRL and the pipeline compute in the same dtype here (bf16 where it is fast): the same first step
    assert results["tuned"]["bf16"] == results["pipeline"]["bf16"]
    tolerance = 2e-2 * a[0] if results["pipeline"]["bf16"] else 1e-4
    assert len(a) == len(b) == len(c) == 2 and abs(a[0] - b[0]) < tolerance
    assert results["pipeline_ckpt"]["gradient_checkpointing"] and not results["pipeline"]["gradient_checkpointing"]
    assert abs(b[0] - c[0]) < 1e-4  # the same first step with and without checkpointing
