#!/usr/bin/env bash
# Build the worker image and run the shipped default (models.lock.json +
# workflows/default.json) once, end to end; the image it makes lands in ./out.
#
#   scripts/quickstart.sh [BUILD_SH_OPTIONS...]      e.g. --cpu for a CPU-only torch
#
# GPU when Docker can give the container one (nvidia-smi on the host and `--gpus all`
# working), CPU otherwise. Models are synced into the Docker volume comfy-worker-models
# (kept, so a second run downloads nothing). Needs Linux, Docker and internet access
# (PyPI, GitHub, Hugging Face). Environment:
#   DOCKER_RUN_ARGS   extra `docker run` arguments (e.g. "--network host", "-e HF_TOKEN")
#   QUICKSTART_GPU    1 / 0 to force or forbid the GPU
#   WORKFLOW          workflow inside the image (default /app/workflows/default.json)
set -euo pipefail
cd "$(dirname "$0")/.."

image=$(./build.sh "$@" | tail -n 1)
echo "quickstart: built $image" >&2

gpu=()
want=${QUICKSTART_GPU:-auto}
if [ "$want" = 1 ]; then
    gpu=(--gpus all)
elif [ "$want" = auto ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    if docker run --rm --gpus all --entrypoint true "$image" >/dev/null 2>&1; then
        gpu=(--gpus all)
    else
        echo "quickstart: a GPU is here but Docker cannot pass it (install the NVIDIA" \
             "Container Toolkit); running on CPU" >&2
    fi
fi
echo "quickstart: running on ${gpu[*]:+GPU}${gpu[*]:-CPU}" >&2

mkdir -p out
# shellcheck disable=SC2086
docker run --rm ${gpu[@]+"${gpu[@]}"} ${DOCKER_RUN_ARGS:-} \
    -v comfy-worker-models:/workspace -e COMFY_WORKER_VOLUME=/workspace \
    -v "$PWD/out:/out" \
    "$image" run "${WORKFLOW:-/app/workflows/default.json}" --out /out
echo "quickstart: outputs in $PWD/out:" >&2
ls -l out >&2
