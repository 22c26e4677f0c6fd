#!/usr/bin/env bash
# Build the comfy-worker image from the Dockerfile: its `base` stage (OS, Python, torch,
# ComfyUI, custom nodes) only when the base's inputs changed, then the whole image on it.
# A plain `docker build .` makes the same image; this adds the base cache, tags and push.
#
# Usage: ./build.sh [OPTIONS] [-- DOCKER_BUILD_ARGS...]
#
# Images and tags
#   --image NAME         image repository (default: comfy-worker)
#   --registry PREFIX    prefix both repositories, e.g. ghcr.io/me or docker.io/me
#                        (gives ghcr.io/me/comfy-worker and ghcr.io/me/comfy-worker-base)
#   --base-name NAME     base image repository (default: NAME-base)
#   --push               push the tags after building (base too, so other machines reuse it)
#   --platform P         target platform, passed to docker build (e.g. linux/amd64)
#   Tags: NAME:VERSION-SHA, NAME:VERSION and NAME:latest (VERSION from pyproject.toml, SHA
#   the git commit, with "-dirty" when the tree has changes); the CPU flavour appends
#   "-cpu" to each (NAME:VERSION-cpu, NAME:latest-cpu ...).
#   Base tags: BASE:inputs-HASH (HASH covers every base input) and BASE:latest[-cpu].
#
# What to build
#   --base-only          only the base stage
#   --worker-only        never build the base: fail when no BASE:inputs-HASH exists
#   --force-base         rebuild the base even when an image for its inputs exists
#   --print-base-hash    print the base input hash and exit
#   --lock-deps          regenerate the hash-pinned locks in requirements/ and exit
#                        (scripts/image/lock_deps.sh; uses --comfyui-src/--comfyui-ref,
#                        --wheels for the CPU torch, --torch-index for the CPU index)
#
# Base inputs (each changes the hash, so the base is rebuilt)
#   --base-image IMAGE   the OS image (default: the Dockerfile's, debian:bookworm-slim)
#   --cpu                the CPU flavour: requirements/comfyui-cpu.lock (+cpu torch from
#                        PyTorch's CPU index, or from --wheels); default is the GPU flavour
#   --torch-index URL    extra pip index for the torch wheels ("" = none)
#   --wheels DIR         wheel directory put in the build (pip find-links), e.g. a local
#                        CPU torch wheel for offline machines
#   --ca-cert FILE       PEM CA bundle trusted inside the image (pip and Python), for
#                        TLS-intercepting proxies. Also from env BUILD_CA_CERT.
#   --comfyui-ref REF    ComfyUI release tag or commit (default in the Dockerfile; the
#                        locks are made for it)
#   --comfyui-src DIR    a ComfyUI source tree to use instead of downloading REF (offline)
#   --skip-custom-nodes  leave out the nodes in custom_nodes.txt (offline builds)
#   --custom-nodes FILE  a different node list (default: custom_nodes.txt)
#
# Passed through
#   --build-arg K=V      to the builds (repeatable); e.g. APT_PACKAGES=..., VAST_PYWORKER=0
#   --network MODE       docker build --network (default: host; "" to omit)
#   -- ARGS...           anything after -- goes to both `docker build` calls
#   -h, --help           this text
#
# Works with the legacy builder and with BuildKit. Prints the image reference on the last
# line of stdout. Examples:
#   ./build.sh                                          # GPU image, comfy-worker:latest
#   ./build.sh --cpu                                    # CPU image, comfy-worker:latest-cpu
#   ./build.sh --registry ghcr.io/me --push --platform linux/amd64
#   ./build.sh --base-image comfy-worker-testbase:bookworm --cpu --wheels /opt/wheels \
#       --ca-cert /etc/ssl/certs/ca-certificates.crt --comfyui-src .comfyui/ComfyUI \
#       --skip-custom-nodes                             # fully local test build
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 2; }
say() { echo "build.sh: $*" >&2; }

IMAGE=comfy-worker
REGISTRY=""
BASE_NAME=""
PUSH=0
PLATFORM=""
BASE_ONLY=0
WORKER_ONLY=0
FORCE_BASE=0
PRINT_HASH=0
LOCK_DEPS=0
NETWORK=host
CPU=0
WHEELS=""
CA_CERT=${BUILD_CA_CERT:-}
COMFYUI_SRC=""
COMFYUI_REF=""
TORCH_INDEX=""
TORCH_INDEX_SET=0
CUSTOM_NODES=custom_nodes.txt
declare -a BASE_ARGS=() COMMON_ARGS=() PASSTHROUGH=()

