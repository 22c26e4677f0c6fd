# comfy-worker image: the base (Dockerfile.base: CUDA, Python, torch, ComfyUI, custom
# nodes) plus the worker package, the lock file, the workflows and the entrypoint.
# No models: they are synced from models.lock.json at start.
#
#   ./build.sh                      builds the base when needed, then this
#   docker build --network=host --build-arg BASE_IMAGE=comfy-worker-base:latest -t comfy-worker .
#
# The worker runs from its own venv (/opt/worker) so its dependencies (runpod, fastapi,
# huggingface_hub ...) never touch ComfyUI's (/opt/comfyui/venv, COMFYUI_PYTHON); the Vast
# PyWorker gets a third venv (scripts/install_vast_pyworker.sh) because the vastai package
# pins versions the worker cannot share. Few instructions: with the vfs storage driver each
# one copies the whole image. Legacy builder and BuildKit both work.

ARG BASE_IMAGE=comfy-worker-base:latest
FROM ${BASE_IMAGE}

# VAST_PYWORKER=0 leaves the Vast.ai PyWorker out.
ARG VAST_PYWORKER=1
ENV PATH=/opt/worker/bin:${PATH} \
    COMFY_WORKER_LOCK=/app/models.lock.json
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["/app/scripts/start.sh"]

# 1. Dependencies: the worker's (from pyproject.toml) and the PyWorker's venv. Rebuilt only
#    when pyproject.toml or the PyWorker installer change. (pyproject.toml makes the COPY
#    valid when the installer is absent.)
COPY pyproject.toml scripts/install_vast_pyworker.sh* /app/deps/
RUN python3 -m venv /opt/worker \
    && python3 -c "import tomllib; deps = tomllib.load(open('/app/deps/pyproject.toml', 'rb'))['project']['dependencies']; open('/app/deps/requirements.txt', 'w').write(chr(10).join(deps) + chr(10))" \
    && /opt/worker/bin/pip install --quiet "setuptools>=77" wheel -r /app/deps/requirements.txt \
    && if [ "$VAST_PYWORKER" = "1" ]; then \
        if [ ! -f /app/deps/install_vast_pyworker.sh ]; then \
            echo "scripts/install_vast_pyworker.sh missing (or build with VAST_PYWORKER=0)" >&2; \
            exit 1; \
        fi; \
        bash /app/deps/install_vast_pyworker.sh; \
    fi \
    && rm -rf /app/deps /root/.cache

# 2. The worker package, models.lock.json, workflows/, scripts/start.sh (see .dockerignore).
COPY . /app/
RUN /opt/worker/bin/pip install --quiet --no-deps --no-build-isolation /app \
    && rm -rf /app/build /app/src/*.egg-info /root/.cache \
    && comfy-worker --help >/dev/null \
    && test -x /app/scripts/start.sh

# Provenance, set by build.sh (last, so a new commit does not invalidate the layers above).
ARG VERSION=dev REVISION=unknown BASE_REF=unknown
LABEL org.opencontainers.image.title="comfy-worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      comfy-worker.base="${BASE_REF}"
