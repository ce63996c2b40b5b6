#!/usr/bin/env bash
# Build the sft-pipeline container image: bash docker/build.sh [cpu|gpu]   (make docker-build)
#                                         bash docker/build.sh --print-engine   (the engine it would use)
#
#   cpu (default)  torch CPU build: a torch *+cpu* wheel from $WHEEL_DIR when there is one
#                  (copied into docker/context/wheels/), else the PyTorch CPU index
#   gpu            torch from PyPI (its CUDA build; set TORCH_SPEC/TORCH_INDEX for another)
#
# Environment (all optional):
#   ENGINE        buildah | podman | docker         (default: the first one found, in that order,
#                 that can build here: one that cannot, e.g. a docker client whose daemon does not
#                 answer, is skipped with a line saying why; a named ENGINE that cannot build stops)
#   IMAGE         image name                         (default: localhost/sft-pipeline:<target>)
#   BASE_IMAGE    base with python3 >= 3.10, or one apt-get can add it to, e.g. python:3.11-slim
#                 or nvidia/cuda:12.4.1-runtime-ubuntu22.04. Default: localhost/sft-pipeline-base:bookworm,
#                 a Debian rootfs made here with debootstrap when missing (no registry needed);
#                 python:3.11-slim where debootstrap cannot run.
#   TORCH_SPEC    default torch==2.13.0            TORCH_INDEX   index URL for torch (optional)
#   WHEEL_DIR     where torch CPU wheels lie       (default: /opt/wheels)
#   LLAMA_CMAKE_ARGS  CMAKE_ARGS for building llama-cpp-python in the image (default: the Dockerfile's,
#                 the Makefile's portable -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
#   DEBIAN_MIRROR, DEBIAN_SUITE   for the local base (default: the host's Debian mirror, bookworm)
#   STORAGE_DRIVER  buildah/podman storage driver    (default: vfs, works without overlay support;
#                 overlay is much faster and smaller on disk where the kernel allows it)
#   STORAGE_ROOT  buildah/podman storage root        (default: theirs, /var/lib/containers/storage;
#                 one root holds one driver, so give overlay its own root next to a vfs one)
#   CA_BUNDLE     PEM bundle pip trusts during the build only (default: $PIP_CERT, else
#                 $REQUESTS_CA_BUNDLE, else $SSL_CERT_FILE when set; "none" for none)
#   LAYERS        1: a cached layer per instruction (rebuilds after a source change reuse the
#                 torch and dependency layers); 0: one layer per stage, no cache. Default: 1, but 0
#                 with vfs, which copies the whole tree per layer (a layered cpu build there: 9 min,
#                 17 GB of storage, ~6 min to rebuild; unlayered: 4 min, ~2 GB, every time)
#   BUILD_ARGS    extra arguments for the build command, e.g. "--no-cache"
set -euo pipefail

PRINT_ENGINE=0
if [ "${1:-}" = --print-engine ]; then PRINT_ENGINE=1; shift; fi
TARGET=${1:-cpu}
case "$TARGET" in cpu|gpu) ;; *) echo "usage: $0 [--print-engine] [cpu|gpu]" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

IMAGE=${IMAGE:-localhost/sft-pipeline:$TARGET}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
WHEEL_DIR=${WHEEL_DIR:-/opt/wheels}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
LOCAL_BASE=localhost/sft-pipeline-base:$DEBIAN_SUITE
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

log() { printf '[docker/build.sh] %s\n' "$*" >&2; }

