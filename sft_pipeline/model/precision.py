"""What the weights are stored in and what the matrix products compute in, for a recipe on a machine.

Where bf16 is fast (a GPU with bf16, a CPU with AMX or AVX512-BF16) training computes in bf16
under torch.autocast, as the seed's `bf16=True` does; elsewhere in fp32 (hardware.py). Two ways
to get bf16 compute were measured on the demo recipe on a 2-core AVX512-BF16 CPU (README,
"bf16 CPUs"): bf16 base weights with autocast (the seed's `torch_dtype=bfloat16`) and fp32 base
weights with autocast, which re-casts every frozen weight on every forward and backward. The
first is the default (`model.dtype: auto`); `model.dtype: float32` gives the second. Either way
the LoRA weights, their gradients and the optimizer state stay fp32 (PEFT keeps adapter weights
in fp32 over a bf16 base), and norms and the LM head's output are fp32 (prepare's seed
preparation).

Under `method: full` there are no frozen weights: every weight is a trained parameter, so the
bf16-weights choice does not apply. The weights are fp32 master weights (with their gradients and
Adam moments), and bf16 compute, where it is fast, is autocast over them: the mixed precision of
full fine-tuning, where a bf16 weight would lose most small updates to rounding.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, ContextManager

from ..config import Recipe
from .hardware import Hardware, choose_precision

COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Precision:
    compute: str  # fp32 | bf16 | fp16: what the matrix products run in
    weights: str  # the frozen base weights' torch dtype name
    autocast: bool  # matmuls under torch.autocast (bf16/fp16 compute)
    why: str
    warning: str | None = None
    adapter: str = "float32"  # the trained parameters (LoRA weights, or every weight under full), gradients, Adam

    @property
    def weights_dtype(self) -> Any:
        import torch

        return getattr(torch, self.weights)

    @property
    def compute_dtype(self) -> Any:
        import torch

        return getattr(torch, COMPUTE_DTYPES[self.compute])

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def plan(recipe: Recipe, hw: Hardware) -> Precision:
    compute, warning = choose_precision(recipe.train.precision, hw)
    if recipe.method == "full":  # config.py refuses a model.dtype other than auto or float32 here
        weights = "float32"
        why = (f"method full: every weight is trained, fp32 master weights; precision {recipe.train.precision} -> "
               f"{compute} ({hw.reason})" + (", under autocast" if compute != "fp32" else ""))
    elif recipe.model.dtype != "auto":
        weights, why = recipe.model.dtype, f"model.dtype: {recipe.model.dtype}"
    else:
        weights = COMPUTE_DTYPES[compute]
        why = f"precision {recipe.train.precision} -> {compute} ({hw.reason}); weights follow the compute dtype"
    return Precision(compute=compute, weights=weights, autocast=compute != "fp32", why=why, warning=warning)


def autocast(p: Precision, device: str) -> ContextManager[Any]:
    """The autocast training uses, for code that runs the model outside the Trainer (evaluation,
    generation, the train stage's own loss)."""
    import torch

    if not p.autocast:
        return nullcontext()
    return torch.autocast(device_type=device, dtype=p.compute_dtype)
