"""Stage 5, train: TRL's SFTTrainer on the packed blocks, from the adapter prepare recorded.

The training itself is training/session.py's `train`; this stage decides only where it runs. One
process: here, directly. Several (distributed.nproc_per_node x nnodes): training/launch.py starts
them with torchrun or accelerate, each running train_worker.py, which calls `train`; this command
keeps the run directory's lock and waits. On a node other than 0 the result is written into node
0's run directory, so the stage returns RecordedElsewhere and nothing is recorded here.

Checkpoints go to the stage's work folder, so a killed run resumes from the last one when the
stage is run again with the same recipe. Under `method: full` train starts from model.ref itself
and saves the whole trained model (safetensors) with its tokenizer in model/: that is the run's
export (merge has nothing to merge).
"""

from __future__ import annotations

from pathlib import Path

from ..model.hardware import detect
from ..rundir.directory import RunDirectory
from ..rundir.stage_spec import METRICS, SUMMARY, RecordedElsewhere, StageSpec
from ..training import launch
from ..training.session import train
from ..training.trackers import IDENTITY, MATMUL_RATE, SCALARS

SPEC = StageSpec(
    # load: its stats.json for the tracking summary (kept and dropped records)
    name="train", reads=("method", "train", "model", "distributed.nproc_per_node", "distributed.nnodes",
                         "distributed.strategy"),
    upstream=("load", "pack", "prepare"),
    writes=(METRICS, SUMMARY,
            IDENTITY,  # the W&B run id, made at first start: a resumed train continues that run
            SCALARS,  # every logged row, fsynced: a resume logs each step once
            MATMUL_RATE),  # MFU's denominator, measured once: a resume divides by the same
    may_write={"adapter/": "method lora or qlora: the trained adapter",
               "model/": "method full: the trained model (safetensors) and tokenizer",
               "checkpoints/": "the trainer's output_dir (checkpoints when train.save_strategy saves one)",
               "tensorboard/": "tracking.tensorboard",
               "wandb/": "tracking.wandb is not off"},
    resumes=True,  # a killed run resumes from its last checkpoint in the work folder
    ignores={"tracking": "where metrics are reported, not what is trained",
             **{f"distributed.{key}": "where and how the processes start, not what they train"
                for key in ("node_rank", "rdzv_endpoint", "rdzv_id", "launcher", "threads_per_process", "backend",
                            "numa_binding")},
             "name": "the W&B / TensorBoard run name"},
)


def produce(run_dir: RunDirectory, out: Path) -> RecordedElsewhere | None:
    if not launch.needs_launch(run_dir.recipe.distributed):
        train(run_dir, out)
        return None
    node = launch.train_in_processes(run_dir, out, detect().device)
    return RecordedElsewhere("node 0's run directory") if node != 0 else None