need() { [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"; }
while [ "$#" -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --image) need "$@"; IMAGE=$2; shift ;;
        --registry) need "$@"; REGISTRY=${2%/}; shift ;;
        --base-name) need "$@"; BASE_NAME=$2; shift ;;
        --push) PUSH=1 ;;
        --platform) need "$@"; PLATFORM=$2; shift ;;
        --base-only) BASE_ONLY=1 ;;
        --worker-only) WORKER_ONLY=1 ;;
        --force-base) FORCE_BASE=1 ;;
        --print-base-hash) PRINT_HASH=1 ;;
        --lock-deps) LOCK_DEPS=1 ;;
        --base-image) need "$@"; BASE_ARGS+=(--build-arg "BASE_IMAGE=$2"); shift ;;
        --cpu) CPU=1 ;;
        --torch-index) need "$@"; TORCH_INDEX=$2; TORCH_INDEX_SET=1; shift ;;
        --wheels) need "$@"; WHEELS=$2; shift ;;
        --ca-cert) need "$@"; CA_CERT=$2; shift ;;
        --comfyui-ref) need "$@"; COMFYUI_REF=$2; BASE_ARGS+=(--build-arg "COMFYUI_REF=$2"); shift ;;
        --comfyui-src) need "$@"; COMFYUI_SRC=$2; shift ;;
        --skip-custom-nodes) BASE_ARGS+=(--build-arg SKIP_CUSTOM_NODES=1) ;;
        --custom-nodes) need "$@"; CUSTOM_NODES=$2; shift ;;
        --build-arg) need "$@"; COMMON_ARGS+=(--build-arg "$2"); shift ;;
        --build-arg=*) COMMON_ARGS+=(--build-arg "${1#--build-arg=}") ;;
        --network) need "$@"; NETWORK=$2; shift ;;
        --) shift; PASSTHROUGH=("$@"); break ;;
        *) die "unknown option '$1' (see ./build.sh --help)" ;;
    esac
    shift
done
[ "$BASE_ONLY" = 1 ] && [ "$WORKER_ONLY" = 1 ] && die "--base-only and --worker-only exclude each other"

if [ "$LOCK_DEPS" = 1 ]; then
    args=()
    [ -n "$COMFYUI_SRC" ] && args+=(--comfyui-src "$COMFYUI_SRC")
    [ -n "$COMFYUI_REF" ] && args+=(--comfyui-ref "$COMFYUI_REF")
    [ -n "$WHEELS" ] && args+=(--wheels "$WHEELS")
    [ "$TORCH_INDEX_SET" = 1 ] && [ -n "$TORCH_INDEX" ] && args+=(--cpu-index "$TORCH_INDEX")
    exec scripts/image/lock_deps.sh ${args[@]+"${args[@]}"}
fi

FLAVOR=gpu SUFFIX=""
if [ "$CPU" = 1 ]; then
    FLAVOR=cpu SUFFIX=-cpu
    # Offline: the +cpu torch waits in --wheels; PyTorch's CPU index would only time out.
    if [ "$TORCH_INDEX_SET" = 0 ] && [ -n "$WHEELS" ]; then
        TORCH_INDEX="" TORCH_INDEX_SET=1
    fi
fi
BASE_ARGS+=(--build-arg "FLAVOR=$FLAVOR")
[ "$TORCH_INDEX_SET" = 1 ] && BASE_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX")

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
[ -n "$VERSION" ] || die "no version in pyproject.toml"
if SHA=$(git rev-parse --short=12 HEAD 2>/dev/null); then
    git diff --quiet HEAD -- 2>/dev/null || SHA="$SHA-dirty"
else
    SHA=nogit
fi
[ -n "$REGISTRY" ] && IMAGE="$REGISTRY/$IMAGE"
if [ -z "$BASE_NAME" ]; then
    BASE_NAME="$IMAGE-base"
