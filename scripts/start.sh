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
#           when one is mounted there
# COMFY_WORKER_VOLUME, when set, wins over those volume defaults.
#
# ARGS starting with "-" go to the chosen mode (e.g. `--test_input '{"input": ...}'` for a
# local RunPod test). A first ARG naming a comfy-worker command (run, sync, serve, runpod,
# vast, lock) runs that command instead (`docker run IMAGE run wf.json --out /out`); any
# other first ARG is executed as is (`docker run -it IMAGE bash`).
#
# Prints the mode, why it was chosen and the volume: never an environment value (tokens
# and keys stay out of the logs).
set -euo pipefail

log() { echo "start.sh: $*" >&2; }

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