# --- cleanup (EXIT trap): globals, since it runs after any function's locals are gone -----------
BASE_ROOTFS=""   # make_local_base's debootstrap tree while it exists
BASE_CTR=""      # make_local_base's working container until it is committed
cleanup() {
  local m
  if [ -n "$BASE_CTR" ]; then "${ENG[@]}" rm "$BASE_CTR" >/dev/null 2>&1 || true; fi
  if [ -n "$BASE_ROOTFS" ] && [ -d "$BASE_ROOTFS" ]; then
    # debootstrap mounts proc and sys in the tree (and may bind /dev nodes); a failed run leaves them
    for m in $(awk -v r="$BASE_ROOTFS/" 'index($2, r) == 1 {print $2}' /proc/mounts 2>/dev/null | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$BASE_ROOTFS" || true
  fi
  return 0   # the trap's status would otherwise become the script's
}
trap cleanup EXIT

# --- engine ------------------------------------------------------------------------------------
# A client on PATH is not enough: docker (and podman-remote) need a daemon or service that answers,
# buildah and podman their storage. `info` asks for exactly that, so an engine that cannot build is
# skipped (with a line saying why) in favour of the next one, rather than failing mid-build.
engine_cmd() {
  case "$1" in
    buildah|podman) ENG=("$1" --storage-driver "$STORAGE_DRIVER" ${STORAGE_ROOT:+--root "$STORAGE_ROOT"}) ;;
    docker) ENG=(docker) ;;
    *) log "unknown ENGINE=$1 (buildah, podman or docker)"; exit 2 ;;
  esac
}
engine_problem() {  # prints why engine $1 cannot build here; prints nothing when it can
  local out rc=0
  command -v "$1" >/dev/null 2>&1 || { echo "not installed"; return 0; }
  engine_cmd "$1"
  out=$(timeout "${ENGINE_PROBE_TIMEOUT:-30}" "${ENG[@]}" info 2>&1 >/dev/null) || rc=$?
  # (some docker clients print the daemon error but exit 0)
  if [ "$rc" != 0 ] || grep -qiE 'cannot connect to (the docker daemon|podman)|is the docker daemon running|error during connect' <<<"$out"; then
    out=$(grep -v '^[[:space:]]*$' <<<"$out" | tail -n 1)
    [ "$rc" = 124 ] && out="no answer within ${ENGINE_PROBE_TIMEOUT:-30} s"
    case "$1" in
      docker) echo "its daemon does not answer (\`docker info\`: ${out:-exit $rc})" ;;
      *) echo "\`$1 info\` fails: ${out:-exit $rc}" ;;
    esac
  fi
}
if [ -n "${ENGINE:-}" ]; then
  engine_cmd "$ENGINE"   # an unknown name stops here
  why=$(engine_problem "$ENGINE")
  [ -z "$why" ] || { log "ENGINE=$ENGINE cannot build here: $why"; exit 1; }
else
  skipped=""
  for e in buildah podman docker; do
    why=$(engine_problem "$e")
    if [ -z "$why" ]; then ENGINE=$e; break; fi
    if [ "$why" != "not installed" ]; then log "skipping $e: $why"; fi
    skipped+="${skipped:+; }$e: $why"
  done
  if [ -z "${ENGINE:-}" ]; then
    log "no engine that can build here ($skipped)."
    log "Install buildah (Debian/Ubuntu: apt-get install buildah; it needs no daemon), or start the docker daemon."
    exit 1
  fi
fi
engine_cmd "$ENGINE"
log "engine: $ENGINE"
if [ "$PRINT_ENGINE" = 1 ]; then echo "$ENGINE"; exit 0; fi

image_exists() {
  case "$ENGINE" in
    buildah) "${ENG[@]}" inspect --type image "$1" >/dev/null 2>&1 ;;
    *) "${ENG[@]}" image inspect "$1" >/dev/null 2>&1 ;;
  esac
}

# --- base image --------------------------------------------------------------------------------
host_debian_mirror() {
  # First Debian archive URI of the host's apt sources (deb822 or one-line format).
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(sed -nE 's#^URIs:[[:space:]]*([^[:space:]]*/debian)/?([[:space:]].*)?$#\1#p; s#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]*/debian)/?[[:space:]].*#\2#p' "$f" | head -n1)
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  echo http://deb.debian.org/debian
}

