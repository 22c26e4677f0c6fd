#!/usr/bin/env bash
# Build the Vast.ai PyWorker's own virtualenv.
#
#   scripts/install_vast_pyworker.sh [VENV_DIR]      (default /opt/vast-pyworker)
#
# vastai 1.9.1 pins cryptography==49.0.0 and pillow==12.2.0, runpod (the worker's own
# environment) needs cryptography>=50: they cannot share one environment. This script
# makes VENV_DIR with vastai==1.9.1 only. `comfy-worker vast` runs comfy-worker's PyWorker
# program (src/comfy_worker/entrypoints/vast_pyworker.py: stdlib + vastai, no import of
# comfy_worker) with that venv's python, by path, as
#   VENV_DIR/bin/python -I .../comfy_worker/entrypoints/vast_pyworker.py ...
# so the program always matches the installed worker and nothing is copied here.
# Point COMFY_WORKER_VAST_PYTHON at VENV_DIR/bin/python when VENV_DIR is not the default.
#
# Needs nothing from this checkout (a Dockerfile can run it before copying the source).
# Environment:
#   PYTHON              interpreter that creates the venv (default python3; >= 3.10)
#   VASTAI_VERSION      default 1.9.1
#   VASTAI_LOCK         a hash-pinned requirements file (requirements/vast-pyworker.lock):
#                       installed with --require-hashes --no-deps instead of resolving
#                       vastai==VASTAI_VERSION (the image does this)
#   PIP_*               passed to pip as usual (PIP_FIND_LINKS, PIP_CERT, PIP_INDEX_URL, ...)
#
# Idempotent: a stamp records the installed vastai version; a second run only re-checks.
set -euo pipefail

VENV=${1:-/opt/vast-pyworker}
PYTHON=${PYTHON:-python3}
VASTAI_VERSION=${VASTAI_VERSION:-1.9.1}
STAMP="$VENV/.comfy-worker-vastai"

if [ ! -x "$VENV/bin/python" ]; then
    echo "install_vast_pyworker: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

WANT="vastai==$VASTAI_VERSION"
[ -n "${VASTAI_LOCK:-}" ] && WANT="lock $(sha256sum "$VASTAI_LOCK" | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    rm -f "$STAMP"
    if [ -n "${VASTAI_LOCK:-}" ]; then
        echo "install_vast_pyworker: installing $VASTAI_LOCK into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --require-hashes --no-deps -r "$VASTAI_LOCK"
    else
        echo "install_vast_pyworker: installing vastai==$VASTAI_VERSION into $VENV"
        # setuptools: vastai's backend imports distutils, gone from the stdlib in Python 3.12.
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "vastai==$VASTAI_VERSION" setuptools
    fi
    echo "$WANT" > "$STAMP"
fi

# Imported from its module: `from vastai import Worker` hides an ImportError behind None.
"$VENV/bin/python" -I - <<'PY'
from importlib.metadata import version
from vastai.serverless.server.worker import Worker
print(f"install_vast_pyworker: vastai {version('vastai')}: {Worker.__module__} importable")
PY
echo "install_vast_pyworker: ready: COMFY_WORKER_VAST_PYTHON=$VENV/bin/python"
