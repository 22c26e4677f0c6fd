# comfy-worker: one image for RunPod serverless, Vast.ai serverless and `docker run`.
#
#   docker build -t comfy-worker .                      the GPU image, nothing else needed
#   docker build --build-arg FLAVOR=cpu -t comfy-worker:cpu .          CPU-only torch
#   ./build.sh                                          the same, with the base cached by
#                                                       its inputs' hash, tags and --push
#
# Two stages. `base` (Debian bookworm + Python 3.11, torch, ComfyUI, custom nodes; ~all of
# the size, changes rarely) and `worker` (the worker package in its own venv, the Vast
# PyWorker in a third, the lock, the workflows, the entrypoint; small). No models: they are
# synced from models.lock.json at start.
#
# CUDA comes once, from the torch wheels (torch 2.9.1 from PyPI brings CUDA 12.8, cuDNN,
# NCCL ... as nvidia-* wheels): the OS image has none. The NVIDIA container toolkit mounts
# the driver (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES below). Every venv installs
# from a hash-pinned lock in requirements/ (`pip install --require-hashes`): a changed file
# on the index fails the build. ./build.sh --lock-deps regenerates the locks.
#
# Build arguments (all optional):
#   BASE_IMAGE         the OS image (default debian:bookworm-slim; any Debian/Ubuntu with
#                      Python >= 3.11 works; the locks are resolved for Python 3.11)
#   FLAVOR             gpu (default: requirements/comfyui-gpu.lock) or cpu (comfyui-cpu.lock)
#   TORCH_INDEX_URL    extra pip index for the torch wheels; "auto": none for gpu (PyPI),
#                      https://download.pytorch.org/whl/cpu for cpu; "" none
#   PIP_FIND_LINKS     extra wheel locations (URLs or paths), e.g. a local CPU torch wheel
#                      served on loopback: http://127.0.0.1:8080/wheels/
#   EXTRA_CA_URL       a PEM bundle to trust (TLS-intercepting proxies): https://, file://,
#                      or http:// on loopback only. (./build.sh --ca-cert FILE copies a file.)
#   COMFYUI_REF        ComfyUI release tag or commit (default: the ref the locks were made for)
#   COMFYUI_URL        a tarball of the ComfyUI tree instead of GitHub's for COMFYUI_REF
#   SKIP_CUSTOM_NODES  1: leave out custom_nodes.txt (offline builds)
#   TEMPLATE_MEDIA     1: keep the editor's template media packages (thumbnails, previews:
#                      ~410 MB); left out by default, the worker serves no editor
#   APT_PACKAGES       installed when missing (a base that has them needs no apt)
#   VAST_PYWORKER      0: leave the Vast.ai PyWorker venv out
# .build-inputs/ (filled by ./build.sh for --wheels, --comfyui-src, --ca-cert) is copied too.
#
# Works with the legacy builder and with BuildKit (no RUN --mount, no heredocs, no syntax
# line that would need a registry). Legacy builds every stage before the target.

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base

ARG APT_PACKAGES="python3 python3-venv ca-certificates git libgl1 libglib2.0-0" \
    PYTHON=python3 \
    FLAVOR=gpu \
    TORCH_INDEX_URL=auto \
    PIP_FIND_LINKS= \
    EXTRA_CA_URL= \
    COMFYUI_REF=v0.33.0 \
    COMFYUI_URL= \
    SKIP_CUSTOM_NODES=0 \
    TEMPLATE_MEDIA=0 \
    BASE_INPUTS=unknown

ENV COMFYUI_DIR=/opt/comfyui/ComfyUI \
    COMFYUI_PYTHON=/opt/comfyui/venv/bin/python \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8

LABEL org.opencontainers.image.title="comfy-worker-base" \
      comfy-worker.base-inputs="${BASE_INPUTS}" \
      comfy-worker.flavor="${FLAVOR}" \
      comfy-worker.comfyui-ref="${COMFYUI_REF}"

COPY scripts/image/install_base.sh scripts/image/patch_torchvision.py scripts/image/patch_torchaudio.py \
     /tmp/build/scripts/image/
COPY scripts/install_custom_nodes.sh custom_nodes.txt /tmp/build/scripts/
COPY requirements/comfyui-${FLAVOR}.lock /tmp/build/requirements/
COPY .build-inputs/ /tmp/build/inputs/
# One layer per part, so a change to ComfyUI's requirements reuses the torch/CUDA layer
# (the largest) in caches and registries. The ARGs reach the script as environment.
RUN bash /tmp/build/scripts/image/install_base.sh system
RUN bash /tmp/build/scripts/image/install_base.sh torch
RUN bash /tmp/build/scripts/image/install_base.sh comfyui
RUN bash /tmp/build/scripts/image/install_base.sh nodes \
    && rm -rf /tmp/build /root/.cache

# ---------------------------------------------------------------------------------------
FROM base AS worker

ARG VAST_PYWORKER=1
ENV PATH=/opt/worker/bin:${PATH} \
    COMFY_WORKER_LOCK=/app/models.lock.json
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["/app/scripts/start.sh"]

# 1. Dependencies, from the locks: rebuilt only when a lock or the PyWorker installer changes.
COPY requirements/worker.lock requirements/vast-pyworker.lock scripts/install_vast_pyworker.sh /app/deps/
RUN python3 -m venv /opt/worker \
    && /opt/worker/bin/pip install --quiet --require-hashes --no-deps -r /app/deps/worker.lock \
    && if [ "$VAST_PYWORKER" = "1" ]; then \
        VASTAI_LOCK=/app/deps/vast-pyworker.lock bash /app/deps/install_vast_pyworker.sh; \
    fi \
    && rm -rf /app/deps /root/.cache

# 2. The worker package, models.lock.json, workflows/, scripts/start.sh.
COPY pyproject.toml README.md models.lock.json /app/
COPY src/ /app/src/
COPY workflows/ /app/workflows/
COPY scripts/start.sh /app/scripts/start.sh
RUN /opt/worker/bin/pip install --quiet --no-deps --no-build-isolation /app \
    && /opt/worker/bin/pip check \
    && rm -rf /app/build /app/src/*.egg-info /root/.cache \
    && comfy-worker --help >/dev/null \
    && test -x /app/scripts/start.sh

# Provenance, set by build.sh (last, so a new commit does not invalidate the layers above).
ARG VERSION=dev REVISION=unknown BASE_REF=unknown
LABEL org.opencontainers.image.title="comfy-worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      comfy-worker.base="${BASE_REF}"
