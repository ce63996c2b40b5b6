"""Trainer callbacks: stopping cleanly on SIGTERM, and timing each optimizer step with the work
its batches asked of the model."""

from __future__ import annotations

import signal
import statistics
import time
from typing import Any

from rich.console import Console

console = Console(stderr=True)


class StopOnSignal:
    """SIGTERM (spot-VM preemption, `docker stop`, Ctrl-C's polite cousin): finish the current
    step, save a checkpoint, and stop; the process then exits 128+signum (StoppedBySignal) without
    the stage being recorded complete, and the next run resumes from that checkpoint."""

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        console.print("[yellow]SIGTERM: saving a checkpoint after this step, then stopping")

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                from .ranks import any_rank

                # several processes stop after the same step, whichever of them got the signal
                if any_rank(outer.received is not None):
                    outer.received = outer.received or signal.SIGTERM
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return _Callback()


class StoppedBySignal(SystemExit):
    """Training stopped by a signal (SIGTERM, after the step in progress and its checkpoint): the
    process exits 128+signum, the status a shell reports for a process the signal ended, so a
    scheduler sees the stop. Only that: an ending that is not a stop returns, as any other."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


class StepTimer:
    """Wall time of each optimizer step, and what its batches asked of the model (collate.batch_work:
    tokens without padding, labelled positions, attention pairs)."""

    def __init__(self, pad_id: int | None, cuda: bool = False) -> None:
        self.pad_id = pad_id
        self.cuda = cuda
        self.seconds: list[float] = []
        self.work: list[dict[str, int]] = []
        self._pending: dict[str, int] = {}
        self._start = 0.0

    def add_batch(self, batch: dict[str, Any]) -> None:
        from .collate import batch_work

        for key, value in batch_work(batch, self.pad_id).items():
            self._pending[key] = self._pending.get(key, 0) + value

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                outer._start = outer._now()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                from .ranks import summed

                outer.seconds.append(outer._now() - outer._start)
                outer.work.append(summed(outer._pending))  # every process's batches: the step's work
                outer._pending = {}

        return _Callback()

    def summary(self) -> dict[str, Any]:
        return step_rate(self.seconds, self.work)


def timed_steps(seconds: list[float], work: list[dict[str, int]]) -> list[tuple[float, dict[str, int]]]:
    """The steps after the first (the warm-up: allocations, lazy init), or the first alone."""
    steps = list(zip(seconds, work))
    return steps[1:] or steps


def step_rate(seconds: list[float], work: list[dict[str, int]]) -> dict[str, Any]:
    """Median seconds per step and tokens/s over the timed steps."""
    timed = timed_steps(seconds, work)
    if not timed:
        return {"seconds_per_step": None, "tokens_per_second": None}
    return {
        "seconds_per_step": statistics.median(s for s, _ in timed),
        "tokens_per_second": sum(w.get("tokens", 0) for _, w in timed) / sum(s for s, _ in timed),
    }
