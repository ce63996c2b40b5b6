"""sft-pipeline serve: llama.cpp's OpenAI-compatible server on a GGUF file, as a user runs it.

One server per module, started as the command in a child process on a port the system picks
(--port 0, read from the line it prints), on a Q4_K_M GGUF of the tiny Llama with SmolLM2's
tokenizer and chat template. Its answers at temperature 0 are compared with llama_cpp.Llama's
own create_chat_completion on the same file, plain and streamed; bad requests get 4xx and the
server answers the next good one; SIGTERM to its pid stops it, removes its pid file and frees its
port. The refusals (port in use, no export, a live pid file) are one line and exit status 2.
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sft_pipeline.serving import ServeError
from sft_pipeline.serving.launch import remote_warning
from sft_pipeline.serving.locate import pick

START_S = 120  # the server's start: imports and the model load (a second or two alone, more on a busy CPU)
MAX_NEW = 8  # the recipe's generate.max_new_tokens: what a request without max_tokens gets
# the recipe's generate.repetition_penalty; llama_cpp.server's own default is 1.1. The tiny random
# model answers greedily with newlines alone up to a penalty of ~1.5; at 5 its answers are words,
# and differ from those at 1.0, 1.1 and 2.0, so a request that did not get the recipe's value shows.
PENALTY = 5.0
CTX = 256
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "sft_pipeline.cli", *map(str, args)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "SFT_PIPELINE_DEBUG": "0"}


@pytest.fixture(scope="module")
def gguf_file(tiny_gguf) -> Path:
    """conftest's Q4_K_M GGUF of the tiny model, made once per session."""
    return tiny_gguf / "model-Q4_K_M.gguf"


def write_recipe(folder: Path, **serve: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"name": "tiny", "run_dir": str(folder / "run"),
              "generate": {"max_new_tokens": MAX_NEW, "repetition_penalty": PENALTY},
              "serve": {"n_ctx": CTX, "threads": 1, **serve}}
    path = folder / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def complete_export(recipe_path: Path, files: dict[str, bytes]) -> Path:
    """An export folder the way the export stage leaves it: complete, with these model-*.gguf files.
    Recorded through RunDirectory once the export stage is registered; until then a folder counts when
    it holds rundir's COMPLETE marker (serving/locate.py)."""
    from sft_pipeline.config import load_recipe
    from sft_pipeline.rundir.directory import COMPLETE
    from sft_pipeline.stages import ALL, open_run_directory

    recipe = load_recipe(recipe_path)
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    if "export" in ALL:
        with run.stage_output("export") as work:
            for name, data in files.items():
                (work / name).write_bytes(data)
        return run.path / "export"
    folder = run.path / "export"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / COMPLETE).write_text("test")
    return folder


class Server:
    """The command running in a child process; its output (stdout and stderr) kept line by line."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                                     stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._new: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                found = re.search(pattern, line)
                if found:
                    return found
            seen = len(self.lines)
            try:
                if self._new.get(timeout=1) is None:
                    break  # it exited
            except queue.Empty:
                pass
        for line in self.lines[seen:]:
            if re.search(pattern, line):
                return re.search(pattern, line)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(gguf_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    recipe = write_recipe(folder)
    pid_file = folder / "serve.pid"
    srv = Server(cli("serve", recipe, "--gguf", gguf_file, "--port", 0, "--pid-file", pid_file))
    try:
        ready = srv.wait_for(r"serving model 'tiny' at (http://127\.0\.0\.1:(\d+)/v1) \(pid (\d+)", START_S)
        srv.url, srv.port, srv.pid, srv.pid_file = ready[1], int(ready[2]), int(ready[3]), pid_file
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def direct(gguf_file):
    """llama_cpp itself on the same file, with the server's context size, threads and seed."""
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=CTX, n_threads=1, n_threads_batch=1, seed=42,
                            verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key="unused", timeout=60, max_retries=0)


