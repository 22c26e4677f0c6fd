"""The local HTTP API: ``comfy-worker serve`` (and the model server behind the Vast PyWorker).

Endpoints (OpenAPI at ``/docs``):

- ``POST /generate/sync``: a job input, bare ``{...}`` or wrapped ``{"input": {...}}``;
  answers with the job's output once it ran (200) or ``{"error", "details"}``
  (422 invalid input/workflow, 500 execution error, 504 timeout, 503 not ready).
- ``POST /generate``: queues a job, answers ``{"id", "status"}`` (202) at once.
- ``GET /status/{id}``: ``queued`` / ``running`` / ``completed`` / ``failed`` with its output.
- ``GET /health``: 200 only when the models are synced and ComfyUI is ready; 503 with the
  reason otherwise (``syncing models``, ``starting ComfyUI``, ``start-up failed: ...``).

Jobs run one at a time, in arrival order, on one thread (``job_queue.JobQueue``). The
server answers ``/health`` at once while :meth:`Worker.start` runs in the background
(``job_queue.ApiService``). A fatal start-up failure keeps the process up, reporting the
reason on ``/health`` and to every job request, so a platform health check (or the Vast
PyWorker) sees why; :func:`run_server` then returns 1 when the server is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from comfy_worker.entrypoints.job_queue import (
    CANCELLED,
    ApiService,
    Job,
    QueueClosed,
    QueueFull,
    error_body,
)
from comfy_worker.errors import JobInputInvalid

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
DISCONNECT_POLL_SECONDS = 0.25

# errors.py reference -> HTTP status. Anything else that carries "error" is a 500.
_STATUS_BY_REFERENCE: Mapping[str, int] = {
    "job-input-invalid": 422,
    "workflow-invalid": 422,
    "workflow-execution-error": 500,
    "job-timeout": 504,
    "job-cancelled": 503,
    "output-too-large": 500,
    "comfyui-died": 503,
    "comfyui-error": 503,
}

# --- small pure decisions ------------------------------------------------------------


def unwrap_job_input(body: Any) -> dict[str, Any]:
    """The job input from a request body: ``{"input": {...}}`` or the bare ``{...}``."""
    if not isinstance(body, dict):
        raise JobInputInvalid(
            f"request body is a JSON {type(body).__name__}, not an object",
            hint='send {"input": {"workflow": {...}}} or {"workflow": {...}}',
        )
    if "input" in body:
        inner = body["input"]
        if not isinstance(inner, dict):
            raise JobInputInvalid(
                f"'input' is a JSON {type(inner).__name__}, not an object",
                hint='send {"input": {"workflow": {...}}}',
            )
        return inner
    return body


def http_status_for(output: Mapping[str, Any]) -> int:
    """HTTP status for a finished job's output dict (200 unless it carries ``error``)."""
    if "error" not in output:
        return 200
    reference = output.get("reference")
    if isinstance(reference, str) and reference in _STATUS_BY_REFERENCE:
        return _STATUS_BY_REFERENCE[reference]
    return 500


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared Content-Length of an ASGI request, or None (absent or unreadable)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

# --- request size limit (pure ASGI, before the body is read) ---------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]],
                    Callable[[MutableMapping[str, Any]], Awaitable[None]]], Awaitable[None]]


