#!/usr/bin/env bash
# Build the comfy-worker images: the base (Dockerfile.base) only when its inputs changed,
# then the worker (Dockerfile) on top of it.
#
# Usage: ./build.sh [OPTIONS] [-- DOCKER_BUILD_ARGS...]
#
# Images and tags
#   --image NAME         worker image repository (default: comfy-worker)
#   --registry PREFIX    prefix both repositories, e.g. ghcr.io/me or docker.io/me
#                        (gives ghcr.io/me/comfy-worker and ghcr.io/me/comfy-worker-base)
#   --base-name NAME     base image repository (default: NAME-base)
#   --push               push the tags after building (base too, so other machines reuse it)
#   --platform P         target platform, passed to docker build (e.g. linux/amd64)
#   Worker tags: NAME:VERSION-SHA, NAME:VERSION and NAME:latest (VERSION from
#   pyproject.toml, SHA the git commit, with "-dirty" when the tree has changes).
#   Base tags: BASE:inputs-HASH (HASH covers every base input) and BASE:latest.
#
# What to build
#   --base-only          only the base
#   --worker-only        only the worker, on BASE:latest (no base input check)
#   --force-base         rebuild the base even when an image for its inputs exists
#   --print-base-hash    print the base input hash and exit
#
# Base inputs (each changes the hash, so the base is rebuilt)
#   --base-image IMAGE   FROM of the base (default: the ARG in Dockerfile.base,
#                        an nvidia/cuda:*-cudnn-runtime-ubuntu* image)
#   --cpu                CPU-only torch: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#                        (with --wheels: torch from there and PyPI instead)
#   --torch-index URL    pip index for torch (e.g. .../whl/cu126); "" = PyPI
#   --torch "PKGS"       torch packages/pins (default in Dockerfile.base)
#   --wheels DIR         wheel directory copied into the build context (pip find-links),
#                        e.g. a local CPU torch wheel for offline machines
#   --ca-cert FILE       PEM CA bundle trusted inside the image (pip and Python), for
#                        TLS-intercepting proxies. Also from env BUILD_CA_CERT.
#   --comfyui-ref REF    ComfyUI release tag or commit (default in Dockerfile.base)
#   --comfyui-src DIR    a ComfyUI source tree to use instead of downloading REF (offline)
#   --skip-custom-nodes  leave out the nodes in custom_nodes.txt (offline builds)
#   --custom-nodes FILE  a different node list (default: custom_nodes.txt)
#
# Passed through
#   --build-arg K=V      to both builds (repeatable); e.g. APT_PACKAGES=..., VAST_PYWORKER=0
#   --network MODE       docker build --network (default: host; "" to omit)
#   -- ARGS...           anything after -- goes to both `docker build` calls
#   -h, --help           this text
#
# Works with the legacy builder and with BuildKit (DOCKER_BUILDKIT=1). Prints the worker
# image reference on the last line of stdout. Examples:
#   ./build.sh                                          # CUDA image, comfy-worker:latest
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
NETWORK=host
CPU=0
WHEELS=""
CA_CERT=${BUILD_CA_CERT:-}
COMFYUI_SRC=""
CUSTOM_NODES=custom_nodes.txt
declare -a BASE_ARGS=() COMMON_ARGS=() PASSTHROUGH=()
TORCH_INDEX_SET=0

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
        --base-image) need "$@"; BASE_ARGS+=(--build-arg "BASE_IMAGE=$2"); shift ;;
        --cpu) CPU=1 ;;
        --torch-index) need "$@"; BASE_ARGS+=(--build-arg "TORCH_INDEX_URL=$2"); TORCH_INDEX_SET=1; shift ;;
        --torch) need "$@"; BASE_ARGS+=(--build-arg "TORCH_PACKAGES=$2"); shift ;;
        --wheels) need "$@"; WHEELS=$2; shift ;;
        --ca-cert) need "$@"; CA_CERT=$2; shift ;;
        --comfyui-ref) need "$@"; BASE_ARGS+=(--build-arg "COMFYUI_REF=$2"); shift ;;
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

