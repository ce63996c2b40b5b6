"""Training in several processes: the train stage hands its work folder to torchrun (or
accelerate launch), which starts the workers (train_worker.py); this process keeps the run
directory's lock, forwards SIGTERM to the workers, and reports their end in one line.

The launch engine is torch's own (`python -m torch.distributed.run`, which is what `torchrun`
runs) or accelerate's; nothing here spawns workers or talks between them. A node's rank and the
rendezvous endpoint come from the recipe, else from the launch environment (torchrun's and
SLURM's variables), so one recipe serves every node of a job.
"""

from __future__ import annotations

import codecs
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console

from ..errors import PipelineError
from ..rundir.stage_spec import METRICS
from .callbacks import StoppedBySignal
from .strategy import world_size

console = Console(stderr=True)

WORKER_ENV = "SFT_PIPELINE_WORKER"  # set in each worker: train_worker.py refuses to start without it
DEFAULT_PORT = 29500  # torchrun's own default


class LaunchError(PipelineError, RuntimeError):
    """The distributed launch cannot start, or a worker failed."""


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes meet: this node's rank, node 0's host:port, the job's id at the rendezvous."""

    node_rank: int
    endpoint: str | None  # None: one node, torchrun's --standalone
    job_id: str


def in_worker(env: Mapping[str, str] = os.environ) -> bool:
    """Was this process started by run_workers (through torchrun or accelerate)?"""
    return env.get(WORKER_ENV) == "1"


