"""``comfy-worker vast``: the local HTTP API as the model server behind Vast's PyWorker.

One process tree, two Python environments:

- this process (the worker's environment: runpod, ComfyUI client, sync) serves the HTTP
  API on 127.0.0.1:``COMFY_WORKER_PORT`` only, so nothing reaches it from outside except
  through the PyWorker, which checks the autoscaler's signature on every request;
- the PyWorker (vast_pyworker.py beside this file, run by the python of the virtualenv
  that scripts/install_vast_pyworker.sh builds, ``COMFY_WORKER_VAST_PYTHON``) listens on
  Vast's ``WORKER_PORT`` and proxies ``/generate/sync`` here.

The PyWorker learns our state from the model log (``COMFY_WORKER_VAST_MODEL_LOG``), which
only this module writes, one line per start-up event (:func:`model_log_line`): the
:data:`READY_LINE` once ``/health`` answers 200 (then the PyWorker benchmarks and reports
the worker loaded), the :data:`FATAL_LINE` on a fatal start-up failure (the PyWorker
reports the worker errored). Job failures never reach the model log, so they can never
mark the worker errored. The log is truncated at start (the old text goes to ``.old``) so
a ready line from an earlier run cannot count.

If the PyWorker exits, the server stops and this command exits non-zero (the container
restarts); on SIGTERM both stop.

As a platform (entrypoints/platform.py): it starts the worker in the background behind
the HTTP API; it reads readiness into the model log; it serves the PyWorker's
``/generate/sync`` requests through the HTTP API's queue (:func:`main`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings, env_name
from comfy_worker.entrypoints.http_api import bind_socket, run_server
from comfy_worker.entrypoints.job_queue import ApiService
from comfy_worker.job.inputs import read_job_file
from comfy_worker.readiness import Phase, Readiness

log = logging.getLogger(__name__)

# Run by path with -I: the file's own directory (this package) stays off sys.path, so the
# PyWorker sees only the vastai virtualenv, and always matches this version of the worker.
PYWORKER_SCRIPT = Path(__file__).with_name("vast_pyworker.py")
LINE_PREFIX = "comfy-worker: "
READY_LINE = "comfy-worker: model server ready"
FATAL_LINE = "comfy-worker: FATAL start-up failure"
MODEL_HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0

DEFAULT_BENCHMARK: dict[str, Any] = {
    "workflow": {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage",
              "inputs": {"images": ["1", 0], "filename_prefix": "vast-benchmark"}},
    }
}


# --- small pure decisions ------------------------------------------------------------


def model_log_line(state: Readiness) -> str:
    """The model-log line for a start-up state; a detail can never fake a marker."""
    if state.ready:
        return READY_LINE
    if state.phase is Phase.FAILED:
        detail = str(state.error) if state.error is not None else state.reason
        return f"{FATAL_LINE}: {_scrub(detail)}"
    return f"{LINE_PREFIX}{state.phase.value}: {_scrub(state.reason)}"


def _scrub(detail: str) -> str:
    detail = " ".join(detail.split())
    for marker in (READY_LINE, FATAL_LINE):
        detail = detail.replace(marker, "[marker removed]")
    return detail


def pyworker_command(settings: Settings, *, model_port: int, benchmark: Path) -> list[str]:
    return [
        settings.vast_python, "-I", str(PYWORKER_SCRIPT),
        "--model-server-port", str(model_port),
        "--model-log", str(settings.vast_model_log),
        "--ready-line", READY_LINE,
        "--error-line", FATAL_LINE,
        "--info-line", LINE_PREFIX,
        "--benchmark", str(benchmark),
        "--benchmark-runs", str(settings.vast_benchmark_runs),
        "--max-queue-time", str(settings.vast_max_queue_time),
    ]


def benchmark_input(settings: Settings) -> dict[str, Any]:
    """The job input the PyWorker benchmarks: COMFY_WORKER_VAST_BENCHMARK or the default."""
    if settings.vast_benchmark is None:
        return DEFAULT_BENCHMARK
    return read_job_file(settings.vast_benchmark, setting=env_name("vast_benchmark"))


# --- I/O edges -------------------------------------------------------------------------


class ModelLog:
    """The model log: truncated at start (old text appended to ``.old``), one line a write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("rb") as old, path.with_name(path.name + ".old").open("ab") as dst:
                dst.write(old.read())
        path.write_text("", encoding="utf-8")

    def write(self, line: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        log.info("model log: %s", line)


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(settings: Settings) -> int:
    """``comfy-worker vast``: the model server and the PyWorker, until either stops."""
    from comfy_worker.worker import Worker

    return run_vast(Worker(settings), settings)


def run_vast(service_worker: Any, settings: Settings,
             on_server: Callable[[Any], None] | None = None) -> int:
    """Serve the model server and supervise the PyWorker until either stops.

    ``on_server(server)`` gets the uvicorn server once listening (``should_exit`` stops it).
    """
    state_dir = settings.vast_model_log.parent
    if settings.api_token:
        log.info(f"{env_name('api_token')} is not used in vast mode: the API listens on "
                 "%s only and the PyWorker checks the autoscaler's signature on every "
                 "request", MODEL_HOST)
    model_log = ModelLog(settings.vast_model_log)
    benchmark = state_dir / "benchmark.json"
    benchmark.write_text(json.dumps(benchmark_input(settings)), encoding="utf-8")

    def listener(state: Readiness) -> None:
        model_log.write(model_log_line(state))

    service = ApiService(service_worker, listener=listener)
    sock = bind_socket(MODEL_HOST, settings.port)
    port = sock.getsockname()[1]
    command = pyworker_command(settings, model_port=port, benchmark=benchmark)
    children: list[subprocess.Popen[bytes]] = []
    child_exit: list[int] = []

    def start_pyworker(server: Any) -> None:
        if on_server is not None:
            on_server(server)
        model_log.write(model_log_line(Readiness(Phase.STARTING,
                                                 "syncing models and starting ComfyUI")))
        try:
            child = subprocess.Popen(command, cwd=state_dir)
        except OSError as exc:
            log.error("cannot start the PyWorker %s: %s (run "
                      f"scripts/install_vast_pyworker.sh or set {env_name('vast_python')})",
                      settings.vast_python, exc)
            child_exit.append(127)
            server.should_exit = True
            return
        children.append(child)
        log.info("PyWorker started (pid %d): %s", child.pid, " ".join(command[:3]))

        def watch() -> None:
            code = child.wait()
            if not server.should_exit:
                log.error("the PyWorker exited with code %d; stopping", code)
                child_exit.append(code)
                server.should_exit = True

        threading.Thread(target=watch, name="pyworker-watch", daemon=True).start()

    try:
        code = run_server(service, host=MODEL_HOST, port=port,
                          max_request_bytes=settings.max_request_bytes, sock=sock,
                          on_listening=start_pyworker)
    finally:
        for child in children:
            _stop_child(child)
    if child_exit:
        return child_exit[0] or 1
    return code
