"""Peak-memory estimate for LoRA/QLoRA training, computed from the model config alone.

It runs before anything large is loaded, so a recipe that cannot fit is caught in a second and
gradient checkpointing is switched on only when the estimate says it is needed (it costs a
second forward pass per step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3


@dataclass
class MemoryEstimate:
    weights: int
    adapter_and_optimizer: int
    activations_full: int  # without gradient checkpointing
    activations_checkpointed: int
    logits: int
    overhead: int

    def total(self, checkpointing: bool) -> int:
        act = self.activations_checkpointed if checkpointing else self.activations_full
        return self.weights + self.adapter_and_optimizer + act + self.logits + self.overhead

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_without_checkpointing"] = self.total(False)
        d["total_with_checkpointing"] = self.total(True)
        return d


def _dims(config: Any) -> tuple[int, int, int, int, int]:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    return hidden, layers, inter, heads, cfg.vocab_size


def estimate(config: Any, total_params: int, trainable_params: int, batch: int, seq_length: int,
             weight_bytes: float, act_bytes: int, sdpa_materializes_scores: bool) -> MemoryEstimate:
    """weight_bytes: bytes per frozen weight (4 fp32, 2 bf16, ~0.56 NF4 with double quant);
    act_bytes: bytes per activation element. Activation counts are per token per layer for a
    pre-norm decoder with LoRA on every linear layer: 12 hidden-sized tensors (norms, q/k/v,
    rotary, attention output, residuals) and 6 intermediate-sized ones (gate, up, activation,
    product, LoRA dropout copies)."""
    hidden, layers, inter, heads, vocab = _dims(config)
    tokens = batch * seq_length
    per_token_layer = 12 * hidden + 6 * inter
    scores = batch * heads * seq_length * seq_length * act_bytes * 2 if sdpa_materializes_scores else 0
    act_full = layers * (tokens * per_token_layer * act_bytes + scores)
    # checkpointing keeps each layer's input, plus one layer's full activations while it recomputes
    act_ckpt = layers * tokens * hidden * act_bytes + tokens * per_token_layer * act_bytes + scores
    return MemoryEstimate(
        weights=int(total_params * weight_bytes),
        adapter_and_optimizer=trainable_params * 16,  # fp32 weight, grad, two Adam moments
        activations_full=int(act_full),
        activations_checkpointed=int(act_ckpt),
        logits=int(tokens * vocab * 4 / 8),  # TRL's fused head projects in tiles, not all at once
        overhead=int(0.4 * GIB),  # interpreter, torch, allocator slack (measured on CPU)
    )


def fmt_gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
