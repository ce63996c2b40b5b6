"""LoRA dropout with a fast random stream, for CPUs.

PEFT applies `nn.Dropout(lora_dropout)` to the input of every adapted layer (seven per decoder
layer with all-linear targets). On a CPU, torch draws dropout masks with `bernoulli_`, which on
non-Intel CPUs runs one element at a time through the global mt19937 generator under a lock:
~7 ms per 1024 x 576 input on these machines, one thread only, about 1.4 s of a 9 s LoRA step
on SmolLM2-135M. `FastDropout` draws the same Bernoulli(1 - p) keep-mask from numpy's SFC64
generator (32-bit uniform words compared against a threshold, so p is exact to 2^-32), seeded for
each call from torch's generator: the masks are then as reproducible as torch's own (a resumed
run restores torch's RNG state and draws the same masks; gradient checkpointing's recompute
restores it too). The masks are different draws from nn.Dropout's, so losses agree with it in
distribution, not bitwise. Backward keeps a 1-byte mask instead of nn.Dropout's 4-byte one.

Used on CPUs only: CUDA's fused dropout kernel is already fast.
"""

from __future__ import annotations

from typing import Any

import torch


def keep_mask(shape: torch.Size, p: float, seed: int) -> torch.Tensor:
    """1 where kept, 0 where dropped, as uint8 (torch multiplies by uint8 far faster than by bool)."""
    import numpy as np

    n = 1
    for s in shape:
        n *= s
    words = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    threshold = np.uint32(min(round(p * 2**32), 2**32 - 1))
    return torch.from_numpy((words >= threshold).view(np.uint8)).view(shape)


class FastDropout(torch.nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)).item())  # from torch's RNG: checkpointed, restored on resume
        mask = keep_mask(x.shape, self.p, seed).to(x.device)
        # autograd keeps the uint8 mask for backward, not x
        return (x * mask).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: Any) -> int:
    """Replace PEFT's LoRA nn.Dropout modules with FastDropout of the same p; returns how many."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                fast = FastDropout(drop.p)
                fast.train(drop.training)
                drops[name] = fast
                replaced += 1
    return replaced
