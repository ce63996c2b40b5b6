"""What a stage changes in its process is put back when it ends.

`sft-pipeline run` executes every stage in one process. A stage may install signal handlers
(train's SIGTERM: save a checkpoint, then stop) or set environment variables (train's WANDB_*,
TENSORBOARD_LOGGING_DIR); left in place they act on the stages after it: a SIGTERM during merge
would print "saving a checkpoint" and be ignored. Each stage gets the process as the one before
it found it.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)


@contextmanager
def restored() -> Iterator[None]:
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    environ = dict(os.environ)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
