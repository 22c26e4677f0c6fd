#!/usr/bin/env bash
# Build the Vast.ai PyWorker's own virtualenv.
#
#   scripts/install_vast_pyworker.sh [VENV_DIR]      (default /opt/vast-pyworker)
#
# vastai 1.9.1 pins cryptography==49.0.0 and pillow==12.2.0, runpod (the worker's own
# environment) needs cryptography>=50: they cannot share one environment. This script
# makes VENV_DIR with vastai==1.9.1 and copies comfy-worker's PyWorker program
# (src/comfy_worker/entrypoints/vast_pyworker.py, stdlib + vastai only) into it as the
# module `comfy_worker_vast_pyworker`. `comfy-worker vast` runs it with
# COMFY_WORKER_VAST_PYTHON (default /opt/vast-pyworker/bin/python).
#
# Environment:
#   PYTHON              interpreter that creates the venv (default python3; >= 3.10)
#   VASTAI_VERSION      default 1.9.1
#   PYWORKER_SOURCE     the vast_pyworker.py to install (default: this checkout's, else the
#                       installed comfy_worker package's)
#   PIP_*               passed to pip as usual (PIP_FIND_LINKS, PIP_CERT, PIP_INDEX_URL, ...)
#
# Idempotent: a stamp records the installed vastai version; a second run only re-copies
# the PyWorker module (so an upgraded image always runs the matching program).
set -euo pipefail

VENV=${1:-/opt/vast-pyworker}
PYTHON=${PYTHON:-python3}
VASTAI_VERSION=${VASTAI_VERSION:-1.9.1}
HERE="$(cd "$(dirname "$0")" && pwd)"
STAMP="$VENV/.comfy-worker-vastai"

SOURCE=${PYWORKER_SOURCE:-$HERE/../src/comfy_worker/entrypoints/vast_pyworker.py}
if [ ! -f "$SOURCE" ]; then
    SOURCE=$("$PYTHON" -c 'import comfy_worker.entrypoints.vast_pyworker as m; print(m.__file__)' \
        2>/dev/null || true)
fi
if [ -z "$SOURCE" ] || [ ! -f "$SOURCE" ]; then
    echo "install_vast_pyworker: vast_pyworker.py not found; set PYWORKER_SOURCE" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "install_vast_pyworker: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "vastai==$VASTAI_VERSION" ]; then
    echo "install_vast_pyworker: installing vastai==$VASTAI_VERSION into $VENV"
    rm -f "$STAMP"
    # setuptools: vastai's backend imports distutils, gone from the stdlib in Python 3.12.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "vastai==$VASTAI_VERSION" setuptools
    echo "vastai==$VASTAI_VERSION" > "$STAMP"
fi

PURELIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
install -m 0644 "$SOURCE" "$PURELIB/comfy_worker_vast_pyworker.py"
"$VENV/bin/python" -m comfy_worker_vast_pyworker --check
echo "install_vast_pyworker: ready: $VENV/bin/python -m comfy_worker_vast_pyworker"
