"""Training throughput in 1 process against N processes (torchrun, DDP), the same global batch.

    .venv/bin/python bench/distributed_throughput.py                 # CPU: bundled SmolLM2-135M, 2 processes
    .venv/bin/python bench/distributed_throughput.py --processes 4 --device cuda   # a VM with 4 GPUs

Both runs train the demo recipe's packed blocks with the same LoRA, learning rate and
`--steps` optimizer steps, and the same global batch: 1 process at `--batch` rows with
accumulation N, or N processes at `--batch` rows each with accumulation 1. Each is the
pipeline's own `sft-pipeline run ... --until train` in its own run directory; the figures are
its metrics.json (median seconds per step after the first, tokens/s summed over the processes).

On a CPU the N processes share the machine's cores (each gets cores / N threads): on 2 cores 2
processes do the same arithmetic as 1 process with 2 threads, plus DDP's gradient all-reduce
over gloo and a second copy of the model in memory, so no gain is expected; the ratio printed is
what that costs. A gain needs cores (or sockets, or GPUs) that one process cannot use well.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def recipe(workdir: Path, name: str, processes: int, accumulation: int, args: argparse.Namespace) -> Path:
    tree = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    tree["name"], tree["run_dir"] = name, str(workdir / name)
    tree.setdefault("train", {}).update({
        "max_steps": args.steps, "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": accumulation, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1})
    tree.setdefault("tracking", {}).update({"wandb": "off", "tensorboard": False})
    tree["distributed"] = {"nproc_per_node": processes}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def cpu_line() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    fast = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{model}; {', '.join(fast) or 'no bf16 hardware (AVX2)'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1, help="rows per process and micro-batch")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    import psutil
    import torch

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    print(f"# bench/distributed_throughput.py --processes {args.processes} --steps {args.steps} --batch {args.batch}, "
          f"workdir {workdir}")
    print(f"# CPU: {cpu_line()}; {psutil.cpu_count(logical=False)} physical cores; GPUs: {gpus}")
    results = {}
    for name, procs, accum in (("one", 1, args.processes), ("many", args.processes, 1)):
        path = recipe(workdir, name, procs, accum, args)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sft_pipeline.cli", "run", str(path), "--until", "train"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name}: sft-pipeline failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((workdir / name / "train" / "metrics.json").read_text())
        results[name] = (procs, accum, metrics, time.perf_counter() - t0)
    print(f"\n{'run':<32}{'s/step':>8}{'tokens/s':>10}{'peak RSS/process':>18}{'final loss':>12}")
    for name, (procs, accum, m, _) in results.items():
        label = f"{procs} process{'es' if procs > 1 else ''} x accumulation {accum}"
        rss = m.get("peak_rss_bytes") or 0
        print(f"{label:<32}{m['seconds_per_step']:>8.2f}{m['tokens_per_second']:>10.1f}"
              f"{rss / 1024**3:>14.2f} GiB{m['final_train_loss']:>12.4f}")
    one, many = results["one"][2], results["many"][2]
    print(f"\nratio (tokens/s, {args.processes} processes over 1): {many['tokens_per_second'] / one['tokens_per_second']:.2f}x")
    print(f"world size seen by each worker: {[p['world_size'] for p in many['distributed']['processes']]}, "
          f"backend {many['distributed'].get('backend')}, threads per process "
          f"{max(1, (psutil.cpu_count(logical=False) or 1) // args.processes)}")


if __name__ == "__main__":
    main()
