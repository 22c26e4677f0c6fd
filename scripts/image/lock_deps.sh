#!/usr/bin/env bash
# Regenerate the hash-pinned requirement locks in requirements/ (./build.sh --lock-deps
# runs this). Every venv in the image installs from one of them with
# `pip install --require-hashes --no-deps`, so a changed or substituted file fails the build.
#
#   scripts/image/lock_deps.sh [--comfyui-src DIR | --comfyui-ref REF] [--wheels DIR]
#                              [--cpu-index URL] [--only NAME]...
#
# Inputs (committed, edited by hand except comfyui.in):
#   requirements/comfyui.in     ComfyUI's requirements.txt at the pinned ref, its torch
#                               lines removed, plus `requests` when it is not listed
#                               (older ComfyUIs import it without listing it). Rewritten here from --comfyui-src DIR (a source
#                               tree) or downloaded for --comfyui-ref REF (default: the
#                               Dockerfile's COMFYUI_REF).
#   requirements/torch-gpu.in   torch, torchvision, torchaudio pins of the GPU flavour (PyPI:
#                               the CUDA 12.8 builds and their nvidia-* wheels)
#   requirements/torch-cpu.in   the CPU flavour's pins (+cpu builds)
#   requirements/worker-build.in  what building the worker package needs (setuptools)
#   requirements/vast-pyworker.in the Vast PyWorker venv (vastai)
#   pyproject.toml              the worker's dependencies
# Outputs:
#   requirements/comfyui-gpu.lock   comfyui.in + torch-gpu.in        (/opt/comfyui/venv, GPU)
#   requirements/comfyui-cpu.lock   comfyui.in + torch-cpu.in        (/opt/comfyui/venv, CPU)
#   requirements/worker.lock        pyproject.toml + worker-build.in (/opt/worker)
#   requirements/vast-pyworker.lock vast-pyworker.in                 (/opt/vast-pyworker)
#
# Resolved for the image's Python (3.11, Debian bookworm: x86_64, glibc 2.36) with
# `uv pip compile --generate-hashes` (uv from PATH, else installed into .docker-context/uv).
# The CPU torch comes from --cpu-index (default https://download.pytorch.org/whl/cpu), or,
# with --wheels DIR, from that wheel directory instead (offline machines). --only NAME
# (comfyui-gpu, comfyui-cpu, worker, vast-pyworker; repeatable) regenerates just those.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "lock_deps: $*" >&2; exit 2; }
say() { echo "lock_deps: $*" >&2; }

COMFYUI_SRC=""
COMFYUI_REF=""
WHEELS=""
CPU_INDEX=https://download.pytorch.org/whl/cpu
ONLY=()
while [ "$#" -gt 0 ]; do
    case $1 in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        --comfyui-src) COMFYUI_SRC=${2:?}; shift ;;
        --comfyui-ref) COMFYUI_REF=${2:?}; shift ;;
        --wheels) WHEELS=${2:?}; shift ;;
        --cpu-index) CPU_INDEX=${2:?}; shift ;;
        --only) ONLY+=("${2:?}"); shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
wanted() { [ "${#ONLY[@]}" -eq 0 ] || printf '%s\n' "${ONLY[@]}" | grep -qx "$1"; }

REQ=requirements
PYVER=3.11
PLATFORM=x86_64-manylinux_2_36

# 1. comfyui.in from ComfyUI's own requirements.txt at the pinned ref.
[ -n "$COMFYUI_REF" ] || COMFYUI_REF=$(sed -n 's/^ *COMFYUI_REF=\([^ \\]*\).*/\1/p' Dockerfile | head -1)
[ -n "$COMFYUI_REF" ] || die "no COMFYUI_REF in Dockerfile; pass --comfyui-ref"
if wanted comfyui-gpu || wanted comfyui-cpu; then
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    if [ -n "$COMFYUI_SRC" ]; then
        [ -f "$COMFYUI_SRC/requirements.txt" ] || die "--comfyui-src $COMFYUI_SRC: no requirements.txt"
        version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_SRC/comfyui_version.py" 2>/dev/null)
        [ "v$version" = "$COMFYUI_REF" ] || [ "$version" = "$COMFYUI_REF" ] \
            || die "--comfyui-src is ComfyUI '$version', the pinned ref is $COMFYUI_REF"
        cp "$COMFYUI_SRC/requirements.txt" "$tmp"
    else
        url=https://raw.githubusercontent.com/comfyanonymous/ComfyUI/$COMFYUI_REF/requirements.txt
        say "downloading $url"
        python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=60).read())' \
            "$url" > "$tmp" || die "cannot download $url (use --comfyui-src DIR)"
    fi
    {
        echo "# ComfyUI $COMFYUI_REF requirements.txt, written by scripts/image/lock_deps.sh."
        echo "# torch/torchvision/torchaudio removed (requirements/torch-*.in pin them per flavour);"
        echo "# requests added when missing (v0.3.75 and older import it without listing it)."
        grep -v -i -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$tmp"
        grep -q -i -E '^\s*requests\s*([<>=!~;#].*)?$' "$tmp" || echo "requests"
    } > "$REQ/comfyui.in"
fi

# uv: from PATH, else a private venv (pip honours the host's index/CA configuration).
UV=$(command -v uv || true)
if [ -z "$UV" ]; then
    UV=.docker-context/uv/bin/uv
    if [ ! -x "$UV" ]; then
        say "installing uv into .docker-context/uv"
        python3 -m venv .docker-context/uv
        .docker-context/uv/bin/pip install --quiet uv
    fi
fi

compile() {  # compile OUT INPUTS... [-- UV_ARGS...]
    local out=$1; shift
    local inputs=() extra=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do inputs+=("$1"); shift; done
    [ "$#" -gt 0 ] && shift && extra=("$@")
    say "compiling $out from ${inputs[*]}"
    "$UV" pip compile --quiet --generate-hashes --python-version "$PYVER" \
        --python-platform "$PLATFORM" --custom-compile-command "./build.sh --lock-deps" \
        --no-emit-index-url --no-emit-find-links --output-file "$out" \
        ${extra[@]+"${extra[@]}"} "${inputs[@]}"
}

if wanted comfyui-gpu; then
    compile "$REQ/comfyui-gpu.lock" "$REQ/comfyui.in" "$REQ/torch-gpu.in"
fi
if wanted comfyui-cpu; then
    if [ -n "$WHEELS" ]; then
        [ -d "$WHEELS" ] || die "--wheels $WHEELS: not a directory"
        cpu_src=(--find-links "$WHEELS")
    else
        cpu_src=(--extra-index-url "$CPU_INDEX" --index-strategy unsafe-best-match)
    fi
    compile "$REQ/comfyui-cpu.lock" "$REQ/comfyui.in" "$REQ/torch-cpu.in" -- "${cpu_src[@]}"
fi
if wanted worker; then
    compile "$REQ/worker.lock" pyproject.toml "$REQ/worker-build.in"
fi
if wanted vast-pyworker; then
    compile "$REQ/vast-pyworker.lock" "$REQ/vast-pyworker.in"
fi
say "done: $(cd "$REQ" && ls ./*.lock | tr '\n' ' ')"