if [ "$CPU" = 1 ]; then
    # CPU torch: the PyTorch CPU index, or PyPI + local wheels (where a +cpu wheel waits).
    if [ "$TORCH_INDEX_SET" = 0 ]; then
        if [ -n "$WHEELS" ]; then
            BASE_ARGS+=(--build-arg "TORCH_INDEX_URL=")
        else
            BASE_ARGS+=(--build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
        fi
    fi
    # No torchaudio CPU build sits beside a local torch wheel; ComfyUI only loses audio nodes.
    if ! printf '%s\n' ${BASE_ARGS[@]+"${BASE_ARGS[@]}"} | grep -q '^TORCH_PACKAGES='; then
        if [ -n "$WHEELS" ]; then
            ver=$(find "$WHEELS" -maxdepth 1 -name 'torch-*.whl' -printf '%f\n' | sed -n \
                's/^torch-\([^-]*\)-.*/\1/p' | sed 's/%2B/+/' | sort -V | tail -1)
            [ -n "$ver" ] || die "--cpu --wheels $WHEELS: no torch-*.whl there"
            BASE_ARGS+=(--build-arg "TORCH_PACKAGES=torch==$ver torchvision")
        fi
    fi
fi

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

# --- the base: assemble its context, hash it, build only when new -------------------
# One context per run: two build.sh runs in one checkout must not share it.
mkdir -p .docker-context
CTX=$(mktemp -d .docker-context/base.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
assemble_base_context() {
    mkdir -p "$CTX/scripts"
    cp Dockerfile.base "$CTX/Dockerfile"
    cp -r scripts/image "$CTX/scripts/image"
    cp scripts/install_custom_nodes.sh "$CTX/scripts/"
    [ -f "$CUSTOM_NODES" ] || die "custom nodes list $CUSTOM_NODES not found"
    cp "$CUSTOM_NODES" "$CTX/custom_nodes.txt"
    if [ -n "$CA_CERT" ]; then
        [ -s "$CA_CERT" ] || die "--ca-cert $CA_CERT: no such file"
        cp "$CA_CERT" "$CTX/extra-ca.crt"
    fi
    if [ -n "$WHEELS" ]; then
        [ -d "$WHEELS" ] || die "--wheels $WHEELS: not a directory"
        mkdir -p "$CTX/wheels"
        # Hard links when possible: a torch wheel is ~200 MB.
        find "$WHEELS" -maxdepth 1 -name '*.whl' -exec sh -c \
            'for f; do ln "$f" "$0/" 2>/dev/null || cp "$f" "$0/"; done' "$CTX/wheels" {} +
    fi
    if [ -n "$COMFYUI_SRC" ]; then
        [ -f "$COMFYUI_SRC/main.py" ] || die "--comfyui-src $COMFYUI_SRC: no main.py there"
        mkdir -p "$CTX/comfyui"
        # The source only: no models, outputs, user data, caches or installed nodes.
        tar -C "$COMFYUI_SRC" -c --exclude=./models --exclude=./output --exclude=./input \
            --exclude=./temp --exclude=./user --exclude=./custom_nodes --exclude=.git \
            --exclude=__pycache__ --exclude=./extra_model_paths.yaml . | tar -C "$CTX/comfyui" -x
        mkdir -p "$CTX/comfyui/custom_nodes"
        BASE_ARGS+=(--build-arg COMFYUI_REF=build-context)
    fi
}

base_hash() {
    {
        (cd "$CTX" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        printf '%s\n' ${BASE_ARGS[@]+"${BASE_ARGS[@]}"} ${COMMON_ARGS[@]+"${COMMON_ARGS[@]}"} \
            "platform=$PLATFORM"
    } | sha256sum | cut -c1-16
}

have_base() {
    docker image inspect "$BASE_REF" >/dev/null 2>&1 && return 0
    # Built elsewhere and pushed: reuse it.
    [ -n "$REGISTRY" ] && docker pull ${PLAT_ARGS[@]+"${PLAT_ARGS[@]}"} "$BASE_REF" >/dev/null 2>&1
}

build_base() {
    if [ "$FORCE_BASE" = 0 ] && have_base; then
        say "base $BASE_REF is up to date (inputs unchanged)"
    else
        say "building base $BASE_REF"
        docker build ${NET_ARGS[@]+"${NET_ARGS[@]}"} ${PLAT_ARGS[@]+"${PLAT_ARGS[@]}"} \
            -f "$CTX/Dockerfile" ${BASE_ARGS[@]+"${BASE_ARGS[@]}"} \
            ${COMMON_ARGS[@]+"${COMMON_ARGS[@]}"} --build-arg "BASE_INPUTS=$HASH" \
            ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"} -t "$BASE_REF" "$CTX" >&2
    fi
    docker tag "$BASE_REF" "$BASE_NAME:latest"
    if [ "$PUSH" = 1 ]; then
        docker push "$BASE_REF" >&2
        docker push "$BASE_NAME:latest" >&2
    fi
}

if [ "$WORKER_ONLY" = 1 ]; then
    [ "$PRINT_HASH" = 0 ] || die "--print-base-hash and --worker-only exclude each other"
    command -v docker >/dev/null 2>&1 || die "docker not found"
    BASE_REF="$BASE_NAME:latest"
    docker image inspect "$BASE_REF" >/dev/null 2>&1 \
        || die "--worker-only: no $BASE_REF yet (build without --worker-only first)"
else
    assemble_base_context
    HASH=$(base_hash)
    if [ "$PRINT_HASH" = 1 ]; then
        echo "$HASH"
        exit 0
    fi
    command -v docker >/dev/null 2>&1 || die "docker not found"
    BASE_REF="$BASE_NAME:inputs-$HASH"
    build_base
    if [ "$BASE_ONLY" = 1 ]; then
        echo "$BASE_REF"
        exit 0
    fi
fi

# --- the worker -------------------------------------------------------------------
TAGS=("$IMAGE:$VERSION-$SHA" "$IMAGE:$VERSION" "$IMAGE:latest")
TAG_ARGS=()
for t in "${TAGS[@]}"; do TAG_ARGS+=(-t "$t"); done
say "building worker ${TAGS[0]} on $BASE_REF"
docker build ${NET_ARGS[@]+"${NET_ARGS[@]}"} ${PLAT_ARGS[@]+"${PLAT_ARGS[@]}"} -f Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_REF" ${COMMON_ARGS[@]+"${COMMON_ARGS[@]}"} \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$SHA" --build-arg "BASE_REF=$BASE_REF" \
    ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"} "${TAG_ARGS[@]}" . >&2
if [ "$PUSH" = 1 ]; then
    for t in "${TAGS[@]}"; do docker push "$t" >&2; done
fi
echo "${TAGS[0]}"
