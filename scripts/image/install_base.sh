#!/usr/bin/env bash
# The base stage of the Dockerfile, one step per RUN (so each is a layer of its own):
#
#   install_base.sh system    OS packages (only missing ones), extra CA, ComfyUI's venv
#   install_base.sh torch     the lock's torch/CUDA part: torch, torchvision, torchaudio,
#                             triton, nvidia-* (the largest layer, changes rarely)
#   install_base.sh comfyui   ComfyUI's source and the rest of the lock
#   install_base.sh nodes     custom nodes (custom_nodes.txt), then ComfyUI must load
#
# Everything it reads sits in BUILD (/tmp/build: scripts/, requirements/, inputs/); the
# rest comes from the environment (the Dockerfile's ARGs):
#
#   APT_PACKAGES       packages installed when missing (dpkg -s), e.g. python3-venv git
#   PYTHON             interpreter the venv is made from (default python3; >= 3.11)
#   FLAVOR             gpu or cpu: installs requirements/comfyui-FLAVOR.lock
#   TORCH_INDEX_URL    extra index for torch; auto = none (gpu) / PyTorch's CPU index (cpu)
#   PIP_FIND_LINKS     extra find-links (URLs/dirs); BUILD/inputs/wheels is added when present
#   EXTRA_CA_URL       PEM bundle to trust: https://, file:// or loopback http://
#   COMFYUI_REF        release tag or commit; COMFYUI_URL overrides the tarball URL
#   SKIP_CUSTOM_NODES  1: install none of custom_nodes.txt
#   TEMPLATE_MEDIA     1: also the editor's template media (left out by default)
#
#   BUILD/inputs/ca.crt    optional PEM bundle trusted by the system store, pip and Python
#   BUILD/inputs/comfyui/  optional ComfyUI source tree used instead of the download
#   BUILD/inputs/wheels/   optional wheel directory (e.g. a CPU torch) for pip
#   BUILD/inputs/custom_nodes.txt  optional node list used instead of custom_nodes.txt
#
# Every package comes from the lock with `pip install --require-hashes --no-deps`: a file
# whose sha256 is not in the lock fails the build.
set -euo pipefail

STEP=${1:?usage: install_base.sh system|torch|comfyui|nodes}
BUILD=${BUILD:-/tmp/build}
INPUTS="$BUILD/inputs"
HOME_DIR=${COMFYUI_HOME:-/opt/comfyui}
VENV="$HOME_DIR/venv"
SRC="$HOME_DIR/ComfyUI"
PY="$VENV/bin/python"
FLAVOR=${FLAVOR:-gpu}
LOCK="$BUILD/requirements/comfyui-$FLAVOR.lock"
say() { echo "install_base[$STEP]: $*"; }
die() { echo "install_base[$STEP]: $*" >&2; exit 1; }

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
export DEBIAN_FRONTEND=noninteractive

case $FLAVOR in
    gpu|cpu) ;;
    *) die "FLAVOR='$FLAVOR' is not gpu or cpu" ;;
esac
[ -f "$LOCK" ] || die "no lock $LOCK (./build.sh --lock-deps makes it)"

# pip's sources: PyPI, the torch index, local/served wheels. The lock's hashes decide what
# is acceptable, wherever a file comes from.
pip_sources=()
links="${PIP_FIND_LINKS:-}"
[ -d "$INPUTS/wheels" ] && links="$INPUTS/wheels $links"
for fl in $links; do pip_sources+=(--find-links "$fl"); done
unset PIP_FIND_LINKS
index=${TORCH_INDEX_URL-auto}
if [ "$index" = auto ]; then
    index=""
    [ "$FLAVOR" = cpu ] && index=https://download.pytorch.org/whl/cpu
fi
[ -n "$index" ] && pip_sources+=(--extra-index-url "$index")
pip_locked() {  # pip_locked REQUIREMENTS_FILE
    "$PY" -m pip install --quiet --require-hashes --no-deps ${pip_sources[@]+"${pip_sources[@]}"} -r "$1"
}

