"""This process's place among the training processes, and the few values they must agree on
each step (whether to stop, the work done), through torch.distributed as the launcher set it up.
In one process every function answers for that process alone, without a collective."""

from __future__ import annotations

import os
import socket
from typing import Any


def _group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """The global rank: torch.distributed's once it is set up, the launcher's RANK before."""
    if _group():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


NODE_ENV = "SFT_PIPELINE_NODE_RANK"  # the node's rank as the launching command knows it


def world_size() -> int:
    """How many training processes: torch.distributed's count once set up, the launcher's WORLD_SIZE before."""
    if _group():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The process that writes the stage's output, the trackers' files and the metrics for all:
    the first process of node 0, the node whose launching command records train. On one node it
    is rank 0; across nodes torchrun's c10d rendezvous numbers the nodes in its own order (by
    host name), so global rank 0 may be on another node."""
    node = os.environ.get(NODE_ENV)
    if node is not None:
        return node == "0" and os.environ.get("LOCAL_RANK", "0") == "0"
    return rank() == 0


def _device() -> Any:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every process when it is true on one (a SIGTERM reaching some workers only: all
    stop after the same step, or the others would wait in the next step's all-reduce forever)."""
    if not _group():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def summed(counts: dict[str, int]) -> dict[str, int]:
    """Counts added over every process (the tokens a step trained on, in all of them)."""
    if not _group() or not counts:
        return counts
    import torch
    import torch.distributed as dist

    keys = sorted(counts)
    value = torch.tensor([counts[k] for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(value)
    return {k: int(v) for k, v in zip(keys, value.tolist())}


def seen() -> dict[str, Any]:
    """What every process saw of the launch, gathered on each: world size, ranks, hosts. Each
    worker reports its own world size, so a launcher that started fewer processes than asked shows."""
    me = {"rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
          "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "node_rank": int(os.environ.get(NODE_ENV, "0")),
          "host": socket.gethostname(), "pid": os.getpid()}
    if not _group():
        return {"world_size": 1, "processes": [me]}
    import torch.distributed as dist

    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, me)
    return {"world_size": dist.get_world_size(), "backend": dist.get_backend(), "processes": every}
