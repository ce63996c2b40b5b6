"""The recipe's `generate:` settings as the one transformers.GenerationConfig every reader uses.

One place builds it, so the `generate` command, `chat` and the generation_config.json merge
writes into the model (which export copies, and every runtime reads) cannot decode two ways.
transformers fills any value a GenerationConfig leaves unset from the model's own
generation_config.json (a base model may ship do_sample true, temperature 0.6): so every value
the recipe decides is set here explicitly, and the recipe alone decides how text is decoded.

Greedy is do_sample false, or temperature 0 (transformers refuses a zero temperature when
sampling; llama.cpp and OpenAI-style servers read 0 as greedy, and so do we).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..config import GenerateConfig

GENERATION_CONFIG = "generation_config.json"  # transformers' name, which every runtime looks for
# What a saved generation_config.json is made of (batch_size is how many prompts one call takes)
GENERATION_KEYS = tuple(f"generate.{k}" for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k",
                                                  "repetition_penalty", "seed"))
RECORD = "generate.json"  # beside the model folder: the settings its generation_config.json was made from


def samples(cfg: GenerateConfig) -> bool:
    """Whether these settings draw tokens at random (else every answer is the greedy one)."""
    return cfg.do_sample and cfg.temperature > 0


def eos_ids(tokenizer: Any, own: Any = None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS, and those of the model's own
    GenerationConfig `own` where it lists more (Llama 3 ends a turn with <|eot_id|> besides
    <|end_of_text|>)."""
    ids: list[int] = []
    own = getattr(own, "eos_token_id", None)
    for value in (tokenizer.eos_token_id, *(own if isinstance(own, list) else [own])):
        if value is not None and value not in ids:
            ids.append(int(value))
    return ids


def generation_config(cfg: GenerateConfig, tokenizer: Any, own: Any = None, plain_greedy: bool = False) -> Any:
    """The transformers.GenerationConfig of the recipe's settings, with the token ids of
    `tokenizer` (and the end-of-turn ids of `own`, the model's own GenerationConfig). plain_greedy: the argmax answer with no
    repetition penalty, whatever the recipe says (evaluate's before/after pairs compare models,
    not decoding settings). The seed is kept in the config as a custom entry for runtimes that
    take one; transformers itself has none, so `seeded` applies it."""
    from transformers import GenerationConfig

    eos = eos_ids(tokenizer, own)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    values: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens, "pad_token_id": pad,
        "eos_token_id": eos[0] if len(eos) == 1 else eos or None,
        "repetition_penalty": 1.0 if plain_greedy else cfg.repetition_penalty,
    }
    if tokenizer.bos_token_id is not None:
        values["bos_token_id"] = tokenizer.bos_token_id
    if not plain_greedy and samples(cfg):
        values.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed)
    else:
        values["do_sample"] = False
    return GenerationConfig(**values)


@contextmanager
def seeded(seed: int | None, device: str = "cpu") -> Iterator[None]:
    """Draws inside come from `seed` (None: nothing to seed, greedy), and torch's global random
    state is put back afterwards: a seeded answer must not change what training or another
    caller in the same process draws next."""
    import torch

    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if device == "cuda" and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def llama_cpp_params(cfg: GenerateConfig) -> dict[str, Any]:
    """The same settings as llama_cpp.Llama.create_completion's keywords: temperature 0 is its
    greedy, top_k 0 its "no top-k cut", repeat_penalty its repetition_penalty (the same
    CTRL-style penalty on tokens already present)."""
    if not samples(cfg):
        return {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": cfg.repetition_penalty,
                "max_tokens": cfg.max_new_tokens}
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k, "min_p": 0.0,
            "repeat_penalty": cfg.repetition_penalty, "seed": cfg.seed, "max_tokens": cfg.max_new_tokens}


def recorded(cfg: GenerateConfig) -> dict[str, Any]:
    """The settings a saved generation_config.json is made from, as RECORD keeps them."""
    return {key.split(".", 1)[1]: getattr(cfg, key.split(".", 1)[1]) for key in GENERATION_KEYS}


def write_generation_config(cfg: GenerateConfig, tokenizer: Any, own: Any, out: Path) -> Path:
    """out/model/generation_config.json from the recipe's settings, and out/generate.json with
    them. The old file is unlinked first, never written through: under method full out/model is
    hard links to train/model, and writing in place would change train's file too."""
    folder = out / "model"
    path = folder / GENERATION_CONFIG
    path.unlink(missing_ok=True)
    generation_config(cfg, tokenizer, own).save_pretrained(str(folder))
    (out / RECORD).write_text(json.dumps(recorded(cfg), indent=2) + "\n", encoding="utf-8")
    return path
