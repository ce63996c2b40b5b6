"""The distributed strategy as Trainer arguments (DDP, FSDP2 or DeepSpeed ZeRO: the engines
transformers and accelerate already drive), and what is refused before any work because it is
known to fail.

Every strategy is expressed through SFTConfig's own fields (ddp_*, fsdp/fsdp_config, deepspeed),
so torchrun and accelerate launch the same training; a user's own accelerate config (.yaml) is
given to `accelerate launch`, a user's own DeepSpeed config (.json) to SFTConfig.deepspeed.
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

ZERO = {"zero2": 2, "zero3": 3, "zero3_offload": 3}
SHARDED = ("fsdp2", "zero3", "zero3_offload")  # the weights themselves split across processes


def world_size(dist: Any) -> int:
    """How many processes the distributed section asks for, over all nodes."""
    return dist.nproc_per_node * dist.nnodes


def backend(dist: Any, device: str) -> str:
    return dist.backend if dist.backend != "auto" else ("nccl" if device == "cuda" else "gloo")


def deepspeed_config(strategy: str) -> dict[str, Any]:
    """A ZeRO config whose sizes and precision the Trainer fills in ("auto") from SFTConfig."""
    zero: dict[str, Any] = {"stage": ZERO[strategy], "overlap_comm": True, "contiguous_gradients": True}
    if ZERO[strategy] == 3:
        # the adapter saved from rank 0 is gathered, not rank 0's empty shard (TRL #4416, PEFT #2500)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if strategy == "zero3_offload":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto"}


def strategy_args(dist: Any, device: str) -> dict[str, Any]:
    """SFTConfig arguments for the recipe's distributed section ({} in one process)."""
    if world_size(dist) == 1:
        return {}
    args: dict[str, Any] = {"ddp_backend": backend(dist, device)}
    strategy = dist.strategy
    if strategy == "ddp":
        # every LoRA weight takes part in each step: DDP need not search the graph for unused ones
        args["ddp_find_unused_parameters"] = False
    elif strategy == "fsdp2":
        args["fsdp"] = "full_shard auto_wrap"
        args["fsdp_config"] = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
                               "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    elif strategy in ZERO:
        args["deepspeed"] = deepspeed_config(strategy)
    elif strategy.endswith(".json"):
        args["deepspeed"] = strategy
    return args  # an accelerate .yaml: its settings reach the Trainer through `accelerate launch`


def refusal(recipe: Any, device: str, strategy_path_exists: bool = True) -> str | None:
    """Why this recipe's distributed training would fail, in one line; None when it can run.
    Checked before the data stages' results are handed to the launcher."""
    dist, method = recipe.distributed, recipe.method
    strategy = dist.strategy
    key = "distributed.strategy"
    if world_size(dist) == 1:
        return None
    if strategy.endswith((".yaml", ".yml")) and dist.launcher != "accelerate":
        return f"{key}: {strategy} is an accelerate config; set distributed.launcher: accelerate"
    if strategy.endswith((".yaml", ".yml", ".json")) and not strategy_path_exists:
        return f"{key}: {strategy} does not exist"
    if strategy in ZERO or strategy.endswith(".json"):
        if importlib.util.find_spec("deepspeed") is None:
            return f"{key}: {strategy} needs DeepSpeed, which is not installed (pip install deepspeed, on a GPU host)"
        if device != "cuda":
            return f"{key}: {strategy}: DeepSpeed ZeRO trains on GPUs only here; use ddp on CPUs"
    if dist.launcher == "accelerate" and importlib.util.find_spec("accelerate") is None:
        return "distributed.launcher: accelerate is not installed"
    if method == "qlora" and strategy in SHARDED:
        # sharding NF4 weights needs bnb_4bit_quant_storage equal to the compute dtype on every
        # layer, else it fails or trains at loss 0 (bitsandbytes #970, accelerate #3983)
        return (f"{key}: {strategy} with method qlora: sharding NF4 weights is not supported by this pipeline "
                "(bitsandbytes #970, accelerate #3983); use ddp (each process keeps the whole NF4 base)")
    if strategy == "fsdp2" and device != "cuda":
        # torch's fully_shard runs over gloo, but accelerate turns FSDP on for GPU processes only:
        # on CPUs the Trainer would silently train plain DDP
        return (f"{key}: fsdp2 on CPUs: accelerate applies FSDP to GPU processes only (on CPUs the Trainer "
                "would run DDP); use ddp on CPUs")
    if dist.numa_binding is not None and device != "cuda":
        return ("distributed.numa_binding: torchrun binds each process to the NUMA node of its GPU; "
                "on a CPU host leave it unset")
    if dist.numa_binding is not None and shutil.which("numactl") is None:
        return "distributed.numa_binding: torchrun's NUMA binding needs the numactl command (apt install numactl)"
    if backend(dist, device) == "nccl" and device != "cuda":
        return "distributed.backend: nccl needs GPUs; use gloo (or auto) on CPUs"
    return None
