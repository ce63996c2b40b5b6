"""One training process of a distributed train: `python -m sft_pipeline.train_worker RUN_DIR OUT`,
started by torchrun or accelerate (training/launch.py), never by hand.

The launching command holds the run directory's lock and wrote the recipe (RUN_DIR/recipe.yaml)
and the work folder's fingerprint before launching; a worker checks that both still agree, so
it cannot train for a recipe other than the one the folder is for. Each worker calls the training
itself (training/session.py's train) with torch.distributed set up by the launcher, never the train
stage, which is what launched it; only node 0's first process writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: train worker (rank {os.environ.get('RANK', '?')}): {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        fail("usage: python -m sft_pipeline.train_worker RUN_DIR OUT (started by the train stage's launcher)")
    from . import stages
    from .config import load_recipe
    from .errors import PipelineError
    from .model.hardware import configure_threads
    from .training.launch import in_worker
    from .training.session import train

    run_dir, out = Path(argv[0]), Path(argv[1])
    if not in_worker() or "RANK" not in os.environ:
        fail("not started by the train stage's launcher (no RANK or SFT_PIPELINE_WORKER in the environment)")
    run_dir = stages.open_run_directory(run_dir, load_recipe(run_dir / "recipe.yaml"))
    marker = out / ".fingerprint"
    if not marker.is_file() or marker.read_text() != run_dir.fingerprint("train"):
        fail(f"{out} is not the work folder of this recipe's train stage (fingerprints differ)")
    if os.environ.get("LOCAL_RANK") is not None:
        import torch

        if torch.cuda.is_available():  # before the model loads: an NF4 base quantizes onto the current GPU
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    configure_threads()
    try:
        train(run_dir, out)
    except PipelineError as err:
        fail(str(err))


if __name__ == "__main__":
    main(sys.argv[1:])
