"""Model FLOPs of a LoRA training step, and the matmul rate they are compared with (MFU).

One count for the train stage (per logging step, to W&B and TensorBoard) and for
bench/train_throughput.py, so the two report the same MFU for the same work. What is counted is
the useful work, not what the kernels happen to do:

  frozen linear weights  4 x N_linear per token (forward, and backward for the activation
                         gradients only: a frozen weight gets no gradient)
  LoRA                   6 x N_lora per token (forward and both gradients)
  LM head                4 x vocab x hidden per labelled position (loss.labelled_loss projects
                         no others)
  causal attention       6 x layers x heads x head_dim x n^2 per sample of n tokens (QK^T and AV
                         over n^2/2 pairs, 2 x head_dim each, per head; backward twice the forward)

Embeddings, norms and activations are not counted, nor gradient checkpointing's recompute (not
model FLOPs). The rate is the device's rated dense peak where it is a GPU we know, else the best
of a few square torch.matmuls measured here in the compute dtype: on a CPU the rated peak depends
on clocks and cores that the container does not show, and the measured rate is what torch gets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FLOP_FORMULA = ("FLOPs/step = tokens*(4*N_linear + 6*N_lora) + labelled*4*V*h + 6*L*heads*head_dim*sum(n^2) "
                "[frozen linear weights: forward + activation gradients, no weight gradients; LoRA: forward + both "
                "gradients; LM head on labelled positions only; causal attention per sample of n tokens: QK^T and AV "
                "n^2/2 pairs x 2 x head_dim each per head forward, backward twice the forward; embeddings, norms, "
                "activations and checkpointing recompute not counted]")

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets, SXM parts where there are two.
RATED_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


@dataclass(frozen=True)
class FlopShape:
    """What the FLOP count needs from a model: its frozen linear weights, LoRA weights, the LM
    head's size and the attention's."""

    linear: int
    lora: int
    vocab: int
    hidden: int
    layers: int
    heads: int
    head_dim: int

    def step(self, work: dict[str, int]) -> float:
        """Model FLOPs of the work collate.batch_work counted (tokens, labelled, attention_pairs)."""
        return (work.get("tokens", 0) * (4 * self.linear + 6 * self.lora)
                + work.get("labelled", 0) * 4 * self.vocab * self.hidden
                + 6 * self.layers * self.heads * self.head_dim * work.get("attention_pairs", 0))


def linear_params(config: Any) -> int:
    """Weights of a Llama-style decoder's linear layers from its config (what all-linear LoRA
    adapts), embeddings and LM head excluded."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    d = getattr(config, "head_dim", None) or h // heads
    return layers * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * inter)


def _attention(config: Any) -> tuple[int, int, int, int, int]:
    from .memory import dims

    d = dims(config)
    return d.vocab, d.hidden, d.layers, d.heads, d.head_dim


def shape_from_config(config: Any, lora_params: int) -> FlopShape:
    """The shape of a Llama-style model from its config alone (the benchmark's random models)."""
    return FlopShape(linear_params(config), lora_params, *_attention(config))


def shape_from_model(model: Any) -> FlopShape:
    """The shape of the model train holds, counted from its modules, so any architecture (and
    any target_modules) is counted as it is: every frozen linear layer inside the decoder, the
    LoRA layers' base weights included; LoRA's own matrices as the trainable parameters."""
    import torch

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal.get_output_embeddings()
    linear = 0
    for name, module in causal.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or ".lora_" in f".{name}":
            continue
        # in_features x out_features, not weight.numel(): an NF4 weight is stored packed
        linear += module.in_features * module.out_features
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FlopShape(linear, lora, *_attention(causal.config))


def step_flops(config: Any, lora_params: int, work: dict[str, int]) -> float:
    """Model FLOPs of one step's work on a Llama-style model known by its config."""
    return shape_from_config(config, lora_params).step(work)


def matmul_rate(device: str, dtype: Any = None, sizes: tuple[int, ...] = (2048, 3072, 4096), repeats: int = 3) -> float:
    """Best FLOP/s of square torch.matmuls here (default: fp32 on a CPU, bf16 on a GPU)."""
    import torch

    dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
    # a generator of its own: measuring at train start must not move training's random stream
    gen = torch.Generator(device=device).manual_seed(0)
    best = 0.0
    for n in sizes if device == "cpu" else (8192,):
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        torch.matmul(a, b)
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            torch.matmul(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


@dataclass(frozen=True)
class Rate:
    flops_per_second: float
    dtype: str
    how: str  # "rated: ..." or "measured: ..."

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rated(gpu_name: str | None, dtype: str) -> float | None:
    """A GPU's rated dense peak in FLOP/s for the dtype, where its name is in RATED_TFLOPS."""
    if not gpu_name:
        return None
    for model in sorted(RATED_TFLOPS, key=len, reverse=True):  # "L40S" before "L4"
        if model in gpu_name.upper() and dtype in RATED_TFLOPS[model]:
            return RATED_TFLOPS[model][dtype] * 1e12
    return None


def device_rate(hw: Any, dtype: str, cache: Path | None = None, bf16_emulated: bool = False) -> Rate:
    """The rate MFU is measured against: the rated peak of a known GPU, else a short matmul
    measured once (~0.2-1 s) and kept in `cache` (the train stage's work folder), so a resumed
    run divides by the same number as its first start."""
    import json

    import torch

    peak = rated(hw.gpu_name, dtype) if hw.device == "cuda" else None
    if peak:
        return Rate(peak, dtype, f"rated: {hw.gpu_name} {dtype} dense peak {peak / 1e12:.0f} TFLOP/s")
    key = {"device": hw.device, "gpu": hw.gpu_name, "dtype": dtype, "threads": torch.get_num_threads()}
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return Rate(saved["flops_per_second"], dtype, saved["how"] + " (cached at first start)")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    # emulated bf16 runs at ~0.3 GFLOP/s: one small product says so in a second
    sizes = (256,) if bf16_emulated else (1024, 2048) if hw.device == "cpu" else (8192,)
    t0 = time.perf_counter()
    rate = matmul_rate(hw.device, torch_dtype, sizes, repeats=1 if bf16_emulated else 2)
    how = (f"measured: best {dtype} torch.matmul of {'/'.join(map(str, sizes))}^2 on {hw.device} "
           f"({key['threads']} threads) = {rate / 1e9:.1f} GFLOP/s in {time.perf_counter() - t0:.1f} s")
    if cache is not None:
        cache.write_text(json.dumps({"key": key, "flops_per_second": rate, "how": how}))
    return Rate(rate, dtype, how)
