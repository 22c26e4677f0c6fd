#!/usr/bin/env bash
# The image's entrypoint: pick how to serve, then run comfy-worker.
#
#   docker run IMAGE [ARGS...]
#
# Mode, from MODE or, when MODE is unset, from the platform's environment:
#   runpod  RunPod serverless (RUNPOD_ENDPOINT_ID or RUNPOD_POD_ID set):
#           `comfy-worker runpod ARGS`; volume /runpod-volume when it exists
#   vast    Vast.ai serverless PyWorker (VAST_CONTAINERLABEL or CONTAINER_ID set):
#           `comfy-worker vast ARGS`; volume /workspace
#   local   anything else: the HTTP API, `comfy-worker serve --host 0.0.0.0 --port 8000
#           ARGS` (COMFY_WORKER_HOST / COMFY_WORKER_PORT change them); volume /workspace
#           when one is mounted there. Warns once when that address is not loopback
#           (0.0.0.0, ::, a public IP) and COMFY_WORKER_API_TOKEN is unset.
# COMFY_WORKER_VOLUME, when set, wins over those volume defaults.
#
# ARGS starting with "-" go to the chosen mode (e.g. `--test_input '{"input": ...}'` for a
# local RunPod test). A first ARG naming a comfy-worker command (run, sync, serve, runpod,
# vast, lock) runs that command instead (`docker run IMAGE run wf.json --out /out`); any
# other first ARG is executed as is (`docker run -it IMAGE bash`).
#
# Prints the mode, why it was chosen, the volume and the listen address: never a token,
# key or other secret (nothing is traced or dumped).
set -euo pipefail

log() { echo "start.sh: $*" >&2; }

# The local HTTP API on a non-loopback address without a token: anyone who reaches the
# port can run jobs (and spend the GPU). Says so once, at start.
warn_if_open() {  # warn_if_open HOST PORT
    local host=$1 port=$2
    [ -n "${COMFY_WORKER_API_TOKEN:-}" ] && return 0
    case $host in
        127.*|localhost|ip6-localhost|::1|"[::1]") return 0 ;;
    esac
    log "warning: the HTTP API listens on $host:$port, not on loopback, and" \
        "COMFY_WORKER_API_TOKEN is unset: anyone who can reach that port can run jobs." \
        "Set COMFY_WORKER_API_TOKEN, or COMFY_WORKER_HOST=127.0.0.1 behind your own proxy."
}

# The worker runs as a child so that SIGTERM/SIGINT (docker stop, platform scale-down)
# reach it even though this script is PID 1; exits with the child's status.
supervise() {
    comfy-worker "$@" &
    local child=$!
    trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
    local rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do
        rc=0
        wait "$child" || rc=$?
    done
    exit "$rc"
}

case ${1:-} in
    run|sync|serve|runpod|vast|lock)
        supervise "$@" ;;
    ""|-*)
        ;;
    *)
        exec "$@" ;;
esac

# Which platform? Only the names of variables are looked at, never printed with values.
mode=${MODE:-}
if [ -n "$mode" ]; then
    why="MODE is set"
elif [ -n "${RUNPOD_ENDPOINT_ID:-}" ] || [ -n "${RUNPOD_POD_ID:-}" ]; then
    mode=runpod why="RUNPOD_ENDPOINT_ID/RUNPOD_POD_ID is set"
elif [ -n "${VAST_CONTAINERLABEL:-}" ] || [ -n "${CONTAINER_ID:-}" ]; then
    mode=vast why="VAST_CONTAINERLABEL/CONTAINER_ID is set"
else
    mode=local why="no RunPod or Vast.ai variables"
fi

volume=${COMFY_WORKER_VOLUME:-}
case $mode in
    runpod)
        if [ -z "$volume" ] && [ -d /runpod-volume ]; then volume=/runpod-volume; fi
        set -- runpod "$@" ;;
    vast)
        if [ -z "$volume" ]; then volume=/workspace; mkdir -p "$volume"; fi
        set -- vast "$@" ;;
    local)
        if [ -z "$volume" ] && [ -d /workspace ]; then volume=/workspace; fi
        host=${COMFY_WORKER_HOST:-0.0.0.0} port=${COMFY_WORKER_PORT:-8000}
        # Arguments come after the defaults, so their --host/--port win (as in argparse).
        prev=""
        for arg in "$@"; do
            case $prev in --host) host=$arg ;; --port) port=$arg ;; esac
            case $arg in --host=*) host=${arg#--host=} ;; --port=*) port=${arg#--port=} ;; esac
            prev=$arg
        done
        warn_if_open "$host" "$port"
        set -- serve --host "${COMFY_WORKER_HOST:-0.0.0.0}" --port "${COMFY_WORKER_PORT:-8000}" "$@" ;;
    *)
        log "MODE='$mode' is not one of runpod, vast, local"
        exit 2 ;;
esac
if [ -n "$volume" ]; then
    export COMFY_WORKER_VOLUME="$volume"
fi
log "mode=$mode ($why), volume=${volume:-none}, lock=${COMFY_WORKER_LOCK:-models.lock.json}"
supervise "$@"
