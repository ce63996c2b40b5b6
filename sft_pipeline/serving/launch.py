"""Run the server: bind the port first, then load the model, serve until SIGTERM or SIGINT.

The port is bound before the model loads, and that same socket is handed to uvicorn: a port in
use is a one-line error within a second instead of after a model load, and nothing can take the
port between the check and the serving. The pid file names this process while it serves and is
removed on the way out, however it ends.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..config import Recipe
from . import ServeError

CONFIG_FILE = "CONFIG_FILE"  # llama_cpp.server's create_app reads its whole configuration from it
GRACE_S = 5  # a request still running at a stop gets this long to finish


@dataclass(frozen=True)
class Endpoint:
    sock: socket.socket
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


def bind(host: str, port: int) -> Endpoint:
    """A listening socket on host:port (port 0: one the system picks); ServeError, one line, if
    the port is taken or the address is not this machine's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ServeError(f"serve.host {host}: not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart may reuse TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)  # connections made while the model loads wait in the backlog
    except OSError as err:
        sock.close()
        if err.errno == 98:  # EADDRINUSE
            raise ServeError(f"port {port} on {host} is in use (another server?): stop it, or serve on another "
                             f"with --port N (serve.port)") from None
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return Endpoint(sock, host, sock.getsockname()[1])


def remote_warning(host: str) -> str | None:
    """Why serving on `host` needs a second thought, or None for a loopback address."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return None  # bind says what is wrong with it
    if all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return None
    return (f"serving on {host}, not loopback: anyone who can reach this machine can use the endpoint"
            + ("" if os.environ.get("SFT_PIPELINE_SERVE_API_KEY") else
               " (no API key: set SFT_PIPELINE_SERVE_API_KEY to require one)"))


class Stopped(BaseException):
    """SIGTERM or SIGINT: not an error, the way a server is meant to end."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise Stopped (the handlers before are restored on the way out).

    uvicorn takes both signals over while it serves, shuts down gracefully on one, puts these
    handlers back and raises the signal again: so it is Stopped that ends the serve either way,
    also when the signal comes while the model is still loading."""

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextmanager
def pid_file(path: Path | None) -> Iterator[None]:
    """This process's pid in `path` while serving; refuses a file naming another live process."""
    if path is None:
        yield
        return
    try:
        other = int(path.read_text().strip())
    except (OSError, ValueError):
        other = None
    if other is not None and other != os.getpid() and _alive(other):
        raise ServeError(f"{path}: a server (pid {other}) is running for this run directory: stop it "
                         f"(kill {other}), or give this one its own --pid-file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        try:
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def serve(recipe: Recipe, gguf: Path, pid_path: Path | None, say: Callable[[str], None],
          warn: Callable[[str], None]) -> str:
    """Serve `gguf` on the recipe's host and port until a signal; returns the signal's name."""
    import uvicorn
    from llama_cpp.server.app import create_app

    from .request_body import CompletionRequests, from_generate
    from .settings import model_settings, server_settings

    if os.environ.get(CONFIG_FILE):
        raise ServeError(f"{CONFIG_FILE}={os.environ[CONFIG_FILE]} is set: llama_cpp.server would take its settings "
                         "from that file instead of the recipe; unset it")
    cfg = recipe.serve
    models = [model_settings(recipe, gguf)]  # a bad serve.model_settings is refused before the port is bound
    warning = remote_warning(cfg.host)
    with stop_on_signals():
        try:
            with pid_file(pid_path):
                endpoint = bind(cfg.host, cfg.port)
                try:
                    if warning:
                        warn(warning)
                    say(f"loading {gguf} (pid {os.getpid()})")
                    app = create_app(server_settings=server_settings(endpoint.host, endpoint.port), model_settings=models)
                    app.add_middleware(CompletionRequests, defaults=from_generate(recipe.generate))
                    server = uvicorn.Server(uvicorn.Config(app, timeout_graceful_shutdown=GRACE_S, log_level="info"))
                    say(f"serving model '{recipe.name}' at {endpoint.url} (pid {os.getpid()}"
                        + (f", pid file {pid_path}" if pid_path else "") + f"); stop it with kill {os.getpid()}")
                    server.run(sockets=[endpoint.sock])
                finally:
                    endpoint.sock.close()
        except Stopped as stop:
            return str(stop)
    return "exit"
