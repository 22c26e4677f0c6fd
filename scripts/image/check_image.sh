#!/usr/bin/env bash
# Check a built image without a GPU (scripts/image/check_image.py says what), print the
# facts as JSON on stdout and a verdict on stderr; exit 1 when a check fails.
#
#   scripts/image/check_image.sh IMAGE [gpu|cpu]     (default: the image's flavor label)
#
# GPU flavour: torch built for CUDA, cuDNN loads, libcudart/libcublas/libcudnn/libnccl ...
# each exist exactly once. CPU flavour: no CUDA anywhere. Both: ComfyUI starts with --cpu
# and `comfy-worker --help` runs. The container runs with --network none.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:?usage: check_image.sh IMAGE [gpu|cpu]}
flavor=${2:-$(docker image inspect -f '{{index .Config.Labels "comfy-worker.flavor"}}' "$image")}
case $flavor in gpu|cpu) ;; *) echo "check_image: flavor '$flavor' is not gpu or cpu" >&2; exit 2 ;; esac
json=$(docker run --rm -i --network none --entrypoint /opt/comfyui/venv/bin/python "$image" - \
    < "$here/check_image.py")
printf '%s\n' "$json"
printf '%s\n' "$json" | python3 "$here/check_image.py" --judge "$flavor"
