"""docker/build.sh without a container engine: fake buildah/podman/docker scripts on PATH.

The engine choice (`--print-engine`): an engine that cannot build (a docker client whose daemon
does not answer, a buildah or podman whose `info` fails) is skipped with a line saying so, and
the next one is used. A whole build with a fake buildah (and fake debootstrap) exits 0 and
leaves no temporary base tree behind, and a failing one keeps its own exit status.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("buildah", "podman", "docker")
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"

# A fake engine: global storage flags are dropped, then the subcommand decides. Every call is
# logged to $FAKE_LOG. `info` exits with $INFO_RC after printing $INFO_ERR to stderr.
FAKE_ENGINE = r"""#!/bin/bash
echo "$(basename "$0") $*" >> "${FAKE_LOG:-/dev/null}"
while [ "${1:-}" = --storage-driver ] || [ "${1:-}" = --root ]; do shift 2; done
case "${1:-}" in
  info) [ -n "$INFO_ERR" ] && echo "$INFO_ERR" >&2; exit $INFO_RC ;;
  inspect|image) exit 1 ;;                       # no local base image yet
  from) echo fake-ctr ;;
  mount) mkdir -p "$FAKE_MNT"; echo "$FAKE_MNT" ;;
  build) exit "${FAKE_BUILD_RC:-0}" ;;
  commit) exit "${FAKE_COMMIT_RC:-0}" ;;
  *) exit 0 ;;                                   # umount, config, rm, images
esac
"""
FAKE_DEBOOTSTRAP = r"""#!/bin/bash
echo "debootstrap $*" >> "${FAKE_LOG:-/dev/null}"
[ "${FAKE_DEBOOTSTRAP_RC:-0}" = 0 ] || exit "$FAKE_DEBOOTSTRAP_RC"
target=${@: -2:1}   # debootstrap [options] SUITE TARGET MIRROR
mkdir -p "$target/etc" "$target/debootstrap" "$target/var/lib/apt/lists" && echo fake > "$target/etc/os-release"
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture(scope="module")
def system_bin(tmp_path_factory) -> Path:
    """Every command on PATH except the real container engines (this host may have them)."""
    farm = tmp_path_factory.mktemp("sysbin")
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src, dst = Path(d) / name, farm / name
            if name in ENGINES or dst.exists() or not os.access(src, os.X_OK):
                continue
            dst.symlink_to(src)
    return farm


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the script alone: the build context it prepares (docker/context/) lands here."""
    dest = tmp_path / "repo" / "docker"
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "docker" / "build.sh", dest / "build.sh")
    return dest.parent


def build_sh(repo: Path, system_bin: Path, engines: dict[str, tuple[int, str]], *args: str,
             fakes: dict[str, str] | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run docker/build.sh with fake engines: name -> (exit status of `info`, its stderr)."""
    fake = repo.parent / "fakebin"
    fake.mkdir(exist_ok=True)
    for name, (rc, err) in engines.items():
        _script(fake / name, f"#!/bin/bash\nexport INFO_RC={rc} INFO_ERR={err!r}\n" + FAKE_ENGINE.split("\n", 1)[1])
    for name, text in (fakes or {}).items():
        _script(fake / name, text)
    full_env = {"PATH": f"{fake}:{system_bin}", "HOME": str(repo.parent), "FAKE_LOG": str(repo.parent / "calls.log"),
                "FAKE_MNT": str(repo.parent / "mnt"), "TMPDIR": str(repo.parent / "tmp"), "ENGINE_PROBE_TIMEOUT": "10",
                "CA_BUNDLE": "none", "WHEEL_DIR": str(repo.parent / "no-wheels"), **env}
    (repo.parent / "tmp").mkdir(exist_ok=True)
    return subprocess.run(["bash", str(repo / "docker" / "build.sh"), *args], env=full_env,
                          capture_output=True, text=True, timeout=60)


OK, DOWN = (0, ""), (1, NO_DAEMON)


@pytest.mark.parametrize("engines, chosen, skipped", [
    ({"docker": DOWN, "buildah": OK}, "buildah", []),
    ({"docker": DOWN, "podman": OK}, "podman", []),
    ({"buildah": (125, "Error: kernel does not support overlay fs"), "docker": DOWN, "podman": OK}, "podman", ["buildah"]),
    ({"buildah": (1, "error: cannot re-exec process"), "podman": (125, "Cannot connect to Podman"), "docker": OK},
     "docker", ["buildah", "podman"]),
])
def test_print_engine_skips_engines_that_cannot_build(repo, system_bin, engines, chosen, skipped):
    proc = build_sh(repo, system_bin, engines, "--print-engine")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == chosen
    for name in skipped:
        assert re.search(rf"skipping {name}: .*{engines[name][1]}", proc.stderr), proc.stderr
    assert "skipping docker" not in proc.stderr or "docker" in skipped
    assert "build" not in (repo.parent / "calls.log").read_text().split()  # nothing built


