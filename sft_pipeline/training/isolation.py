"""Does this model, with this attention backend, keep bfd-packed samples apart?

bfd blocks carry only `position_ids` restarting at 0 per sample; transformers turns that into a
block-diagonal mask for most decoder models, but not for all (OPT, for one, derives positions
from the attention mask and lets packed samples attend to each other). TRL merely warns. Here a
probe decides: a shrunken, randomly initialized copy of the architecture (same model class,
same attention backend) runs two samples packed and each alone; the logits must match. It costs
about a second and reads no weights.
"""

from __future__ import annotations

from typing import Any

from ..errors import PipelineError

# Attribute -> small value, across the config spellings of common decoder families.
SHRINK = {
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2,
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "word_embed_proj_dim": 64,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128,
    "num_attention_heads": 4, "n_head": 4, "head_dim": 16,
    "vocab_size": 256, "max_position_embeddings": 128,
}
TOLERANCE = 1e-4


class IsolationError(PipelineError, ValueError):
    pass


def shrunk_config(config: Any) -> Any:
    small = config.__class__.from_dict(config.to_dict())
    for key, value in SHRINK.items():
        if getattr(small, key, None) is not None:
            setattr(small, key, value)
    if getattr(small, "num_key_value_heads", None) is not None:  # keep grouped-query attention grouped
        grouped = config.num_key_value_heads != getattr(config, "num_attention_heads", config.num_key_value_heads)
        small.num_key_value_heads = 2 if grouped else 4
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(small, key, None) is not None:
            setattr(small, key, 1)
    return small


def probe(config: Any, attn_implementation: str | None, trust_remote_code: bool = False) -> float:
    """Largest |logit gap| between a sample packed after another and the same sample alone."""
    import torch
    from transformers import AutoModelForCausalLM

    small = shrunk_config(config)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small, **kwargs).eval()
        a = torch.randint(3, small.vocab_size, (1, 9))
        b = torch.randint(3, small.vocab_size, (1, 7))
    finally:
        torch.random.set_rng_state(state)
    packed_ids = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
    with torch.no_grad():
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0, a.shape[1]:]
        alone = model(input_ids=b, use_cache=False).logits[0]
    return float((packed - alone).abs().max())


def check_bfd(config: Any, attn_implementation: str | None, trust_remote_code: bool = False) -> None:
    """Raise IsolationError, one line, when bfd packing would let samples see each other."""
    backend = attn_implementation or "default"
    try:
        gap = probe(config, attn_implementation, trust_remote_code)
    except Exception as err:  # a backend this host lacks, an architecture the shrink cannot build
        raise IsolationError(
            f"pack.strategy: bfd: cannot check that {config.model_type} with attention '{backend}' keeps packed "
            f"samples apart ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "use pack.strategy: none") from None
    if gap > TOLERANCE:
        raise IsolationError(
            f"pack.strategy: bfd: {config.model_type} with attention '{backend}' lets packed samples attend to "
            f"each other (logit gap {gap:.2g}); use pack.strategy: none, or wrapped for the seed's behaviour")
