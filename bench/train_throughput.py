"""Training throughput: the same LoRA work done by plain TRL, TRL tuned for this machine, and the train stage, in one run.

    make bench-train                                          # CPU: SmolLM2-135M, 8 steps
    .venv/bin/python bench/train_throughput.py --steps 4      # quicker
    .venv/bin/python bench/train_throughput.py --device cuda  # QLoRA NF4 on a Llama-3.2-1B shape

CPU (default): the bundled SmolLM2-135M-Instruct, LoRA r=16, alpha=32, dropout 0.05 on every
linear layer, the demo recipe's packed blocks (bundled data, chat template, bfd, seq_length 512,
loss on assistant turns), batch 2, the demo's optimizer settings, `--steps` optimizer steps:

  1 plain   TRL as a reader of the seed scripts writes it: SFTTrainer, SFTConfig defaults (bf16,
            gradient checkpointing, TRL's fused LM head with entropy and token-accuracy metrics)
            plus `peft_config`, and use_cpu=True, without which SFTConfig's bf16 default refuses
            to start on a CPU-only host (its error message asks for it). bf16 is emulated on CPUs
            without AVX512-BF16/AMX, so it runs `--plain-steps` steps (default 2: one warm-up,
            one timed).
  2 tuned   the same, tuned by hand for the CPU it runs on: gradient_checkpointing=False (the
            memory is there) and the precision that is fast there: bf16 (use_cpu=True) on a CPU
            with AVX512-BF16 or AMX, fp32 (bf16=False) on one without.
  3 pipeline_fp32  the train stage with train.precision=fp32 (its own run directory). On a CPU
            without fast bf16 this is what the defaults do, so it is not run there.
  4 pipeline  this pipeline's train stage with its defaults (sft-pipeline train): bf16 under
            autocast where bf16 is fast, else fp32.
  5 pipeline_ckpt  the same with model.gradient_checkpointing=on (its own run directory, same
            blocks): what checkpointing costs in time, and a check of prepare's memory estimate
            with checkpointing as well as without.

All get the same blocks through the same collator in the same order (same seed), the same
initial adapter (prepare's, loaded into 1 and 2; 3 and 5 make their own with the same seed, which
differs from 4's by the bf16 rounding of lora_A where 4 is bf16), and the same learning rate,
schedule and warm-up, so the per-step losses show the same work was done (they differ by bf16
rounding and by the dropout masks' random draws). Each variant runs in its own process, so its peak
RSS (which includes loading the model) is its own. Seconds per step are the median over the
steps after the first; tokens/s counts the tokens of the blocks (padding excluded) over the
timed steps. MFU is each variant's model FLOPs (the useful work, the same formula for all) over its
timed steps' time, against the best rate of large square torch.matmuls (2048 to 4096) in the
dtype that variant computes in (fp32, or bf16 where it is bf16), measured at the start and at the
end of this run; the higher is used, so a busy moment does not flatter the MFU. On a CPU without
fast bf16 the bf16 rate is measured on 512^3 (it is emulated: ~0.3 GFLOP/s). The formula (printed):
frozen linear weights 4 x N_linear per token (forward, and backward for activation gradients
only: no weight gradients), LoRA 6 x N_lora per token, LM head 4 x vocab x hidden per labelled
position (the loss needs no others), causal attention 6 x layers x heads x head_dim x n^2 per
sample of n tokens (forward: QK^T and AV over n^2/2 pairs, 2 x head_dim FLOPs each; backward twice
the forward); embeddings, norms and activations not counted; recomputation by gradient
checkpointing not counted (not model FLOPs).

GPU (`--device cuda`): a randomly initialized model of Llama-3.2-1B's shape (built from a
LlamaConfig, nothing downloaded: throughput does not depend on the weights' values), QLoRA NF4
with double quantization, bf16 compute, synthetic conversations packed bfd into blocks of 2048,
batch 4: plain TRL (SFTConfig defaults + peft_config) against the pipeline (flash attention 2 if
installed, padding-free rows, Liger kernels if installed), tokens/s and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic import conversations  # noqa: E402  (bench/synthetic.py, shared with data_throughput)

import sft_pipeline.orchestration.logs  # noqa: E402,F401  (before bitsandbytes: drops its notice about the optional `kernels` package)

# the train stage's own FLOP count and matmul rate, so the benchmark and train report the same MFU
from sft_pipeline.training.flops import FLOP_FORMULA, linear_params, matmul_rate, step_flops  # noqa: E402,F401

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
VARIANTS = ("plain", "tuned", "pipeline_fp32", "pipeline", "pipeline_ckpt")
LABELS = {"plain": "plain TRL (SFTConfig defaults)", "tuned": "TRL tuned by hand ({tuned}, no ckpt)",
          "pipeline_fp32": "this pipeline in fp32", "pipeline": "this pipeline (defaults: {default})",
          "pipeline_ckpt": "pipeline, gradient ckpt on"}
PIPELINE = ("pipeline_fp32", "pipeline", "pipeline_ckpt")
NAMES: dict[str, str] = {}  # variant -> "N label", set by name_variants for the host


def name_variants(bf16_fast: bool) -> None:
    fill = {"tuned": "bf16" if bf16_fast else "fp32", "default": "bf16" if bf16_fast else "fp32"}
    for i, v in enumerate(VARIANTS, 1):
        NAMES[v] = f"{i} {LABELS[v].format(**fill)}"


def default_variants(device: str, bf16_fast: bool) -> list[str]:
    """pipeline_fp32 is the defaults where bf16 is not fast (and not a GPU variant: QLoRA there is bf16)."""
    return [v for v in VARIANTS if v != "pipeline_fp32" or (device == "cpu" and bf16_fast)]


# ---- the model shapes ---------------------------------------------------------------------------

def llama_1b_config(**overrides: Any) -> Any:
    """Llama-3.2-1B's shape: hidden 2048, 16 layers, 32 heads (8 key/value), MLP 8192, vocab
    128256, tied embeddings."""
    from transformers import LlamaConfig

    shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                 max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu")
    shape.update(overrides)
    return LlamaConfig(**shape)


def build_random_model(folder: Path, config: Any, tokenizer_ref: str, dtype: str = "bfloat16") -> Path:
    """A randomly initialized causal LM from `config`, saved as safetensors with a tokenizer (any
    tokenizer whose ids fit the vocabulary), so every stage can load it as a local model.ref."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_pipeline.model.loader import load_tokenizer

    tok = load_tokenizer(tokenizer_ref)
    if len(tok) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} ids, the model {config.vocab_size}")
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


