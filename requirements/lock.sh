#!/usr/bin/env bash
# Refresh the lock (make lock): bash requirements/lock.sh [OUT]   (default requirements/lock.txt)
#
# A fresh venv in a temporary folder gets the newest releases within pyproject.toml's ranges
# (its [project] dependencies and the dev extra), with torch at TORCH_SPEC (default
# torch==2.13.0, from TORCH_INDEX when set); `pip freeze --all` of it, less torch and what only
# a CUDA torch brings (nvidia-*, triton), becomes OUT. Nothing in .venv or the tree changes but OUT.
# Then: make install (the stamp depends on the lock, so it installs the new set) && make test.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/requirements/lock.txt}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sft-lock.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log() { printf '[requirements/lock.sh] %s\n' "$*" >&2; }

# A stub of the project (its real pyproject.toml, no code): only its dependencies get installed,
# and building it leaves nothing (build/, *.egg-info) in the tree.
mkdir -p "$tmp/src/sft_pipeline"
cp "$ROOT/pyproject.toml" "$tmp/src/"
touch "$tmp/src/README.md" "$tmp/src/sft_pipeline/__init__.py"

log "fresh venv in $tmp/venv ($("$PYTHON" --version))"
"$PYTHON" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/pip" --quiet)
"${pip[@]}" install --upgrade pip setuptools
"${pip[@]}" install "$TORCH_SPEC" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
log "newest releases within pyproject.toml's ranges"
"${pip[@]}" install "$tmp/src[dev]" "$TORCH_SPEC"
"$tmp/venv/bin/pip" check >&2
"$tmp/venv/bin/pip" freeze --all | "$tmp/venv/bin/python" "$ROOT/requirements/lockfile.py" write "$OUT"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 && [ "$OUT" -ef "$ROOT/requirements/lock.txt" ]; then
  git -C "$ROOT" --no-pager diff --stat -- requirements/lock.txt >&2 || true
fi
