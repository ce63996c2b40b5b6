"""Peak-memory estimate for LoRA/QLoRA and full training, computed from the model config alone.

It runs before anything large is loaded, so a recipe that cannot fit is caught in a second and
gradient checkpointing is switched on only when the estimate says it is needed (it costs a
second forward pass per step).

What it counts, per token and decoder layer, is what autograd keeps for backward in the train
stage as it runs (checked against torch's saved-tensor hooks on SmolLM2-135M: 1.70 GiB counted
there for 970 tokens, 1.69 GiB here): the two norms' inputs; attention's q, k and v (k and v
expanded to every head) and its output; a gated MLP's gate, activation and up outputs; and for
every LoRA-adapted linear layer its (dropped-out) input, kept for lora_A's weight gradient, a
one-byte dropout mask, and lora_A's r-wide output. Frozen linear layers keep nothing (their
backward needs only the weight). Then: the labelled positions' fp32 logits (at most every
position; kept for backward, plus one gradient of the same size), weights, the adapter with its
fp32 gradient and two Adam moments, and on a CPU the interpreter and libraries.

On a CPU the measured peak RSS is well above what is live: glibc keeps freed activation
buffers (4-6 MB each, below its mmap threshold) in its heap and they fragment. Forcing them to
mmap brought the peak from 5.3 to 3.1 GiB but doubled the step time (19 M page faults in 6 steps),
so it is left alone and counted instead: activations and logits are multiplied by
`CPU_ALLOCATOR_FACTOR`, measured on the demo recipe and the benchmark (README, "Training speed
and memory"). With gradient checkpointing the live set is small but every layer's activations
are made and freed a second time in backward, and the heap keeps relatively more: a larger
factor, measured the same way. On a GPU the estimate is compared with
torch.cuda.max_memory_allocated, which the caching allocator's reserve does not inflate: factor 1.

Full fine-tuning (`method: full`) trains every weight: 16 bytes per parameter for the fp32
weight, its gradient and the two Adam moments, and the activations every trained linear layer and
norm keeps for its weight's gradient (full_activations).

Evaluation runs without gradients at its own batch size; its transient (one layer's
intermediates and a slice of logits) replaces training's when it is the larger.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .loss import NO_GRAD_SLICE_BYTES

GIB = 1024**3
CPU_RUNTIME_BYTES = int(0.47 * GIB)  # python + torch + transformers + trl + peft + datasets, imported
# measured (peak RSS - runtime - weights - adapter) / (activations + logits), SmolLM2-135M, blocks of 512,
# 4-8 steps: 1.65-2.16 at batch 2-4 without checkpointing, 2.8-3.4 with it
CPU_ALLOCATOR_FACTOR = 2.0
CPU_ALLOCATOR_FACTOR_CHECKPOINTED = 3.0


@dataclass
class MemoryEstimate:
    weights: int
    adapter_and_optimizer: int
    activations_full: int  # without gradient checkpointing (what autograd keeps)
    activations_checkpointed: int
    logits: int
    evaluation: int  # an eval batch without gradients: one layer's intermediates, one slice of logits
    runtime: int  # interpreter and libraries (CPU RSS); 0 on a GPU
    allocator_factor: float  # heap kept by the allocator, relative to activations + logits
    allocator_factor_checkpointed: float

    def total(self, checkpointing: bool) -> int:
        act = self.activations_checkpointed if checkpointing else self.activations_full
        transient = max(act + self.logits, self.evaluation)
        factor = self.allocator_factor_checkpointed if checkpointing else self.allocator_factor
        total = int(self.runtime + self.weights + self.adapter_and_optimizer + transient * factor)
        # checkpointing only ever frees activations: where the logits dominate (a small model with
        # a large vocabulary) the larger factor must not make it look costlier than running without
        return min(total, self.total(False)) if checkpointing else total

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_without_checkpointing"] = self.total(False)
        d["total_with_checkpointing"] = self.total(True)
        return d


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    inter: int
    heads: int
    head_dim: int
    vocab: int


def dims(config: Any) -> Dims:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return Dims(hidden, layers, inter, heads, head_dim, cfg.vocab_size)


def estimate(config: Any, total_params: int, trainable_params: int, batch: int, seq_length: int,
             weight_bytes: float, act_bytes: int, sdpa_materializes_scores: bool,
             lora_inputs_per_layer: int | None = None, lora_rank_per_layer: int = 0, dropout: bool = True,
             gated_mlp: bool = True, device: str = "cpu", logits_limit_bytes: int | None = None,
             eval_batch: int = 0, full: FullTraining | None = None) -> MemoryEstimate:
    """weight_bytes: bytes per frozen weight (4 fp32, 2 bf16, ~0.56 NF4 with double quant);
    act_bytes: bytes per activation element; lora_inputs_per_layer: the summed input widths of
    one decoder layer's LoRA-adapted linear layers (all linear layers of a Llama block when None),
    lora_rank_per_layer: their summed r; gated_mlp: a gate_proj/up_proj MLP (Llama family), else
    one activation between two linear layers; eval_batch: the eval batch size, 0 without evaluation;
    sdpa_materializes_scores: attention keeps its
    (heads, seq, seq) scores and probabilities (a masked math-path SDPA or eager attention);
    full: method full (every weight trained: `trainable_params` is then every parameter and
    `total_params`, the frozen ones, 0), with the widths of what it keeps (full_activations)."""
    d = dims(config)
    tokens = batch * seq_length
    if lora_inputs_per_layer is None:  # q, k, v, o, gate, up take hidden; down takes intermediate
        lora_inputs_per_layer = 6 * d.hidden + d.inter
        lora_rank_per_layer = lora_rank_per_layer or 7 * 16
    attention = 4 * d.heads * d.head_dim + d.heads  # q, k, v (expanded), output; logsumexp
    mlp = (3 if gated_mlp else 2) * d.inter  # gate, activation and up outputs; or activation in and out
    per_token_layer = (2 * d.hidden + 2 + attention + mlp + lora_inputs_per_layer + lora_rank_per_layer) * act_bytes
    per_token_layer += lora_inputs_per_layer if dropout else 0  # one-byte masks
    scores = batch * d.heads * seq_length * seq_length * act_bytes * 2 if sdpa_materializes_scores else 0
    layer_input_bytes, outside_layers = act_bytes, 0
    if full is not None:
        per_token_layer, per_token_outside = full_activations(d, act_bytes, full, attention, gated_mlp)
        layer_input_bytes = full.residual_bytes
        outside_layers = tokens * per_token_outside + full.weight_copy_bytes
    act_full = d.layers * (tokens * per_token_layer + scores) + outside_layers
    # checkpointing keeps each layer's input, plus one layer's full activations while it recomputes
    act_ckpt = d.layers * tokens * d.hidden * layer_input_bytes + tokens * per_token_layer + scores + outside_layers
    logits = tokens * d.vocab * 4 * 2  # fp32 log-probs kept for backward, and their gradient
    if logits_limit_bytes is not None and tokens * d.vocab * 4 > logits_limit_bytes:
        logits = 2 * min(tokens, 4096) * min(d.vocab, 32768) * 4  # the chunked kernel's tiles
    # evaluation keeps nothing for backward: the hidden states in and out of the layer at work,
    # its intermediates, and loss.labelled_loss's logits slice
    eval_tokens = eval_batch * seq_length
    evaluation = eval_tokens * (3 * d.hidden + attention + mlp) * act_bytes + (NO_GRAD_SLICE_BYTES if eval_batch else 0)
    evaluation += scores // 2 * eval_batch // batch if eval_batch and scores else 0
    if full is not None and eval_batch:
        evaluation += full.weight_copy_bytes  # autocast caches its casts of trainable weights under no_grad too
    cpu = device == "cpu"
    return MemoryEstimate(
        weights=int(total_params * weight_bytes),
        adapter_and_optimizer=trainable_params * 16,  # fp32 weight, grad, two Adam moments
        activations_full=int(act_full),
        activations_checkpointed=int(act_ckpt),
        logits=int(logits),
        evaluation=int(evaluation),
        runtime=CPU_RUNTIME_BYTES if cpu else 0,
        allocator_factor=CPU_ALLOCATOR_FACTOR if cpu else 1.0,
        allocator_factor_checkpointed=CPU_ALLOCATOR_FACTOR_CHECKPOINTED if cpu else 1.0,
    )


@dataclass(frozen=True)
class FullTraining:
    """What full fine-tuning's activations are made of, beyond the layer's shape.

    residual_bytes: the residual stream, the norms' inputs and normalized values: 4 (fp32 weights
    keep it fp32, under autocast too); attention_bytes: q, k, v and the output as attention keeps
    them (4 where packed_sdpa computes a bf16 CPU step's attention in fp32); weight_copy_bytes:
    autocast's low-precision copies of every linear weight, cached for the forward and kept for
    backward (0 in fp32)."""

    residual_bytes: int
    attention_bytes: int
    weight_copy_bytes: int


def full_activations(d: Dims, act_bytes: int, full: FullTraining, attention: int, gated_mlp: bool) -> tuple[int, int]:
    """(bytes per token and decoder layer, bytes per token outside the layers) that autograd keeps
    when every weight trains. Beyond what LoRA keeps, each linear layer keeps its input for its
    weight gradient (q/k/v share one norm's output, gate/up the other's, o takes attention's output,
    down the gated product) and each norm its normalized value for its weight's gradient. Checked
    against torch's saved-tensor hooks on SmolLM2-135M (batch 2 x 512, per-sample attention, the
    labelled-positions loss with no label set): 1.542 GB counted for 1.540 GB measured in fp32,
    1.326 GB for 1.290 GB under bf16 autocast."""
    r, h = full.residual_bytes, d.hidden
    norm = 2 * h * r + 4 + h * act_bytes  # input and normalized value, 1/rms, its output as the linears take it
    mlp = (4 if gated_mlp else 2) * d.inter * act_bytes  # gate, activation, up and their product; or in and out
    per_layer = 2 * norm + attention * full.attention_bytes + h * act_bytes + mlp  # h: o_proj's input
    return per_layer, norm  # the final norm is outside the layers


def fmt_gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