step_system() {
    # 1. System packages, only those missing (a prepared base needs no apt at all).
    local missing=() pkg
    for pkg in ${APT_PACKAGES:-}; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "apt-get install ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        rm -rf /var/lib/apt/lists/*
    fi
    local python=${PYTHON:-python3}
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is $("$python" -V 2>&1); Python >= 3.11 is needed"
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || say "warning: the locks are resolved for Python 3.11, $python is $("$python" -V)"

    # 2. Extra CA (TLS-intercepting proxies): into the system bundle, which PIP_CERT,
    #    SSL_CERT_FILE and REQUESTS_CA_BUNDLE (set in the Dockerfile) point at.
    local ca=""
    if [ -s "$INPUTS/ca.crt" ]; then
        ca="$INPUTS/ca.crt"
    elif [ -n "${EXTRA_CA_URL:-}" ]; then
        case $EXTRA_CA_URL in
            https://*|file://*|http://127.0.0.1[:/]*|http://localhost[:/]*|http://\[::1\][:/]*) ;;
            *) die "EXTRA_CA_URL must be https://, file:// or http:// on loopback, not $EXTRA_CA_URL" ;;
        esac
        ca=$(mktemp)
        "$python" -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=60).read())' \
            "$EXTRA_CA_URL" > "$ca" || die "cannot fetch EXTRA_CA_URL $EXTRA_CA_URL"
        grep -q -- "-----BEGIN CERTIFICATE-----" "$ca" || die "EXTRA_CA_URL holds no PEM certificate"
    fi
    if [ -n "$ca" ]; then
        say "trusting the extra CA bundle"
        mkdir -p /usr/local/share/ca-certificates
        # update-ca-certificates takes one certificate per file.
        "$python" - "$ca" <<'PYEOF'
import re, sys
pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                  open(sys.argv[1]).read(), re.S)
for i, pem in enumerate(pems):
    with open(f"/usr/local/share/ca-certificates/comfy-worker-extra-{i}.crt", "w") as f:
        f.write(pem + "\n")
PYEOF
        update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
    fi
    [ -s /etc/ssl/certs/ca-certificates.crt ] \
        || die "/etc/ssl/certs/ca-certificates.crt missing: add ca-certificates to APT_PACKAGES"

    # 3. ComfyUI's Python.
    "$python" -m venv "$VENV"
    say "venv $VENV: $("$PY" -V), flavor $FLAVOR, lock $(basename "$LOCK")"
}

step_torch() {
    # The lock's torch/CUDA entries only (each with its hashes): the biggest layer.
    local part
    part=$(mktemp --suffix=.lock)
    awk '/^[A-Za-z0-9]/ { keep = ($0 ~ /^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+)==/) }
         /^[[:space:]]*#/ { next }
         keep { print }' "$LOCK" > "$part"
    say "installing $(grep -c '==' "$part") torch/CUDA packages from $(basename "$LOCK")"
    pip_locked "$part"
    rm -f "$part"
    # CUDA once: triton vendors CUPTI (libcupti three times over, libnvperf_host, ... byte
    # for byte nvidia-cuda-cupti's, plus link-time-only static archives). Same layer, so the
    # bytes never reach the image: identical libraries become links to the nvidia-* copy.
    "$PY" - <<'PYEOF'
import hashlib, os, sysconfig
from collections import defaultdict
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
libs = [p for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink()]
by_size = defaultdict(list)
for p in libs:
    by_size[p.stat().st_size].append(p)
saved = 0
for group in (g for g in by_size.values() if len(g) > 1):
    by_hash = defaultdict(list)
    for p in group:
        by_hash[digest(p)].append(p)
    for same in (s for s in by_hash.values() if len(s) > 1):
        # Keep the nvidia-* wheel's copy (what torch loads), else the first one.
        keep = sorted(same, key=lambda p: ("/nvidia/" not in str(p), str(p)))[0]
        for dup in same:
            if dup != keep:
                saved += dup.stat().st_size
                dup.unlink()
                dup.symlink_to(os.path.relpath(keep, dup.parent))
for archive in site.glob("triton/backends/nvidia/lib/cupti/*_static.a"):
    saved += archive.stat().st_size
    archive.unlink()
print(f"install_base[torch]: duplicate CUDA libraries linked, {saved / 1e6:.0f} MB saved")
PYEOF
}

