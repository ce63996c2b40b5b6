"""SourceError in a module of its own, below every reader: sources.py imports the readers
(source_local, source_saved, source_hf, source_deeplake, csv_read), and each of them raises this
error, so defined in sources.py it could only be imported lazily, round a circle."""

from __future__ import annotations

from ..errors import PipelineError


class SourceError(PipelineError, ValueError):
    """A source that cannot be read at all; one line with the file/line or dataset and reason."""
