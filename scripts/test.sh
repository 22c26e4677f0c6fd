#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run runs exactly this).
# Installs everything it needs into ./.venv and ./.comfyui (two ComfyUIs), starts a Docker
# daemon when it runs as root and none answers, then runs ruff and pytest.
# pytest's exit status 5 ("no tests collected") counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

# Disk: a clean run (both ComfyUIs, Docker's test images, apt packages) peaked at ~7.8 GB
# here. Say so up front when less is free, so an ENOSPC later has its cause in the log (a
# warm run needs less).
free_kb=$(df -Pk . 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
    echo "test.sh: warning: $((free_kb / 1024 / 1024)) GB free here; a clean run needs about 8 GB (README, Run the tests)" >&2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

# FUSE for the slow-volume tests (tests/support/slowfs.py): libfuse2, and fusermount from
# Debian's fuse unless fuse3's fusermount3 is there (the two packages conflict).
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    fuse_pkgs=""
    # (grep reads all of ldconfig's output: under pipefail, -q could SIGPIPE it)
    ldconfig -p 2>/dev/null | grep 'libfuse\.so\.2' >/dev/null || fuse_pkgs="libfuse2"
    if ! command -v fusermount >/dev/null 2>&1 && ! command -v fusermount3 >/dev/null 2>&1; then
        fuse_pkgs="$fuse_pkgs fuse"
    fi
    if [ -n "$fuse_pkgs" ]; then
        # shellcheck disable=SC2086  # word splitting of the package list is wanted
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends $fuse_pkgs; } >/dev/null 2>&1 \
            || echo "test.sh: could not install $fuse_pkgs; FUSE tests skip (fail under CI=true)" >&2
    fi
fi

# Chromium for the tests that drive ComfyUI's editor (tests/test_workflow_oracle.py):
# Debian's package, installed when missing and this runs as root with apt-get (CI).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 \
             && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
        || echo "test.sh: could not install chromium; the browser tests will not run" >&2
fi

# A Docker daemon for the container tests (tests/container: the CPU image built from the
# ComfyUI tree below, then run): as root, when none answers, install docker.io and
# debootstrap (scripts/make_base_image.sh makes the image's OS base with it) when missing
# and start dockerd as those tests need it; it is stopped again when this script ends.
# Without a daemon the container tests skip, and fail under CI=true.
DOCKERD_PID=""
stop_dockerd() {
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
}
if [ "$(id -u)" = 0 ] && ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
    docker_pkgs=""
    command -v dockerd >/dev/null 2>&1 || docker_pkgs="docker.io"
    command -v debootstrap >/dev/null 2>&1 || docker_pkgs="$docker_pkgs debootstrap"
    if [ -n "$docker_pkgs" ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing$docker_pkgs ${docker_pkgs:+(apt)}" >&2
        # shellcheck disable=SC2086  # word splitting of the package list is wanted
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends $docker_pkgs; } >/dev/null 2>&1 \
            || echo "test.sh: could not install$docker_pkgs; container tests skip (fail under CI=true)" >&2
    fi
    if command -v dockerd >/dev/null 2>&1; then
        log="${TMPDIR:-/tmp}/comfy-worker-dockerd.log"
        echo "test.sh: starting dockerd (overlay2, no iptables, no bridge; log $log)" >&2
        dockerd --storage-driver=overlay2 --iptables=false --bridge=none >"$log" 2>&1 &
        DOCKERD_PID=$!
        trap stop_dockerd EXIT
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 1
        done
        docker info >/dev/null 2>&1 \
            || { echo "test.sh: dockerd did not start:" >&2; tail -5 "$log" >&2; }
    fi
fi

# Real ComfyUIs for the end-to-end tests: v0.33.0 (COMFYUI_DIR, what the image carries) and
# v0.3.75 (COMFYUI_COMPAT_DIR, the oldest supported: the `compat` e2e tests run on both).
# Each one given in the environment is used as it is; scripts/setup_comfyui.sh makes the
# others in ./.comfyui (COMFYUI_SRC: another v0.33.0 source, a tree or a tarball).
if [ -x scripts/setup_comfyui.sh ] && { [ -z "${COMFYUI_DIR:-}" ] || [ -z "${COMFYUI_COMPAT_DIR:-}" ]; }; then
    setup_args=()
    [ -n "${COMFYUI_DIR:-}" ] && setup_args=(--compat-only)
    [ -n "${COMFYUI_COMPAT_DIR:-}" ] && setup_args=(--current-only)
    scripts/setup_comfyui.sh ${setup_args[@]+"${setup_args[@]}"}
fi
if [ -z "${COMFYUI_DIR:-}" ]; then
    export COMFYUI_DIR="$PWD/.comfyui/ComfyUI"
    export COMFYUI_PYTHON="$PWD/.comfyui/venv/bin/python"
fi
if [ -z "${COMFYUI_COMPAT_DIR:-}" ]; then
    export COMFYUI_COMPAT_DIR="$PWD/.comfyui/compat/ComfyUI"
    export COMFYUI_COMPAT_PYTHON="$PWD/.comfyui/compat/venv/bin/python"
fi

.venv/bin/ruff check src tests benchmarks scripts
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