# ---- the work: recipe and data -------------------------------------------------------------------

def bench_recipe(workdir: Path, device: str, steps: int, shape: str = "1b",
                 tokenizer: str = "bundled:smollm2-135m-instruct") -> Any:
    """The recipe every variant follows (the pipeline runs it; the TRL variants copy its settings)."""
    from sft_pipeline.config import load_recipe, recipe_from_dict

    common = [f"run_dir={workdir / 'run'}", f"train.max_steps={steps}", "train.eval_strategy=no",
              "train.save_strategy=no", "tracking.tensorboard=false", "tracking.wandb=off", "train.logging_steps=1"]
    if device == "cpu" and shape == "smollm2":
        return load_recipe(REPO / "recipes" / "demo.yaml", common)
    model_dir = workdir / "model"
    if not (model_dir / "config.json").is_file():
        config = llama_1b_config() if shape == "1b" else llama_1b_config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=49152)
        build_random_model(model_dir, config, tokenizer)
    data = workdir / "data" / "train.jsonl"
    if not data.is_file():
        data.parent.mkdir(parents=True, exist_ok=True)
        rows = conversations(4000 if shape == "1b" else 64, prompt=(8, 40), answer_sentence=(8, 25), answer_sentences=(2, 30))
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seq = 2048 if shape == "1b" else 256
    tree = {
        "name": "bench-gpu", "data": {"source": str(data.parent), "eval_split": None},
        "template": {"kind": "chat", "system": "You are a helpful assistant."},
        "pack": {"seq_length": seq, "strategy": "bfd", "loss_on": "assistant"},
        "model": {"ref": str(model_dir), "quantization": "nf4", "dtype": "bfloat16" if device == "cuda" else "float32"},
        "lora": LORA,
        "train": {"per_device_train_batch_size": 4 if shape == "1b" else 2, "learning_rate": 2e-4, "warmup_steps": 2,
                  "lr_scheduler_type": "cosine"},
    }
    from sft_pipeline.config import _set_dotted, parse_overrides

    for key, value in parse_overrides(common):
        _set_dotted(tree, key, value)
    return recipe_from_dict(tree)


