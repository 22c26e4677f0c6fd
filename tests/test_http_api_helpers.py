"""Shared by the HTTP API tests: a scripted Worker test double and an in-process server.

``ScriptedWorker`` is a real object implementing the documented ``Worker`` interface
(start / readiness / run_job / stop) without ComfyUI: start-up waits on an event (or
fails), jobs sleep, echo their input and record the order and overlap of execution. It
exercises the API's queueing, limits and health logic; the real Worker + ComfyUI path is
covered by tests/e2e.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from support.waiting import wait_for

from comfy_worker import errors
from comfy_worker.config import Secret
from comfy_worker.entrypoints.api_v2 import V2Api
from comfy_worker.entrypoints.api_v2.assets import AssetStore
from comfy_worker.entrypoints.http_api import bind_socket, run_server
from comfy_worker.entrypoints.job_queue import ApiService
from comfy_worker.readiness import Phase, Readiness


@dataclass(frozen=True)
class Echo:
    """The scripted worker's job result: what it was asked, serialised as JSON."""

    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.body)


@dataclass(frozen=True)
class StepProgress:
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.body)


class ScriptedWorker:
    def __init__(self, *, start_error: Exception | None = None, started: bool = True) -> None:
        self.start_gate = threading.Event()
        if started:
            self.start_gate.set()
        self.job_gate = threading.Event()
        self.job_gate.set()
        self.start_error = start_error
        self.phase = "not started"
        self.calls: list[Any] = []
        self.cancelled: list[Any] = []
        self.running = 0
        self.max_running = 0
        self.stopped = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self.phase = "syncing models"
        if not self.start_gate.wait(30):
            raise TimeoutError("start gate never opened")
        self.phase = "starting ComfyUI"
        if self.start_error is not None:
            self.phase = f"start-up failed: {self.start_error}"
            raise self.start_error
        self.phase = "ready"

    def readiness(self) -> Readiness:
        if self.phase == "ready":
            return Readiness(Phase.READY, "ready")
        if self.phase.startswith("start-up failed"):
            return Readiness(Phase.FAILED, self.phase)
        return Readiness(Phase.STARTING, self.phase)

    def run_job(self, job_input: Mapping[str, Any], *, job_id: str | None = None,
                progress: Callable[[Any], None] | None = None,
                cancel: threading.Event | None = None) -> Echo:
        """``fail``: raise the errors.py class of that name; ``raise``: a bug."""
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.calls.append(job_input.get("label"))
        try:
            if progress is not None:
                progress(StepProgress({"node": "1", "value": 1, "max": 2}))
            if job_input.get("wait_gate"):
                deadline = time.monotonic() + 30
                while not self.job_gate.wait(0.02) and time.monotonic() < deadline:
                    if cancel is not None and cancel.is_set():
                        self.cancelled.append(job_input.get("label"))
                        raise errors.JobCancelled("job cancelled")
            time.sleep(float(job_input.get("sleep", 0)))
            if "raise" in job_input:
                raise RuntimeError(job_input["raise"])
            if "fail" in job_input:
                error_class = getattr(errors, job_input["fail"])
                raise error_class(f"scripted failure {job_input['fail']}",
                                  details=[{"node": "3"}])
            return Echo({"images": [], "echo": dict(job_input), "job_id": job_id,
                         "blob": "x" * int(job_input.get("blob", 0))})
        finally:
            with self._lock:
                self.running -= 1

    def stop(self) -> None:
        self.stopped = True


@dataclass
class RunningApi:
    url: str
    service: ApiService
    worker: ScriptedWorker
    server: Any
    thread: threading.Thread
    result: list[int]
    v2: V2Api | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def running_api(worker: Any, *, max_request_bytes: int = 1 << 20,
                api_token: str | None = None, v2_dir: Path | None = None,
                v2_options: Mapping[str, Any] | None = None,
                **service_options: Any) -> Iterator[RunningApi]:
    """run_server() on 127.0.0.1 in a thread; stopped (and joined) on exit. With
    ``v2_dir``, the Comfy API v2 too, its asset store there (``v2_options``: the store's
    ``max_bytes``, ``ttl``, ``clock`` and the V2Api's ``keepalive_s``, ...)."""
    service = ApiService(worker, **service_options)
    v2 = None
    if v2_dir is not None:
        options = dict(v2_options or {})
        store = AssetStore(v2_dir, max_bytes=options.pop("max_bytes", 1 << 30),
                           ttl=options.pop("ttl", 3600.0),
                           **({"clock": options.pop("clock")} if "clock" in options else {}))
        v2 = V2Api(service, store, ttl=options.pop("job_ttl", 3600.0),
                   max_request_bytes=max_request_bytes, **options)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    servers: list[Any] = []
    result: list[int] = []

    def target() -> None:
        result.append(run_server(service, host="127.0.0.1", port=port,
                                 max_request_bytes=max_request_bytes, sock=sock,
                                 api_token=Secret(api_token) if api_token else None,
                                 on_listening=servers.append, v2=v2))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (servers and servers[0].started):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    api = RunningApi(f"http://127.0.0.1:{port}", service, worker, servers[0], thread, result,
                     v2)
    try:
        yield api
    finally:
        worker.start_gate.set()
        worker.job_gate.set()
        servers[0].should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "server thread did not stop"




def wait_status(url: str, job_id: str, statuses: set[str], timeout: float = 10.0) -> dict:
    body: dict = {}

    def done() -> bool:
        nonlocal body
        body = requests.get(f"{url}/status/{job_id}", timeout=5).json()
        return body.get("status") in statuses

    wait_for(done, timeout)
    return body