elif [ -n "$REGISTRY" ] && [[ $BASE_NAME != */* ]]; then
    BASE_NAME="$REGISTRY/$BASE_NAME"
fi

NET_ARGS=()
[ -n "$NETWORK" ] && NET_ARGS=(--network "$NETWORK")
PLAT_ARGS=()
[ -n "$PLATFORM" ] && PLAT_ARGS=(--platform "$PLATFORM")

# --- local inputs: staged in .build-inputs/ (the Dockerfile copies it) -----------------
# One build.sh at a time per checkout: they share .build-inputs/.
mkdir -p .docker-context .build-inputs
if command -v flock >/dev/null 2>&1; then
    exec 9>.docker-context/build.lock
    flock 9
fi
clear_inputs() { find .build-inputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +; }
clear_inputs
trap clear_inputs EXIT
stage_inputs() {
    [ -f "$CUSTOM_NODES" ] || die "custom nodes list $CUSTOM_NODES not found"
    # Another list than the repository's: the build prefers .build-inputs/custom_nodes.txt.
    [ "$CUSTOM_NODES" = custom_nodes.txt ] || cp "$CUSTOM_NODES" .build-inputs/custom_nodes.txt
    if [ -n "$CA_CERT" ]; then
        [ -s "$CA_CERT" ] || die "--ca-cert $CA_CERT: no such file"
        cp "$CA_CERT" .build-inputs/ca.crt
    fi
    if [ -n "$WHEELS" ]; then
        [ -d "$WHEELS" ] || die "--wheels $WHEELS: not a directory"
        mkdir -p .build-inputs/wheels
        # Hard links when possible: a torch wheel is ~200 MB.
        find "$WHEELS" -maxdepth 1 -name '*.whl' -exec sh -c \
            'for f; do ln "$f" "$0/" 2>/dev/null || cp "$f" "$0/"; done' .build-inputs/wheels {} +
    fi
    if [ -n "$COMFYUI_SRC" ]; then
        [ -f "$COMFYUI_SRC/main.py" ] || die "--comfyui-src $COMFYUI_SRC: no main.py there"
        mkdir -p .build-inputs/comfyui
        # The source only: no models, outputs, user data, caches or installed nodes.
        tar -C "$COMFYUI_SRC" -c --exclude=./models --exclude=./output --exclude=./input \
            --exclude=./temp --exclude=./user --exclude=./custom_nodes --exclude=.git \
            --exclude=__pycache__ --exclude=./extra_model_paths.yaml . \
            | tar -C .build-inputs/comfyui -x
        BASE_ARGS+=(--build-arg COMFYUI_REF=build-context)
    fi
}

base_hash() {
    {
        # The Dockerfile's base stage (not the worker stage), and every file it copies.
        sed '/^FROM .* AS worker/,$d' Dockerfile
        find scripts/image/install_base.sh scripts/image/patch_torchvision.py \
            scripts/image/patch_torchaudio.py \
            scripts/install_custom_nodes.sh custom_nodes.txt .build-inputs \
            "requirements/comfyui-$FLAVOR.lock" -type f ! -name '*.pyc' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        printf '%s\n' ${BASE_ARGS[@]+"${BASE_ARGS[@]}"} ${COMMON_ARGS[@]+"${COMMON_ARGS[@]}"} \
            "platform=$PLATFORM"
    } | sha256sum | cut -c1-16
}

have_base() {
    docker image inspect "$BASE_REF" >/dev/null 2>&1 && return 0
    # Built elsewhere and pushed: reuse it.
    if [ -n "$REGISTRY" ] && docker pull ${PLAT_ARGS[@]+"${PLAT_ARGS[@]}"} "$BASE_REF" >/dev/null 2>&1; then
        PULLED_BASE=1
        return 0
    fi
    return 1
}

docker_build() {  # docker_build ARGS... : the common part of both builds
    docker build ${NET_ARGS[@]+"${NET_ARGS[@]}"} ${PLAT_ARGS[@]+"${PLAT_ARGS[@]}"} \
        ${BASE_ARGS[@]+"${BASE_ARGS[@]}"} ${COMMON_ARGS[@]+"${COMMON_ARGS[@]}"} \
        --build-arg "BASE_INPUTS=$HASH" "$@" ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"} . >&2
}

PULLED_BASE=0
stage_inputs
HASH=$(base_hash)
if [ "$PRINT_HASH" = 1 ]; then
    echo "$HASH"
    exit 0
fi
command -v docker >/dev/null 2>&1 || die "docker not found"
BASE_REF="$BASE_NAME:inputs-$HASH"
if [ "$FORCE_BASE" = 0 ] && have_base; then
    say "base $BASE_REF is up to date (inputs unchanged)"
elif [ "$WORKER_ONLY" = 1 ]; then
    die "--worker-only: no $BASE_REF (the base's inputs changed; build without --worker-only)"
else
    say "building base $BASE_REF ($FLAVOR)"
    docker_build --target base -t "$BASE_REF"
fi
docker tag "$BASE_REF" "$BASE_NAME:latest$SUFFIX"
if [ "$PUSH" = 1 ]; then
    docker push "$BASE_REF" >&2
    docker push "$BASE_NAME:latest$SUFFIX" >&2
fi
if [ "$BASE_ONLY" = 1 ]; then
    echo "$BASE_REF"
    exit 0
fi

# --- the whole image: the base stage comes from the layer cache (or the pulled base) ---
TAGS=("$IMAGE:$VERSION-$SHA$SUFFIX" "$IMAGE:$VERSION$SUFFIX" "$IMAGE:latest$SUFFIX")
TAG_ARGS=()
for t in "${TAGS[@]}"; do TAG_ARGS+=(-t "$t"); done
CACHE_ARGS=()
[ "$PULLED_BASE" = 1 ] && CACHE_ARGS=(--cache-from "$BASE_REF")
say "building ${TAGS[0]} on $BASE_REF"
docker_build ${CACHE_ARGS[@]+"${CACHE_ARGS[@]}"} --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$SHA" --build-arg "BASE_REF=$BASE_REF" "${TAG_ARGS[@]}"

# The image must extend the base's layers; otherwise the cache missed and the base stage
# was built again (same inputs, so the same content, but new layers to push and pull).
layers() { docker image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1"; }
base_layers=$(layers "$BASE_REF")
if [ "$(layers "${TAGS[0]}" | head -n "$(printf '%s\n' "$base_layers" | wc -l)")" != "$base_layers" ]; then
    say "warning: ${TAGS[0]} does not extend $BASE_REF's layers (Docker's layer cache missed)"
fi
if [ "$PUSH" = 1 ]; then
    for t in "${TAGS[@]}"; do docker push "$t" >&2; done
fi
echo "${TAGS[0]}"