# ---- one variant, in its own process ---------------------------------------------------------------

def _trl_variant(variant: str, recipe: Any, run_path: Path, device: str, bf16_fast: bool) -> dict[str, Any]:
    import datasets
    import torch
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from sft_pipeline.model.loader import load_tokenizer, resolve
    from sft_pipeline.training.callbacks import StepTimer
    from sft_pipeline.training.collate import PackedCollator

    tok = load_tokenizer(recipe.model.ref)
    path = resolve(recipe.model.ref).path
    kwargs: dict[str, Any] = {}
    if recipe.model.quantization == "nf4":
        compute = torch.bfloat16 if device == "cuda" else torch.float32
        kwargs = {"dtype": compute, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)}
        if device == "cuda":
            kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    t = recipe.train
    args: dict[str, Any] = dict(
        output_dir=str(run_path / f"trl-{variant}"), max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, seed=t.seed,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        # the blocks are already packed and labelled, as for the pipeline
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
    )
    if device == "cpu":
        # SFTConfig's default bf16=True refuses to start on a host without a bf16 GPU until
        # use_cpu=True is set (its error message says so); then it runs bf16 autocast on the CPU
        args["use_cpu"] = True
    if variant == "tuned":  # what is fast here: bf16 where the hardware has it, and no recompute
        args.update(bf16=bf16_fast, gradient_checkpointing=False)
    timer = StepTimer(tok.pad_token_id, cuda=device == "cuda")

    class Timed(SFTTrainer):  # counts each batch's tokens; the step itself is SFTTrainer's
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            timer.add_batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Timed(model=model, args=SFTConfig(**args), train_dataset=datasets.load_from_disk(str(run_path / "pack" / "train")),
                    processing_class=tok, peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"),
                    data_collator=PackedCollator(tok.pad_token_id), callbacks=[timer.callback()])
    # the pipeline's initial adapter (prepare's), so all variants start from the same weights
    start = load_file(str(run_path / "prepare" / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(trainer.model, start)
    assert not result.unexpected_keys, result.unexpected_keys
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": timer.seconds, "work": timer.work, "losses": losses,
            "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing}


def _pipeline_variant(recipe: Any, run_path: Path) -> dict[str, Any]:
    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.rundir.files import read_json
    from sft_pipeline.stages import open_run_directory

    run = open_run_directory(run_path, recipe)
    update_stage(run, "train", force=True)
    m = read_json(run_path / "train" / "metrics.json")
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    return {"seconds": m["step_seconds"], "work": m["step_work"], "losses": losses, "bf16": m["precision"] == "bf16",
            "gradient_checkpointing": m["gradient_checkpointing"], "attention": m["attention"],
            "padding_free": m["padding_free"], "fast_lora_dropout": m["fast_lora_dropout"]}


def worker(variant: str, recipe_file: Path, device: str) -> dict[str, Any]:
    import datasets
    import torch

    from sft_pipeline.config import load_recipe
    from sft_pipeline.model.hardware import configure_threads, detect

    configure_threads()  # as the CLI does, for every variant alike

    datasets.disable_progress_bars()
    recipe = load_recipe(recipe_file)
    run_path = recipe.resolved_run_dir()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = (_pipeline_variant(recipe, run_path) if variant in PIPELINE
           else _trl_variant(variant, recipe, run_path, device, detect().bf16_fast))
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        out["gpu"] = torch.cuda.get_device_name(0)
    out["threads"] = torch.get_num_threads()
    return out


# ---- the run ----------------------------------------------------------------------------------------

def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The train stage's own step statistics (train.step_rate), for every variant alike."""
    from sft_pipeline.training.callbacks import step_rate, timed_steps

    timed = timed_steps(r["seconds"], r["work"])
    rate = step_rate(r["seconds"], r["work"])
    return {"s_per_step": rate["seconds_per_step"], "tokens_per_s": rate["tokens_per_second"],
            "timed_steps": len(timed), "timed_seconds": sum(s for s, _ in timed), "timed_work": [w for _, w in timed]}


def estimates(recipe: Any) -> dict[str, int]:
    """prepare's memory estimate for this recipe, with and without gradient checkpointing."""
    from transformers import AutoConfig

    from sft_pipeline.model.hardware import detect
    from sft_pipeline.model.loader import resolve
    from sft_pipeline.training.memory_plan import plan_memory

    config = AutoConfig.from_pretrained(resolve(recipe.model.ref).path)
    est, _, plan = plan_memory(recipe, config, detect())
    return {"with": est.total(True), "without": est.total(False), "trainable": plan["trainable"]}


def rates(device: str, bf16_fast: bool, tiny: bool) -> dict[str, float]:
    """Best matmul FLOP/s per compute dtype here: fp32 and bf16 on a CPU, bf16 on a GPU."""
    import torch

    sizes = (1024,) if tiny else (2048, 3072, 4096)  # tiny: a smoke test, its MFU means nothing
    if device == "cuda":
        return {"bf16": matmul_rate(device, torch.bfloat16)}
    out = {"fp32": matmul_rate(device, torch.float32, sizes)}
    # emulated bf16 runs at ~0.3 GFLOP/s: one 512^3 product (~1 s) says so well enough
    out["bf16"] = matmul_rate(device, torch.bfloat16, sizes if bf16_fast else (512,), 3 if bf16_fast else 1)
    return out


def compute_dtype(r: dict[str, Any]) -> str:
    return "bf16" if r.get("bf16") else "fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (CPU default 8, GPU 12)")
    ap.add_argument("--plain-steps", type=int, default=None,
                    help="steps for variant 1 (default: 2 on a CPU without fast bf16, where it is emulated; else --steps)")
    ap.add_argument("--variants", default=None, help=f"comma-separated, of {','.join(VARIANTS)} (default: those that "
                                                      "differ on this host)")
    ap.add_argument("--shape", choices=["smollm2", "1b", "tiny"], default=None,
                    help="model: smollm2 (CPU default), 1b (GPU default), tiny (a smoke test of the GPU path on a CPU)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--tokenizer", default="bundled:smollm2-135m-instruct",
                    help="tokenizer for the random 1b/tiny models (any whose ids fit the vocabulary)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--recipe", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.recipe, args.device)))
        return


    from sft_pipeline.model.hardware import configure_threads, cpu_flags, detect

    threads, _ = configure_threads()
    hw = detect()
    name_variants(hw.bf16_fast)
    shape = args.shape or ("smollm2" if args.device == "cpu" else "1b")
    steps = args.steps or (8 if args.device == "cpu" else 12)
    slow_plain = args.device == "cpu" and shape == "smollm2" and not hw.bf16_fast
    plain_steps = args.plain_steps or (min(2, steps) if slow_plain else steps)
    variants = args.variants.split(",") if args.variants else default_variants(args.device, hw.bf16_fast)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    tmp = tempfile.TemporaryDirectory(prefix="bench-train-") if args.workdir is None else None
    workdir = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}

    print(f"# bench/train_throughput.py --device {args.device} --steps {steps} (shape {shape}), workdir {workdir}", flush=True)
    if args.device == "cpu":
        flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "?") if Path("/proc/cpuinfo").is_file() else "?"
        print(f"# CPU: {model}; {hw.reason}; flags: {' '.join(flags)}", flush=True)
    rate = rates(args.device, hw.bf16_fast, shape == "tiny")
    print("# torch.matmul rate, best of square 2048-4096 here: " + ", ".join(
        f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rate.items()) + f" ({threads} threads)", flush=True)
    recipe = bench_recipe(workdir, args.device, steps, shape, args.tokenizer)
    from sft_pipeline.config import recipe_to_yaml

    files = {}
    for v in variants:
        n = plain_steps if v == "plain" else steps
        files[v] = workdir / f"recipe-{v}.yaml"
        update: dict[str, Any] = {"train": recipe.train.model_copy(update={"max_steps": n})}
        if v == "pipeline_ckpt":  # prepare records the checkpointing decision: a run directory of its own
            update.update(model=recipe.model.model_copy(update={"gradient_checkpointing": "on"}),
                          run_dir=str(workdir / "run-ckpt"))
        if v == "pipeline_fp32":  # prepare records the dtype and its memory estimate: a run directory of its own
            update.update(train=recipe.train.model_copy(update={"max_steps": n, "precision": "fp32"}),
                          run_dir=str(workdir / "run-fp32"))
        files[v].write_text(recipe_to_yaml(recipe.model_copy(update=update)))
    # load, template, pack and prepare once per run directory: the TRL variants read the shared
    # one's blocks and initial adapter (prepare's, seeded)
    t0 = time.perf_counter()
    own_dir = ("pipeline_ckpt", "pipeline_fp32")
    shared = [v for v in variants if v not in own_dir]
    for v in ({"pipeline"} & set(shared) or set(shared[-1:])) | (set(own_dir) & set(variants)):
        proc = subprocess.run([sys.executable, "-m", "sft_pipeline.cli", "run", str(files[v]), "--until", "prepare"],
                              capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode:
            sys.exit(proc.stderr[-4000:])
    print(f"# data stages and prepare: {time.perf_counter() - t0:.0f} s", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--worker", v, "--recipe", str(files[v]), "--device", args.device],
                              capture_output=True, text=True, env=env, cwd=REPO)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"variant {v} failed:\n{proc.stderr[-4000:]}")
        results[v] = json.loads(line[-1][len("RESULT "):])
        results[v].update(summarize(results[v]))
        print(f"# {NAMES[v]}: {len(results[v]['seconds'])} steps in {time.perf_counter() - t0:.0f} s", flush=True)

    rate_end = rates(args.device, hw.bf16_fast, shape == "tiny")
    print("# the same matmuls at the end: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rate_end.items())
          + "; MFU uses the higher", flush=True)
    rate = {k: max(v, rate_end[k]) for k, v in rate.items()}
    report(results, recipe, args.device, rate, steps, plain_steps, shape)
    if args.json:
        args.json.write_text(json.dumps({"rate": rate, "results": results}, indent=1))