def needs_launch(dist: Any, env: Mapping[str, str] = os.environ) -> bool:
    """Several processes are asked for. A command started under someone else's torchrun
    (WORLD_SIZE set) is refused: every copy of it would take the run directory's lock and run the
    data stages. Only the stage asks; a worker trains without asking (train_worker.py)."""
    if env.get("WORLD_SIZE", "1") not in ("", "1"):
        raise LaunchError("sft-pipeline is running under a distributed launcher (WORLD_SIZE="
                          f"{env['WORLD_SIZE']}); run it as one command and set distributed.nproc_per_node / "
                          "nnodes in the recipe: it launches the workers itself")
    return world_size(dist) > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-05,07],cpu1" -> "gpu03"), as `scontrol show
    hostnames` would print it first; node 0 of the job hosts the rendezvous."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r}: not a node list")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def rendezvous(dist: Any, run_name: str, env: Mapping[str, str] = os.environ) -> Rendezvous:
    """This node's rank and node 0's endpoint: the recipe's values, else torchrun's variables
    (NODE_RANK, MASTER_ADDR, MASTER_PORT), else SLURM's (SLURM_NODEID, the job's first host)."""
    rank = dist.node_rank
    if rank is None:
        raw = env.get("NODE_RANK") or env.get("SLURM_NODEID") or ("0" if dist.nnodes == 1 else None)
        if raw is None:
            raise LaunchError(f"distributed.nnodes is {dist.nnodes} but this node's rank is unknown: set "
                              "distributed.node_rank, or NODE_RANK (SLURM sets SLURM_NODEID)")
        if not raw.isdigit() or int(raw) >= dist.nnodes:
            raise LaunchError(f"node rank {raw!r} (from the environment) is not in 0..{dist.nnodes - 1}")
        rank = int(raw)
    job = dist.rdzv_id or env.get("SLURM_JOB_ID") or re.sub(r"[^A-Za-z0-9_.-]", "_", run_name)
    if dist.nnodes == 1:
        return Rendezvous(rank, dist.rdzv_endpoint, job)
    endpoint = dist.rdzv_endpoint
    if endpoint is None and env.get("MASTER_ADDR"):
        endpoint = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT') or DEFAULT_PORT}"
    if endpoint is None and env.get("SLURM_JOB_NODELIST"):
        endpoint = f"{first_slurm_host(env['SLURM_JOB_NODELIST'])}:{env.get('MASTER_PORT') or DEFAULT_PORT}"
    if endpoint is None:
        raise LaunchError(f"distributed.nnodes is {dist.nnodes} but no rendezvous endpoint is set: set "
                          "distributed.rdzv_endpoint to node 0's host:port (or MASTER_ADDR and MASTER_PORT)")
    return Rendezvous(rank, endpoint, job)


def command(dist: Any, rdzv: Rendezvous, run_dir: Path, out: Path, accelerate_config: Path | None = None,
            python: str = sys.executable) -> list[str]:
    """The launch command line: torchrun (as `python -m torch.distributed.run`, so the venv's
    torch runs it) or `accelerate launch`, each starting train_worker.py in every process."""
    worker = ["-m", "sft_pipeline.train_worker", str(run_dir), str(out)]
    if dist.launcher == "accelerate":
        cmd = [python, "-m", "accelerate.commands.launch"]
        if accelerate_config is not None:
            cmd += ["--config_file", str(accelerate_config)]
        # --multi_gpu is accelerate's torch.distributed launcher, on CPUs too; its --cpu path starts
        # one process whatever --num_processes says (accelerate #2741)
        cmd += ["--multi_gpu", "--num_processes", str(world_size(dist)), "--num_machines", str(dist.nnodes),
                "--machine_rank", str(rdzv.node_rank), "--rdzv_backend", "c10d" if dist.nnodes > 1 else "static"]
        if rdzv.endpoint:
            host, _, port = rdzv.endpoint.rpartition(":")
            cmd += ["--main_process_ip", host, "--main_process_port", port]
        return cmd + worker
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(dist.nproc_per_node)]
    if dist.numa_binding is not None:
        cmd += ["--numa-binding", dist.numa_binding]
    if dist.nnodes == 1 and rdzv.endpoint is None:
        # a free local port, nothing shared with another job; the workers reach it at 127.0.0.1,
        # not at the host name (in a container that name often resolves to nothing, and the
        # workers would wait out the rendezvous timeout)
        cmd += ["--standalone", "--local-addr", "127.0.0.1"]
    else:
        # node 0 hosts the c10d store at the endpoint (said, not guessed from host names)
        cmd += ["--nnodes", str(dist.nnodes), "--node-rank", str(rdzv.node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", str(rdzv.endpoint), "--rdzv-id", rdzv.job_id,
                "--rdzv-conf", f"is_host={int(rdzv.node_rank == 0)}"]
    return cmd + worker


def worker_env(dist: Any, node_rank: int = 0, env: Mapping[str, str] = os.environ,
               cores: int | None = None) -> dict[str, str]:
    """The workers' environment: marked as workers, told this node's rank (node 0's first
    process writes: training/ranks.py), and each with its share of this node's cores
    (processes sharing cores with more threads than cores slow each other down)."""
    import psutil

    from .ranks import NODE_ENV

    out = dict(env)
    out[WORKER_ENV] = "1"
    out[NODE_ENV] = str(node_rank)
    if dist.threads_per_process is not None:
        threads = dist.threads_per_process
    elif env.get("SFT_PIPELINE_THREADS") or env.get("OMP_NUM_THREADS"):
        threads = None  # the user's choice, read by each worker (model/hardware.py)
    else:
        cores = cores or psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 1
        threads = max(1, cores // dist.nproc_per_node)
    if threads is not None:
        out["SFT_PIPELINE_THREADS"] = out["OMP_NUM_THREADS"] = str(threads)
    return out


def _children(pid: int) -> list[int]:
    """The direct child processes of pid (Linux /proc)."""
    try:
        return [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    except OSError:
        return []


def rank_of(pid: int) -> int | None:
    """The RANK a process was started with (torchrun sets it in each worker's environment)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [e[5:] for e in env if e.startswith(b"RANK=")]
    return int(found[0]) if found and found[0].isdigit() else None


def workers_of(pid: int) -> list[int]:
    """The training processes the launcher started: its children with a RANK (not, say, the
    multiprocessing resource tracker)."""
    return [kid for kid in _children(pid) if rank_of(kid) is not None]


def _pass_through(fd: int, decoder: Any, deadline: float | None = None) -> None:
    """Copy the workers' output to this command's stderr (the stage log's tee) until every writer
    has closed it, or until `deadline` (time.monotonic()) passes."""
    while True:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        sys.stderr.write(decoder.decode(chunk))
        sys.stderr.flush()


def run_workers(cmd: list[str], env: dict[str, str], here: int, world: int) -> None:
    """Run the launch command to its end, its output passed through (into the stage's log).
    SIGTERM here goes to the workers themselves, which save a checkpoint at the end of the step
    they are in and stop (torchrun, told instead, would give them 30 s before SIGKILL)."""
    console.print(f"[bold]launching[/] {here} of {world} processes here: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        workers = workers_of(proc.pid) or [proc.pid]
        console.print(f"[yellow]SIGTERM: passed to {len(workers)} worker processes; they save a checkpoint and stop")
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGTERM, forward)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two reads
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    try:
        _pass_through(fd, decoder)
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:  # this command is leaving (Ctrl-C, an error): torchrun stops its workers
            proc.terminate()
            # their output is still read, or a full pipe would block them before they stop
            _pass_through(fd, decoder, deadline=time.monotonic() + 90)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if received:
        console.print("[yellow]stopped by SIGTERM; the workers saved a checkpoint; run train again to resume")
        raise StoppedBySignal(received[0])
    if code != 0:
        raise LaunchError(f"a training process failed ({cmd[2] if cmd[1] == '-m' else cmd[0]} exit status {code}; "
                          "its output is above and in logs/train.log); nothing is recorded complete: run train "
                          "again to resume from the last checkpoint")


def train_in_processes(run_dir: Any, out: Path, device: str) -> int:
    """Training in distributed.nproc_per_node x nnodes processes, to their end. Refused in one
    line, before anything starts, where the strategy is known to fail. Returns this node's rank:
    on node 0, its first process has written the results into `out`; on any other node `out` holds
    none of them (they are in node 0's run directory), and the caller records nothing here."""
    from .strategy import refusal

    recipe = run_dir.recipe
    dist = recipe.distributed
    problem = refusal(recipe, device, strategy_path_exists=Path(dist.strategy).is_file())
    if problem:
        raise LaunchError(problem)
    rdzv = rendezvous(dist, recipe.name)
    config = Path(dist.strategy) if dist.strategy.endswith((".yaml", ".yml")) else None
    cmd = command(dist, rdzv, run_dir.path, out, accelerate_config=config)
    run_workers(cmd, worker_env(dist, rdzv.node_rank), dist.nproc_per_node, world_size(dist))
    if rdzv.node_rank != 0:
        console.print(f"[green]node {rdzv.node_rank} of {dist.nnodes}[/]: its processes finished; the trained "
                      "result is in node 0's run directory (only node 0 records train)")
        return rdzv.node_rank
    if not (out / METRICS).is_file():
        raise LaunchError(f"the training processes ended without node 0's first process writing {out / METRICS}")
    return 0