@pytest.mark.parametrize("docker", [DOWN, (0, "ERROR: " + NO_DAEMON)], ids=["exit-1", "old-client-exit-0"])
def test_a_docker_client_without_daemon_alone_is_not_an_engine(repo, system_bin, docker):
    proc = build_sh(repo, system_bin, {"docker": docker}, "--print-engine")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "skipping docker: its daemon does not answer" in proc.stderr and "Cannot connect" in proc.stderr
    assert "apt-get install buildah" in proc.stderr


def test_a_named_engine_that_cannot_build_stops_with_the_reason(repo, system_bin):
    proc = build_sh(repo, system_bin, {"docker": DOWN, "buildah": OK}, "--print-engine", ENGINE="docker")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "ENGINE=docker cannot build here: its daemon does not answer" in proc.stderr
    assert build_sh(repo, system_bin, {"buildah": OK}, "--print-engine", ENGINE="kaniko").returncode == 2


def _whole_build(repo, system_bin, **env):
    fakes = {"debootstrap": FAKE_DEBOOTSTRAP, "chroot": "#!/bin/bash\nexit 0\n",
             "id": '#!/bin/bash\n[ "$1" = -u ] && echo 0 || exec /usr/bin/env id "$@"\n'}
    return build_sh(repo, system_bin, {"docker": DOWN, "buildah": OK}, "cpu", fakes=fakes,
                    DEBIAN_MIRROR="http://deb.example.invalid/debian", **env)


def test_whole_build_with_a_new_base_exits_0_and_cleans_up(repo, system_bin):
    proc = _whole_build(repo, system_bin)
    assert proc.returncode == 0, proc.stderr
    assert "unbound variable" not in proc.stderr
    calls = (repo.parent / "calls.log").read_text()
    assert "debootstrap --variant=minbase" in calls and " commit --rm fake-ctr localhost/sft-pipeline-base:bookworm" in calls
    assert re.search(r"buildah .* build .*--build-arg BASE_IMAGE=localhost/sft-pipeline-base:bookworm", calls)
    assert (repo.parent / "mnt" / "etc" / "os-release").is_file()  # the tree went into the container
    assert list((repo.parent / "tmp").iterdir()) == []              # and the tree itself is gone


@pytest.mark.parametrize("env, rc, ctr_removed", [
    ({"FAKE_BUILD_RC": "3"}, 3, False),          # the image build fails: its status, base kept
    ({"FAKE_DEBOOTSTRAP_RC": "4"}, 4, False),    # debootstrap fails: no container was made yet
    ({"FAKE_COMMIT_RC": "5"}, 5, True),          # the base's commit fails: its container is removed
])
def test_a_failing_build_keeps_its_status_and_cleans_up(repo, system_bin, env, rc, ctr_removed):
    proc = _whole_build(repo, system_bin, **env)
    assert proc.returncode == rc, proc.stderr
    assert "unbound variable" not in proc.stderr
    assert list((repo.parent / "tmp").iterdir()) == []
    assert (" rm fake-ctr" in (repo.parent / "calls.log").read_text()) == ctr_removed


def test_image_installs_the_dependencies_from_the_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = (ROOT / "docker" / "install.sh").read_text()
    assert len(re.findall(r"(?m)^COPY .*requirements/lock\.txt", dockerfile)) == 2  # cpu and gpu targets
    assert '-c "$dir/lock.txt" "$stub"' in install and 'lockfile.py" check "$dir/lock.txt"' in install


# ---- llama-cpp-python from source, its converter, and the server in a container --------------------

def _cmake_default(text: str, pattern: str) -> list[str]:
    return [m.strip().strip('"') for m in re.findall(pattern, text)]


def test_the_image_builds_llama_cpp_with_the_makefiles_cmake_args():
    """One default in three places (the Makefile for `make install`, the Dockerfile's build argument
    for both targets, install.sh when run without it): a test keeps them one."""
    makefile = _cmake_default((ROOT / "Makefile").read_text(), r"(?m)^LLAMA_CMAKE_ARGS \?= (.+)$")
    dockerfile = _cmake_default((ROOT / "Dockerfile").read_text(), r"(?m)^ARG LLAMA_CMAKE_ARGS=(.+)$")
    install = _cmake_default((ROOT / "docker" / "install.sh").read_text(), r'LLAMA_CMAKE_ARGS:-("[^"]+")')
    assert len(makefile) == 1 and "-DGGML_NATIVE=OFF" in makefile[0]
    assert dockerfile == makefile * 2 and install == makefile
    assert len(re.findall(r"(?m)^COPY .*requirements/llama_cpp_converter\.py /tmp/deps/", (ROOT / "Dockerfile").read_text())) == 2