def num(v: str) -> str:
    return NAMES[v].split(" ", 1)[0]


def report(results: dict[str, dict[str, Any]], recipe: Any, device: str, rate: dict[str, float], steps: int,
           plain_steps: int, shape: str) -> None:
    from transformers import AutoConfig

    from sft_pipeline.model.loader import resolve

    gib = 1024**3
    config = AutoConfig.from_pretrained(resolve(recipe.model.ref).path)
    # prepare's estimate: one for the recipe, one for its fp32 variant (the only one whose dtype differs)
    default = estimates(recipe)
    fp32 = (estimates(recipe.model_copy(update={"train": recipe.train.model_copy(update={"precision": "fp32"})}))
            if "pipeline_fp32" in results else default)
    ests = {v: fp32 if v == "pipeline_fp32" else default for v in results}
    t = recipe.train
    print()
    print(f"model {shape} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}), "
          f"LoRA r={LORA['r']} alpha={LORA['lora_alpha']} dropout={LORA['lora_dropout']} all-linear"
          f"{', NF4' if recipe.model.quantization == 'nf4' else ''}; bfd blocks of {recipe.pack.seq_length}, "
          f"batch {t.per_device_train_batch_size}, lr {t.learning_rate} {t.lr_scheduler_type}, {steps} steps"
          f"{f' ({plain_steps} for variant 1)' if plain_steps != steps else ''}")
    mem_col = "peak RSS" if device == "cpu" else "peak GPU mem"
    print(f"{'variant':<38} {'steps':>5} {'s/step':>8} {'tokens/s':>9} {'MFU':>6} {mem_col:>12} {'estimate':>9} {'final loss':>10}")
    lora = default["trainable"]
    achieved = {v: sum(step_flops(config, lora, w) for w in r["timed_work"]) / r["timed_seconds"]
                for v, r in results.items()}  # model FLOP/s over the timed steps
    mfu = {v: achieved[v] / rate[compute_dtype(r)] for v, r in results.items()}
    for v, r in results.items():
        ckpt = bool(r["gradient_checkpointing"])
        peak = r["peak_rss_bytes"] if device == "cpu" else r["peak_gpu_bytes"]
        est = f"{ests[v]['with' if ckpt else 'without'] / gib:>5.2f} GiB" if v in PIPELINE else f"{'-':>9}"
        print(f"{NAMES[v]:<38} {len(r['seconds']):>5} {r['s_per_step']:>8.2f} {r['tokens_per_s']:>9.1f} "
              f"{mfu[v]:>6.1%} {peak / gib:>8.2f} GiB {est} {r['losses'][-1]:>10.4f}")
    print()
    print("per-step loss:")
    for v, r in results.items():
        print(f"  {NAMES[v]:<38} " + " ".join(f"{x:.4f}" for x in r["losses"]))
    common = min(len(r["losses"]) for r in results.values())
    ref = "pipeline" if "pipeline" in results else list(results)[-1]
    if len(results) > 1:
        gaps = [max(abs(r["losses"][i] - results[ref]["losses"][i]) / results[ref]["losses"][i]
                    for r in results.values()) for i in range(common)]
        print(f"  largest relative loss gap to variant {num(ref)} over the first {common} steps: {max(gaps):.2%}")
        for other in ("tuned", "pipeline_fp32"):
            if {other, "pipeline"} <= results.keys():
                a, b = results[other]["losses"], results["pipeline"]["losses"]
                print(f"  variants {num(other)} and {num('pipeline')} over all {min(len(a), len(b))} steps: largest relative "
                      f"gap {max(abs(x - y) / x for x, y in zip(a, b)):.2%}, step 1 (adapter B = 0, dropout has no "
                      f"effect): {abs(a[0] - b[0]):.2e}")
    print()
    for v, r in results.items():
        extra = f" (compute {compute_dtype(r)}, gradient checkpointing {r['gradient_checkpointing']}"
        if v in PIPELINE:
            extra += (f", attention {r.get('attention')}, padding-free {r.get('padding_free')}, fast LoRA dropout on "
                      f"{r.get('fast_lora_dropout')} layers")
        print(f"{NAMES[v]}: {r['threads']} torch threads{extra})")
    p = results.get("pipeline")
    if p:
        for v in ("plain", "tuned", "pipeline_fp32"):
            if v in results:
                print(f"ratio {num('pipeline')}/{num(v)} (tokens/s): {p['tokens_per_s'] / results[v]['tokens_per_s']:.2f}x")
    for v, r in results.items():
        print(f"MFU of {num(v)}: {achieved[v] / 1e9:.1f} GFLOP/s of model FLOPs / {rate[compute_dtype(r)] / 1e9:.1f} "
              f"GFLOP/s measured {compute_dtype(r)} matmul = {mfu[v]:.1%}")
    if p:
        print(f"  N_linear={linear_params(config):,} N_lora={lora:,} V={config.vocab_size} h={config.hidden_size} "
              f"L={config.num_hidden_layers}; timed steps of {num('pipeline')}: "
              f"{sum(w['tokens'] for w in p['timed_work']):,} tokens, {sum(w['labelled'] for w in p['timed_work']):,} labelled")
    print(f"  {FLOP_FORMULA}")
    if "pipeline_ckpt" in results and p:
        print(f"gradient checkpointing costs {results['pipeline_ckpt']['s_per_step'] / p['s_per_step']:.2f}x the "
              f"time per step ({num('pipeline_ckpt')} over {num('pipeline')})")
    for v in (v for v in PIPELINE if v in results):
        r = results[v]
        peak = r["peak_rss_bytes"] if device == "cpu" else r["peak_gpu_bytes"]
        e = ests[v]["with" if r["gradient_checkpointing"] else "without"]
        print(f"memory ({num(v)}, {compute_dtype(r)}, checkpointing {'on' if r['gradient_checkpointing'] else 'off'}): "
              f"estimate {e / gib:.2f} GiB (prepare, before loading), measured {peak / gib:.2f} GiB "
              f"({'peak RSS' if device == 'cpu' else 'max allocated'}): measured/estimate {peak / e:.2f}")
    if device == "cuda":
        print(f"GPU: {next(iter(results.values())).get('gpu')}")


if __name__ == "__main__":
    main()