make_local_base() {
  local mirror rootfs ctr mnt
  mirror=${DEBIAN_MIRROR:-$(host_debian_mirror)}
  rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/sft-base.XXXXXX")
  BASE_ROOTFS=$rootfs   # the EXIT trap removes it, whatever happens from here
  log "creating base image $LOCAL_BASE: debootstrap $DEBIAN_SUITE from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$DEBIAN_SUITE" "$rootfs" "$mirror" >&2
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* \
         "$rootfs"/tmp/* "$rootfs"/debootstrap
  case "$ENGINE" in
    buildah)
      ctr=$("${ENG[@]}" from scratch)
      BASE_CTR=$ctr
      mnt=$("${ENG[@]}" mount "$ctr")
      tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf -
      "${ENG[@]}" umount "$ctr" >/dev/null
      "${ENG[@]}" config --os linux --arch "$(dpkg --print-architecture 2>/dev/null || echo amd64)" \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd /bin/bash "$ctr"
      "${ENG[@]}" commit --rm "$ctr" "$LOCAL_BASE" >/dev/null
      BASE_CTR=""
      ;;
    *)
      tar -C "$rootfs" -cf - . | "${ENG[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
      ;;
  esac
  rm -rf --one-file-system "$rootfs"
  BASE_ROOTFS=""
  log "base image $LOCAL_BASE created"
}

if [ -z "${BASE_IMAGE:-}" ]; then
  if image_exists "$LOCAL_BASE"; then
    BASE_IMAGE=$LOCAL_BASE
  elif command -v debootstrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    make_local_base
    BASE_IMAGE=$LOCAL_BASE
  else
    BASE_IMAGE=python:3.11-slim
    log "no local base and no debootstrap (or not root): using $BASE_IMAGE from a registry"
  fi
fi

# --- build context: torch CPU wheels, CA bundle ------------------------------------------------
# The Dockerfile copies docker/context/ (git-ignored) wheels/ and ca/. For the CPU image wheels/
# gets the torch CPU wheel of $WHEEL_DIR: no PyTorch index and no multi-GB download needed.
mkdir -p docker/context/wheels docker/context/ca
rm -f docker/context/wheels/torch-*.whl docker/context/ca/ca-bundle.pem
# A host whose pip needs its own CA bundle (a TLS-inspecting proxy) needs it in the build too.
CA_BUNDLE=${CA_BUNDLE:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}}
if [ -n "$CA_BUNDLE" ] && [ "$CA_BUNDLE" != none ] && [ -s "$CA_BUNDLE" ]; then
  cp "$CA_BUNDLE" docker/context/ca/ca-bundle.pem
  log "CA bundle for the build (not kept in the image): $CA_BUNDLE"
fi
if [ "$TARGET" = cpu ] && [ -d "$WHEEL_DIR" ]; then
  want=""
  case "$TORCH_SPEC" in torch==*) want=${TORCH_SPEC#torch==}; want=${want%%+*} ;; esac
  for whl in "$WHEEL_DIR"/torch-"${want:-}"*+cpu*.whl; do
    [ -f "$whl" ] || continue
    cp -l "$whl" docker/context/wheels/ 2>/dev/null || cp "$whl" docker/context/wheels/
    log "torch wheel for the image: $(basename "$whl")"
  done
fi

# --- build -------------------------------------------------------------------------------------
args=(--target "$TARGET" -f Dockerfile -t "$IMAGE"
      --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_SPEC=$TORCH_SPEC")
[ -n "$TORCH_INDEX" ] && args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
# llama-cpp-python's build flags (the Dockerfile's default is the Makefile's portable one)
[ -n "${LLAMA_CMAKE_ARGS:-}" ] && args+=(--build-arg "LLAMA_CMAKE_ARGS=$LLAMA_CMAKE_ARGS")
case "$ENGINE" in
  buildah|podman)
    [ "$STORAGE_DRIVER" = vfs ] && layers_default=0 || layers_default=1
    [ "${LAYERS:-$layers_default}" = 1 ] && layers=true || layers=false
    build=("${ENG[@]}" build --isolation "${BUILDAH_ISOLATION:-chroot}" --layers="$layers") ;;
  docker) build=(docker build) ;;
esac
# shellcheck disable=SC2206
extra=(${BUILD_ARGS:-})
log "building $IMAGE (target $TARGET, base $BASE_IMAGE) with $ENGINE${layers:+, layers=$layers}"
start=$(date +%s)
"${build[@]}" "${args[@]}" "${extra[@]}" .
log "built $IMAGE in $(( $(date +%s) - start )) s"
case "$ENGINE" in
  docker) docker image ls "$IMAGE" ;;
  *) "${ENG[@]}" images "$IMAGE" ;;
esac