step_comfyui() {
    # 1. ComfyUI: a tree from the build context, or a release tarball.
    if [ -f "$INPUTS/comfyui/main.py" ]; then
        say "ComfyUI from the build context ($(sed -n 's/^__version__ = "\(.*\)"/\1/p' \
            "$INPUTS/comfyui/comfyui_version.py" 2>/dev/null))"
        cp -a "$INPUTS/comfyui" "$SRC"
        echo "build-context" > "$SRC/.comfyui-ref"
    else
        local url=${COMFYUI_URL:-https://github.com/comfyanonymous/ComfyUI/archive/${COMFYUI_REF}.tar.gz}
        say "ComfyUI $COMFYUI_REF from $url"
        mkdir -p "$SRC"
        "$PY" - "$url" "$SRC" <<'PYEOF' || die "cannot download or unpack $url"
import sys, tarfile, urllib.request
url, dest = sys.argv[1], sys.argv[2]
safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
with urllib.request.urlopen(url, timeout=300) as resp, tarfile.open(fileobj=resp, mode="r|*") as tar:
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
    rm -rf "$SRC/custom_nodes"
    mkdir -p "$SRC/custom_nodes" "$SRC/models" "$SRC/input" "$SRC/output"

    # 2. The rest of the lock (torch & co. are installed: pip leaves them as they are).
    #    The editor's template media (thumbnails and preview videos of its template browser,
    #    ~410 MB that barely compress) are left out unless TEMPLATE_MEDIA=1: the worker
    #    serves no editor, and they are what keeps the GPU image over 5.2 GB gzipped.
    local lock=$LOCK media='^comfyui-workflow-templates-media-[a-z0-9-]+=='
    if [ "${TEMPLATE_MEDIA:-0}" != 1 ]; then
        lock=$(mktemp --suffix=.lock)
        awk -v media="$media" '/^[A-Za-z0-9]/ { keep = ($0 !~ media) }
             /^[[:space:]]*#/ { next }
             keep { print }' "$LOCK" > "$lock"
        say "leaving out $(grep -c -E "$media" "$LOCK") template media packages (TEMPLATE_MEDIA=1 keeps them)"
    fi
    say "installing $(grep -c '^[A-Za-z0-9].*==' "$lock") locked packages from $(basename "$LOCK")"
    pip_locked "$lock"
    # pip check, where the only thing allowed missing is the media left out above.
    local problems
    problems=$("$PY" -m pip check 2>&1 | grep -v -E \
        "requires comfyui-workflow-templates-media-[a-z0-9-]+, which is not installed" \
        | grep -v -x "No broken requirements found." || true)
    [ -z "$problems" ] || die "the venv's requirements are inconsistent (regenerate the lock): $problems"
    # PyPI's CUDA-linked torchvision next to a CPU torch needs its nms fake kernels guarded.
    "$PY" "$BUILD/scripts/image/patch_torchvision.py" || die "torchvision does not import"
    # The same for PyPI's torchaudio (its extension linked against CUDA torch): ComfyUI
    # v0.33.0 imports torchaudio at start.
    if grep -q '^torchaudio==' "$LOCK"; then
        "$PY" "$BUILD/scripts/image/patch_torchaudio.py" || die "torchaudio does not import"
    fi
    cp "$LOCK" "$HOME_DIR/requirements.lock"
}

step_nodes() {
    # 1. Custom nodes, pinned by commit; their requirements constrained by the lock's pins.
    if [ "${SKIP_CUSTOM_NODES:-0}" = "1" ]; then
        say "SKIP_CUSTOM_NODES=1: no custom nodes"
    else
        local list="$BUILD/scripts/custom_nodes.txt"
        [ -f "$INPUTS/custom_nodes.txt" ] && list="$INPUTS/custom_nodes.txt"
        PIP_FIND_LINKS="$links" "$BUILD/scripts/install_custom_nodes.sh" \
            "$list" "$SRC/custom_nodes" "$PY"
    fi

    # 2. Prove it starts: load every node (custom ones too) and exit.
    say "checking that ComfyUI loads its nodes"
    local log
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
'torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"
}

"step_$STEP"
