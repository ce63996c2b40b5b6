"""What this machine runs fast. Precision follows the hardware, not a library default.

On a CPU without AMX or AVX512-BF16, bf16 matrix products are emulated: measured on our 2-core
AVX2 machines at 0.29 GFLOP/s against 175 GFLOP/s in fp32, a LoRA step 142 s against 8 s. On
2-core AMD EPYCs with AVX512-BF16 a bf16 matmul ran at 393 GFLOP/s against 156 in fp32 on one
and at 750-785 against ~181 on another (README, "bf16 CPUs").

Machines of one kind differ in this, so the CPU profile can be injected
(`SFT_PIPELINE_CPU_PROFILE=bf16` or `avx2`): tests then run the bf16 code path on an AVX2 host
(emulated: slow, but correct at the tiny shapes tests use) and the fp32 path on a bf16 host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import PipelineError

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
PROFILE_ENV = "SFT_PIPELINE_CPU_PROFILE"  # auto (read /proc/cpuinfo) | bf16 | avx2
PROFILES = ("auto", "bf16", "avx2")
THREADS_ENV = "SFT_PIPELINE_THREADS"


class HardwareError(PipelineError, ValueError):
    pass


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@dataclass(frozen=True)
class Hardware:
    device: str  # cuda | cpu
    bf16_fast: bool
    reason: str
    cpu_count: int
    memory_bytes: int
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None


def cpu_profile() -> str:
    profile = os.environ.get(PROFILE_ENV, "auto").strip().lower() or "auto"
    if profile not in PROFILES:
        raise HardwareError(f"{PROFILE_ENV}={profile}: expected one of {', '.join(PROFILES)}")
    return profile


def detect(cpuinfo: str | None = None) -> Hardware:
    import torch

    mem = psutil.virtual_memory().total
    cpus = psutil.cpu_count(logical=True) or 1
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        fast = torch.cuda.is_bf16_supported()
        why = f"GPU {props.name} {'supports' if fast else 'lacks'} bf16"
        return Hardware("cuda", fast, why, cpus, mem, props.name, props.total_memory)
    profile = cpu_profile()
    if profile == "bf16":
        return Hardware("cpu", True, f"{PROFILE_ENV}=bf16 (injected: runs the bf16 code path whatever this CPU has)",
                        cpus, mem)
    if profile == "avx2":
        return Hardware("cpu", False, f"{PROFILE_ENV}=avx2 (injected: runs the fp32 code path whatever this CPU has)",
                        cpus, mem)
    flags = cpu_flags(cpuinfo)
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    if have:
        return Hardware("cpu", True, f"CPU has {', '.join(have)}", cpus, mem)
    return Hardware("cpu", False, "CPU lacks AMX and AVX512-BF16, so bf16 is emulated (~500x slower than fp32)", cpus, mem)


def choose_precision(requested: str, hw: Hardware) -> tuple[str, str | None]:
    """Return (precision, warning). 'auto' picks bf16 only where it is fast."""
    if requested == "auto":
        return ("bf16" if hw.bf16_fast else "fp32"), None
    if requested == "bf16" and not hw.bf16_fast:
        return "bf16", f"precision bf16 was asked for but will run slowly: {hw.reason}; use precision: auto"
    if requested == "fp16" and hw.device == "cpu":
        return "fp16", "precision fp16 on a CPU is slow and unsupported by most kernels; use precision: auto"
    return requested, None


def default_threads() -> tuple[int, str]:
    """torch's intra-op threads: SFT_PIPELINE_THREADS, else OMP_NUM_THREADS (torch reads it
    itself), else one per physical core. A second hyper-thread on a core shares its FMA units, so
    GEMM-bound steps gain nothing from it and elementwise ops pay for the extra synchronisation."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise HardwareError(f"{name}={value}: expected a positive whole number of threads")
            return int(value), name
    return max(psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 1, 1), "physical cores"


def configure_threads() -> tuple[int, str]:
    """Set torch's thread count before any work (returns it and where it came from)."""
    import torch

    threads, source = default_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads, source


def describe(hw: Hardware, cpuinfo: str | None = None) -> dict[str, object]:
    """The machine as a run's dashboard records it: the device, the GPU or the CPU model with
    the flags that decide its speed (AVX, AMX, FMA: bf16 is fast only with AMX or AVX512-BF16)."""
    import torch

    out: dict[str, object] = {"device": hw.device, "bf16_fast": hw.bf16_fast, "why": hw.reason,
                              "cpu_count": hw.cpu_count, "memory_gib": round(hw.memory_bytes / 1024**3, 1),
                              "torch_threads": torch.get_num_threads()}
    if hw.device == "cuda":
        out.update(gpu=hw.gpu_name, gpu_memory_gib=round((hw.gpu_memory_bytes or 0) / 1024**3, 1),
                   cuda=torch.version.cuda)
        return out
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), None)
    out.update(cpu=model, cpu_flags=sorted(f for f in cpu_flags(cpuinfo) if f.startswith(("avx", "amx", "fma"))))
    return out