def test_chat_completion_at_temperature_0_equals_a_direct_llama_cpp_call(client, direct):
    answer = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=6)
    want = direct.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=6, repeat_penalty=PENALTY)
    assert answer.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert answer.choices[0].finish_reason == want["choices"][0]["finish_reason"] == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (want["usage"]["prompt_tokens"], 6)
    assert answer.usage.prompt_tokens > len("What is the capital of France?".split())  # the chat template ran


def test_streamed_chat_completion_equals_the_direct_stream(client, direct):
    chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=6,
                                                 stream=True))
    want = list(direct.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=6, repeat_penalty=PENALTY,
                                              stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    want_pieces = [c["choices"][0]["delta"].get("content") for c in want if c["choices"][0]["delta"].get("content")]
    assert len(pieces) > 1 and pieces == want_pieces  # token by token, not one piece at the end
    assert chunks[-1].choices[0].finish_reason == want[-1]["choices"][0]["finish_reason"] == "length"
    plain = direct.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=6, repeat_penalty=PENALTY)
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]


def test_a_request_without_sampling_fields_gets_the_recipes_generate_values(server, direct):
    """llama_cpp.server's own defaults would sample (temperature 0.8, repeat_penalty 1.1) up to n_ctx."""
    import httpx

    reply = httpx.post(f"{server.url}/chat/completions", json={"messages": QUESTION}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    greedy = direct.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=MAX_NEW, repeat_penalty=PENALTY)
    assert body["usage"]["completion_tokens"] == MAX_NEW
    assert body["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    unpenalized = direct.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=MAX_NEW)
    assert unpenalized["choices"][0]["message"]["content"] != greedy["choices"][0]["message"]["content"]  # it tells


BAD_BODIES = {
    "not JSON": b'{"messages": [',
    "a JSON list": b"[1, 2]",
    "no messages": b"{}",
    "messages not a list": b'{"messages": "hello"}',
    "max_tokens not a number": json.dumps({"messages": QUESTION, "max_tokens": "many"}).encode(),
    "top_p out of range": json.dumps({"messages": QUESTION, "top_p": 7}).encode(),
    "a role it does not know": json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(),
}


@pytest.mark.parametrize("what", list(BAD_BODIES))
def test_a_bad_request_gets_400_and_the_server_answers_the_next_one(server, client, what):
    import httpx

    reply = httpx.post(f"{server.url}/chat/completions", content=BAD_BODIES[what],
                       headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == 400, (what, reply.status_code, reply.text)
    assert reply.json()["error"]["type"] == "invalid_request_error"
    good = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0, max_tokens=2)
    assert good.usage.completion_tokens == 2


def test_the_openai_client_sees_a_bad_request_as_such(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, extra_body={"top_p": 7})
    with pytest.raises(openai.NotFoundError):
        client.post("/no/such/route", cast_to=dict, body={})


def test_the_pid_file_names_the_server(server):
    assert server.pid == server.proc.pid
    assert server.pid_file.read_text().strip() == str(server.pid)


def test_sigterm_to_its_pid_stops_it_and_frees_the_port(server, client):
    """Last in the module: it stops the module's server."""
    assert client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=1).usage.completion_tokens == 1
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0
    server.wait_for(r"^server stopped \(SIGTERM\)$", 10)
    assert not server.pid_file.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    with socket.socket() as probe:  # a new server can listen there (SO_REUSEADDR, as serve and uvicorn set,
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # lets it past the TIME_WAIT of the
        probe.bind(("127.0.0.1", server.port))  # connections just closed, never past a listening socket)
        probe.listen()


