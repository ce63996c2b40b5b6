"""`sft-pipeline serve`: llama.cpp's OpenAI-compatible server (llama_cpp.server) on a GGUF file.

locate.py finds the file the export stage wrote; request_body.py answers a malformed request
with 400 (the server itself says 500) and makes the recipe's generate section the defaults of the
rest; settings.py turns the recipe into llama_cpp.server's own settings; launch.py binds the port,
writes the pid file and runs uvicorn until a signal.
"""

from __future__ import annotations

from ..errors import PipelineError


class ServeError(PipelineError, RuntimeError):
    """The server cannot start: a port in use, no GGUF file to serve, a pid file of a live server."""