class BodySizeLimit:
    """Answers 413 when a body's Content-Length, or the bytes actually streamed, pass
    ``max_bytes``; stops reading at the limit. The checked body is replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[Any]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = content_length(scope.get("headers", []))
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, declared)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._reject(send, None)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
                      declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more bytes"
        body = json.dumps(error_body(
            f"request body too large: {size} sent, the limit is {self.max_bytes} bytes",
            [{"limit_bytes": self.max_bytes, "setting": "COMFY_WORKER_MAX_REQUEST_BYTES"}],
            hint="send smaller input images (or a URL to them), or raise "
                 "COMFY_WORKER_MAX_REQUEST_BYTES",
        )).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


# --- the FastAPI app -------------------------------------------------------------------


class Accepted(BaseModel):
    id: str
    status: str = Field(description="queued")


class JobStatus(BaseModel):
    id: str
    status: str = Field(description="queued | running | completed | failed")
    output: dict[str, Any] | None = Field(
        None, description="the job output (images, timings) or {error, details}")
    progress: dict[str, Any] | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None


class Health(BaseModel):
    ready: bool
    reason: str
    queued: int


class ErrorBody(BaseModel):
    error: str
    details: list[Any] = []


_JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {
            "schema": {"type": "object", "description":
                       'job input {"workflow": {...}, "images": [...], "timeout": s}, '
                       'bare or wrapped as {"input": {...}}'},
            "example": {"input": {"workflow": {
                "1": {"class_type": "EmptyImage",
                      "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage",
                      "inputs": {"images": ["1", 0], "filename_prefix": "api"}}}}},
        }},
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "body is not JSON"), (413, "body over COMFY_WORKER_MAX_REQUEST_BYTES"),
        (422, "invalid job input or workflow"), (429, "queue full"),
        (500, "the workflow failed"), (503, "not ready (see /health)"), (504, "job timed out"),
    )
}


async def _output_unless_disconnected(request: Request, job: Job) -> dict[str, Any] | None:
    """The job's output; None (and the job cancelled) if the client disconnects first."""
    output = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({output}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return output.result()
        if await request.is_disconnected():
            log.info("job %s: the client disconnected; cancelling the job", job.id)
            job.cancel.set()
            return None


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse(error_body(f"not ready: {reason}", [{"health": reason}]),
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def create_app(service: ApiService, *, max_request_bytes: int) -> FastAPI:
    """The HTTP API around ``service``, with the body size limit in front."""
    app = FastAPI(
        title="comfy-worker",
        description="Run ComfyUI workflows (API format) with locked, verified models.",
        version="1",
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)

    async def read_job_input(request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse(error_body("request body is not valid JSON", [str(exc)]),
                                status_code=400)
        try:
            return unwrap_job_input(body)
        except JobInputInvalid as exc:
            extra = {"hint": exc.hint} if exc.hint else {}
            return JSONResponse(error_body(exc.message, exc.details, reference=exc.reference,
                                           **extra), status_code=422)

    def submit(job_input: dict[str, Any], *, keep: bool) -> Job | JSONResponse:
        ready, reason = service.health()
        if not ready:
            return _not_ready(reason)
        try:
            return service.queue.submit(job_input, keep=keep)
        except QueueClosed as exc:
            return _not_ready(str(exc))
        except QueueFull as exc:
            return JSONResponse(error_body(f"queue full: {exc}"), status_code=429,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def accept(request: Request, *, keep: bool) -> Job | JSONResponse:
        """The request's job, queued; or the response that says why it was not."""
        job_input = await read_job_input(request)
        if isinstance(job_input, JSONResponse):
            return job_input
        return submit(job_input, keep=keep)

    @app.post("/generate/sync", openapi_extra=_JOB_BODY, responses=_ERRORS,
              summary="Run a job and answer with its output")
    async def generate_sync(request: Request) -> JSONResponse:
        job = await accept(request, keep=False)
        if isinstance(job, JSONResponse):
            return job
        output = await _output_unless_disconnected(request, job)
        if output is None:
            return JSONResponse(error_body(CANCELLED), status_code=499)
        status = http_status_for(output)
        if status != 200:
            output = {"details": [], **output}
        return JSONResponse(output, status_code=status, headers={"X-Job-Id": job.id})

    @app.post("/generate", status_code=202, response_model=Accepted, openapi_extra=_JOB_BODY,
              responses=_ERRORS, summary="Queue a job; poll GET /status/{id}")
    async def generate(request: Request) -> Any:
        job = await accept(request, keep=True)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse({"id": job.id, "status": "queued"}, status_code=202)

    @app.get("/status/{job_id}", response_model=JobStatus,
             responses={404: {"model": ErrorBody}}, summary="A queued job's state and output")
    async def status(job_id: str) -> Any:
        job = service.queue.get(job_id)
        if job is None:
            return JSONResponse(error_body(
                f"unknown job id {job_id!r}",
                ["finished jobs are kept for a limited number of results; "
                 "sync jobs (/generate/sync) are not kept"]), status_code=404)
        return JSONResponse(job.to_json())

    @app.get("/health", response_model=Health, responses={503: {"model": Health}},
             summary="200 when models are synced and ComfyUI is ready")
    async def health() -> JSONResponse:
        ready, reason = service.health()
        body = {"ready": ready, "reason": reason, "queued": service.queue.waiting}
        return JSONResponse(body, status_code=200 if ready else 503)

    return app


# --- running it --------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); lets callers know the port first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGINT/SIGTERM only ask it to stop.

    uvicorn re-raises a captured signal once it has stopped, which would kill the process
    before :func:`run_server` stops the job queue and ComfyUI; here the caller decides.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(sig).name)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def make_server(app: FastAPI) -> uvicorn.Server:
    """A uvicorn server for ``app`` (logging left to ours)."""
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5,
                            lifespan="off")
    return _Server(config)


def run_server(service: ApiService, *, host: str, port: int, max_request_bytes: int,
               sock: socket.socket | None = None,
               on_listening: Callable[[Any], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or ``server.should_exit``). 0, or 1 when start-up failed.

    ``on_listening(server)`` is called once the socket is bound, before start-up begins,
    so a caller (the Vast command) can start companions and stop the server later.
    """
    sock = sock or bind_socket(host, port)
    app = create_app(service, max_request_bytes=max_request_bytes)
    server = make_server(app)
    bound = sock.getsockname()
    log.info("HTTP API listening on http://%s:%s (docs at /docs)", bound[0], bound[1])
    service.start_background()
    if on_listening is not None:
        on_listening(server)
    try:
        server.run(sockets=[sock])
    finally:
        service.shutdown()
        sock.close()
    return 1 if service.failed else 0