FAKE_LOGGER = '#!/bin/bash\necho "$(basename "$0") $* CMAKE_ARGS=${CMAKE_ARGS:-}" >> "$FAKE_LOG"\n'


def _deps_step(tmp_path: Path, with_compilers: bool, **env: str) -> list[str]:
    """install.sh deps on this host: fake pip, python and apt-get log their calls. The copy of the
    script writes its apt lists and cache clean-up into tmp_path, not the host's."""
    script = (ROOT / "docker" / "install.sh").read_text()
    for host_path in ("/var/lib/apt/lists", "rm -rf /root/.cache /tmp/pip-*"):
        assert host_path in script  # else this copy would clean up the host
    script = script.replace("/var/lib/apt/lists", str(tmp_path / "apt-lists")).replace(
        "rm -rf /root/.cache /tmp/pip-*", "true")
    (tmp_path / "install.sh").write_text(script)
    venv, fake, farm = tmp_path / "venv", tmp_path / "fake", tmp_path / "bin"
    for folder in (venv / "bin", fake, farm, tmp_path / "tmp", tmp_path / "deps"):
        folder.mkdir(parents=True)
    for name in ("pip", "python"):
        _script(venv / "bin" / name, FAKE_LOGGER)
    _script(fake / "apt-get", FAKE_LOGGER)
    compilers = {"cc", "c++", "gcc", "g++", "cmake", "make"}
    for name in compilers if with_compilers else ():
        _script(fake / name, "#!/bin/bash\nexit 0\n")
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):  # the host's tools, less its compilers
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name not in compilers and not (farm / name).exists() and os.access(Path(d) / name, os.X_OK):
                    (farm / name).symlink_to(Path(d) / name)
    (tmp_path / "deps" / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    full_env = {"PATH": f"{fake}:{farm}", "VIRTUAL_ENV": str(venv), "FAKE_LOG": str(tmp_path / "calls.log"),
                "TMPDIR": str(tmp_path / "tmp"), "HOME": str(tmp_path), **env}
    proc = subprocess.run(["bash", str(tmp_path / "install.sh"), "deps", str(tmp_path / "deps")], env=full_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "calls.log").read_text().splitlines()


def test_the_deps_step_builds_llama_cpp_with_compilers_it_adds_and_removes(tmp_path):
    calls = _deps_step(tmp_path, with_compilers=False)
    makefile = _cmake_default((ROOT / "Makefile").read_text(), r"(?m)^LLAMA_CMAKE_ARGS \?= (.+)$")[0]
    add = next(i for i, c in enumerate(calls) if c.startswith("apt-get install") and "g++" in c and "cmake" in c)
    build = next(i for i, c in enumerate(calls) if c.startswith("pip install -c") and "torch-constraint.txt" in c)
    purge = next(i for i, c in enumerate(calls) if c.startswith("apt-get purge") and "g++" in c and "cmake" in c)
    convert = next(i for i, c in enumerate(calls) if "llama_cpp_converter.py" in c)
    assert add < build < purge < convert
    assert calls[build].endswith(f"CMAKE_ARGS={makefile}")
    assert f"lock.txt {tmp_path / 'venv' / 'share' / 'llama.cpp'} " in calls[convert] + " "


def test_the_deps_step_keeps_a_bases_own_compilers_and_takes_other_cmake_args(tmp_path):
    calls = _deps_step(tmp_path, with_compilers=True, LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON")
    assert not [c for c in calls if c.startswith("apt-get")]
    assert any("torch-constraint.txt" in c and c.endswith("CMAKE_ARGS=-DGGML_NATIVE=ON") for c in calls)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("port", [None, "9001"])
def test_docker_serve_publishes_on_the_hosts_loopback_only_and_mounts_runs(port):
    args = ["make", "-n", "-s", "docker-serve", "RECIPE=runs/demo", *([f"SERVE_PORT={port}"] if port else [])]
    command = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout
    published = re.findall(r"(?:-p|--publish)[ =](\S+)", command)
    assert published == [f"127.0.0.1:{port or 8000}:8000"], command
    assert f'-v "{ROOT}/runs:/runs"' in command
    assert re.search(r"localhost/sft-pipeline:cpu serve runs/demo --host 0\.0\.0\.0 --port 8000 --pid-file /tmp/\S+",
                     command), command


def test_build_sh_passes_llama_cmake_args_as_a_build_argument(repo, system_bin):
    log = repo.parent / "calls.log"
    assert _whole_build(repo, system_bin).returncode == 0
    assert "LLAMA_CMAKE_ARGS" not in log.read_text()  # unset: the Dockerfile's default
    log.unlink()
    proc = _whole_build(repo, system_bin, LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AVX512=ON")
    assert proc.returncode == 0, proc.stderr
    assert "--build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON -DGGML_AVX512=ON" in log.read_text()