def test_sigint_stops_it_as_sigterm_does(gguf_file, tmp_path):
    """Ctrl-C: exit status 0 and the pid file gone, not the 130 of an interrupted stage."""
    pid_file = tmp_path / "serve.pid"
    srv = Server(cli("serve", write_recipe(tmp_path), "--gguf", gguf_file, "--port", 0, "--pid-file", pid_file))
    try:
        srv.wait_for(r"serving model 'tiny' at http://127\.0\.0\.1:\d+/v1", START_S)
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(30) == 0
        srv.wait_for(r"^server stopped \(SIGINT\)$", 10)
        assert not pid_file.exists()
    finally:
        srv.stop()


def run_cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env(), timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_port_in_use_is_one_line_before_any_model_loads(tmp_path):
    recipe = write_recipe(tmp_path)
    complete_export(recipe, {"model-Q4_K_M.gguf": b"not a model: loading it would fail"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", recipe, "--port", port)
    line = one_error_line(proc)
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line
    assert "loading" not in proc.stdout
    assert not (tmp_path / "run" / "logs" / "serve.pid").exists()  # removed on the way out


def test_no_export_is_one_line_naming_the_export_command(tmp_path):
    line = one_error_line(run_cli("serve", write_recipe(tmp_path), "--port", 0))
    assert "export" in line and "sft-pipeline export" in line


def test_a_type_that_was_not_exported_is_one_line_naming_those_that_were(tmp_path):
    recipe = write_recipe(tmp_path)
    complete_export(recipe, {"model-Q8_0.gguf": b"x", "model-F16.gguf": b"x"})
    line = one_error_line(run_cli("serve", recipe, "--quant", "q4_k_m", "--port", 0))
    assert "serve.quant Q4_K_M" in line and "F16, Q8_0" in line


def test_a_live_servers_pid_file_is_not_taken_over(tmp_path, gguf_file):
    pid_file = tmp_path / "serve.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test's process: alive
    line = one_error_line(run_cli("serve", write_recipe(tmp_path), "--gguf", gguf_file, "--port", 0,
                                  "--pid-file", pid_file))
    assert f"a server (pid {os.getpid()}) is running" in line
    assert pid_file.read_text().strip() == str(os.getpid())


def test_unknown_llama_cpp_model_settings_are_one_line(tmp_path, gguf_file):
    recipe = write_recipe(tmp_path, model_settings={"n_gpu_layerz": 1})
    line = one_error_line(run_cli("serve", recipe, "--gguf", gguf_file, "--port", 0))
    assert "serve.model_settings: n_gpu_layerz: not a field of llama_cpp.server's ModelSettings" in line


def test_auto_prefers_q4_k_m_then_q8_0_then_f16(tmp_path):
    def folder(*types: str) -> Path:
        path = tmp_path / "-".join(types or ("none",))
        path.mkdir()
        for kind in types:
            (path / f"model-{kind}.gguf").write_bytes(b"x")
        return path

    assert pick(folder("F16", "Q8_0", "Q4_K_M"), "auto").name == "model-Q4_K_M.gguf"
    assert pick(folder("F16", "Q8_0"), "auto").name == "model-Q8_0.gguf"
    assert pick(folder("F16"), "AUTO").name == "model-F16.gguf"
    assert pick(folder("Q5_K_M"), "auto").name == "model-Q5_K_M.gguf"  # the only one there
    assert pick(tmp_path / "F16-Q8_0", "f16").name == "model-F16.gguf"  # asked for: not the preferred one
    with pytest.raises(ServeError, match="several GGUF files"):
        pick(folder("Q5_K_M", "Q6_K"), "auto")
    with pytest.raises(ServeError, match="no model-<TYPE>.gguf"):
        pick(folder(), "auto")
    with pytest.raises(ServeError, match="unknown GGUF quantization type 'q9'"):
        pick(tmp_path / "F16", "q9")


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                          ("0.0.0.0", True)])
def test_only_a_loopback_host_is_served_without_a_warning(host, warned):
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    warning = remote_warning(host)
    assert (warning is not None) == warned
    if warned:
        assert "not loopback" in warning and "SFT_PIPELINE_SERVE_API_KEY" in warning
