#!/usr/bin/env bash
# Runs inside `docker build` of Dockerfile.base (one RUN step, so the base stays a few
# layers even on the vfs storage driver). Everything it reads sits in BUILD (the copied
# build context); everything else comes from the environment (the Dockerfile's ARGs):
#
#   APT_PACKAGES       packages installed when missing (dpkg -s), e.g. python3-venv git
#   PYTHON             interpreter the venv is made from (default python3)
#   COMFYUI_HOME       /opt/comfyui: venv/ (ComfyUI's Python) and ComfyUI/ (its source)
#   TORCH_INDEX_URL    pip index for torch (empty: PyPI); TORCH_PACKAGES what to install
#   PIP_FIND_LINKS     extra find-links (URL/dir); BUILD/wheels is added when present
#   COMFYUI_REF        release tag or commit; COMFYUI_URL overrides the tarball URL
#   SKIP_CUSTOM_NODES  1: install none of BUILD/custom_nodes.txt
#
#   BUILD/extra-ca.crt   optional PEM bundle trusted by the system store, pip and Python
#   BUILD/comfyui/       optional ComfyUI source tree used instead of the download
#   BUILD/wheels/        optional wheel directory (e.g. a CPU torch) for pip
set -euo pipefail

BUILD=${BUILD:-/tmp/build}
HOME_DIR=${COMFYUI_HOME:-/opt/comfyui}
VENV="$HOME_DIR/venv"
SRC="$HOME_DIR/ComfyUI"
PY="$VENV/bin/python"
say() { echo "install_base: $*"; }
die() { echo "install_base: $*" >&2; exit 1; }

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
export DEBIAN_FRONTEND=noninteractive

# 1. System packages, only those missing (a prepared base needs no apt at all).
missing=()
for pkg in ${APT_PACKAGES:-}; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -rf /var/lib/apt/lists/*
fi

# 2. Extra CA (TLS-intercepting proxies): into the system bundle, which PIP_CERT,
#    SSL_CERT_FILE and REQUESTS_CA_BUNDLE (set in the Dockerfile) point at.
if [ -s "$BUILD/extra-ca.crt" ]; then
    say "trusting $BUILD/extra-ca.crt"
    mkdir -p /usr/local/share/ca-certificates
    cp "$BUILD/extra-ca.crt" /usr/local/share/ca-certificates/comfy-worker-extra-ca.crt
    update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
fi
[ -s /etc/ssl/certs/ca-certificates.crt ] \
    || die "/etc/ssl/certs/ca-certificates.crt missing: add ca-certificates to APT_PACKAGES"

# 3. ComfyUI's Python.
links="${PIP_FIND_LINKS:-}"
[ -d "$BUILD/wheels" ] && links="$BUILD/wheels $links"
find_links=()
for fl in $links; do find_links+=(--find-links "$fl"); done
unset PIP_FIND_LINKS
"${PYTHON:-python3}" -m venv "$VENV"
pip_install() { "$PY" -m pip install --quiet "${find_links[@]}" "$@"; }

# 4. torch: from TORCH_INDEX_URL (CUDA/CPU builds) or PyPI + local wheels.
# shellcheck disable=SC2086
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    say "installing $TORCH_PACKAGES from $TORCH_INDEX_URL"
    pip_install --index-url "$TORCH_INDEX_URL" $TORCH_PACKAGES
else
    say "installing $TORCH_PACKAGES from PyPI${find_links:+ and local wheels}"
    pip_install $TORCH_PACKAGES
fi
# PyPI's CUDA-linked torchvision next to a CPU torch needs its nms fake kernels guarded.
if "$PY" -m pip show --quiet torchvision >/dev/null 2>&1; then
    "$PY" "$BUILD/scripts/image/patch_torchvision.py" || die "torchvision does not import"
fi

# 5. ComfyUI: a tree from the build context, or the release tarball.
if [ -f "$BUILD/comfyui/main.py" ]; then
    say "ComfyUI from the build context ($(cat "$BUILD/comfyui/comfyui_version.py" 2>/dev/null \
        | sed -n 's/^__version__ = "\(.*\)"/\1/p'))"
    mv "$BUILD/comfyui" "$SRC"
    echo "build-context" > "$SRC/.comfyui-ref"
else
    url=${COMFYUI_URL:-https://github.com/comfyanonymous/ComfyUI/archive/${COMFYUI_REF}.tar.gz}
    say "ComfyUI $COMFYUI_REF from $url"
    mkdir -p "$SRC"
    "$PY" - "$url" "$SRC" <<'PYEOF' || die "cannot download or unpack $url"
import sys, tarfile, urllib.request
url, dest = sys.argv[1], sys.argv[2]
safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
with urllib.request.urlopen(url, timeout=300) as resp, tarfile.open(fileobj=resp, mode="r|gz") as tar:
    for member in tar:
        parts = member.name.split("/", 1)
        if len(parts) < 2 or not parts[1]:
            continue
        member.name = parts[1]
        if member.name.startswith("/") or ".." in member.name.split("/"):
            raise SystemExit(f"unsafe path in tarball: {member.name}")
        tar.extract(member, dest, **safe)
PYEOF
    echo "$COMFYUI_REF" > "$SRC/.comfyui-ref"
fi
[ -f "$SRC/main.py" ] || die "no main.py in $SRC"
# The worker writes its own extra_model_paths config; a stale one here breaks start-up.
rm -f "$SRC/extra_model_paths.yaml"
mkdir -p "$SRC/custom_nodes" "$SRC/models" "$SRC/input" "$SRC/output"

# 6. ComfyUI's requirements, torch & co. held where step 4 put them.
constraints="$HOME_DIR/constraints.txt"
"$PY" -m pip freeze | grep -i -E '^(torch|torchvision|torchaudio)==' > "$constraints" || true
grep -v -i -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$SRC/requirements.txt" \
    > "$HOME_DIR/requirements.txt"
say "installing ComfyUI's requirements"
# requests: imported by ComfyUI, not listed in its requirements.txt.
pip_install -r "$HOME_DIR/requirements.txt" -c "$constraints" requests

# 7. Custom nodes, pinned by commit.
if [ "${SKIP_CUSTOM_NODES:-0}" = "1" ]; then
    say "SKIP_CUSTOM_NODES=1: no custom nodes"
else
    PIP_FIND_LINKS="$links" \
        "$BUILD/scripts/install_custom_nodes.sh" "$BUILD/custom_nodes.txt" "$SRC/custom_nodes" "$PY"
fi

# 8. Prove it starts: load every node (custom ones too) and exit.
say "checking that ComfyUI loads its nodes"
log=$(mktemp)
if ! (cd "$SRC" && "$PY" main.py --cpu --quick-test-for-ci --disable-auto-launch \
        --database-url sqlite:///:memory: >"$log" 2>&1); then
    tail -40 "$log" >&2
    die "ComfyUI did not start"
fi
# (Built-in extras may fail without optional deps, e.g. audio nodes without torchaudio.)
if grep -q "IMPORT FAILED): .*custom_nodes" "$log"; then
    grep -B5 "IMPORT FAILED): .*custom_nodes" "$log" >&2
    die "a custom node failed to import (see above)"
fi
rm -f "$log"
rm -rf "$SRC/user" "$SRC/output"/* "$SRC/temp"
"$PY" -c "import sys, torch, torchvision; print('install_base: python', sys.version.split()[0], \
'torch', torch.__version__, 'torchvision', torchvision.__version__)"
