"""The one error type the pipeline raises on purpose.

Every error the pipeline means a user to read (a bad recipe, a refused stage, a data file in the
wrong format, a model reference that does not resolve, ...) is a PipelineError. So the CLI needs
to know one type, not a list of them: an error class added anywhere in the package is printed as
its one line the day it is written, instead of as a traceback until someone adds it to a list.
Each subclass keeps its ValueError or RuntimeError base, so `except ValueError` still catches it.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure whose message is the whole story: one line saying what is wrong and what to do.

    `stage` is the stage that was running when it was raised (the pipeline sets it when the
    raiser did not); None outside any stage (validate, a recipe that does not parse)."""

    def __init__(self, message: str = "", stage: str | None = None):
        super().__init__(message)
        self.stage = stage

    @property
    def line(self) -> str:
        """The message on one line, led by its stage unless the message already names it."""
        text = " ".join(part.strip() for part in str(self).splitlines() if part.strip())
        if self.stage and not text.startswith(f"{self.stage}:"):
            text = f"{self.stage}: {text}"
        return text
