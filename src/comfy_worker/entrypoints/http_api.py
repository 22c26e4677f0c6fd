"""The local HTTP API: ``comfy-worker serve`` (and the model server behind the Vast PyWorker).

Endpoints (OpenAPI at ``/docs``):

- ``POST /generate/sync``: a job input, bare ``{...}`` or wrapped ``{"input": {...}}``;
  answers with the job's output once it ran (200) or ``{"error", "details"}``
  (422 invalid input/workflow, 500 execution error, 504 timeout, 503 not ready).
- ``POST /generate``: queues a job, answers ``{"id", "status"}`` (202) at once.
- ``GET /status/{id}``: ``queued`` / ``running`` / ``completed`` / ``failed`` with its output.
- ``GET /health``: 200 when the worker is ready (ComfyUI up; in ``all`` sync mode also
  every locked model synced), with the background sync in its body; 503 with the phase
  and reason otherwise (``starting ComfyUI``, ``restarting ComfyUI``, ``start-up failed:
  ...``).

Jobs run one at a time, in arrival order, on one thread (``job_queue.JobQueue``). The
server answers ``/health`` at once while :meth:`Worker.start` runs in the background
(``job_queue.ApiService``). A fatal start-up failure keeps the process up, reporting the
reason on ``/health`` and to every job request, so a platform health check (or the Vast
PyWorker) sees why; :func:`run_server` then returns 1 when the server is stopped.

As a platform (``comfy-worker serve``, entrypoints/platform.py): it starts the worker in
the background once the socket is bound; it reads readiness on ``GET /health``; it serves
jobs through the queue, one at a time (:func:`main`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
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

from comfy_worker.config import Secret, Settings, env_name
from comfy_worker.entrypoints import api_v2
from comfy_worker.entrypoints.api_v2 import wire as v2_wire
from comfy_worker.entrypoints.job_queue import CANCELLED, ApiService, Job, Outcome
from comfy_worker.errors import (
    JobCancelled,
    JobNotFound,
    RequestInvalid,
    RequestTooLarge,
    Unauthorized,
    WorkerError,
    WorkerStartFailed,
    WorkerStarting,
)
from comfy_worker.job.request import job_input_of
from comfy_worker.jsontypes import JsonRefused, loads
from comfy_worker.readiness import Phase, Readiness

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
DISCONNECT_POLL_SECONDS = 0.25
CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a client that hung up before the answer (the job is cancelled)."""

# --- small pure decisions ------------------------------------------------------------


def response_for(outcome: Outcome) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for a finished job (the error carries its own status)."""
    if isinstance(outcome, WorkerError):
        return outcome.status, outcome.to_json()
    return 200, outcome.to_json()


def not_ready_error(state: Readiness) -> WorkerError:
    """Why a job is refused before it is queued, from the worker's readiness."""
    details = [{"health": state.reason, "phase": state.phase.value}]
    if state.phase is Phase.FAILED:
        return WorkerStartFailed(f"not ready: {state.reason}", details=details,
                                 hint="the worker cannot run jobs; see its log and restart it")
    return WorkerStarting(f"not ready: {state.reason}", details=details,
                          hint=f"retry in {RETRY_AFTER_SECONDS} s, or wait until GET /health "
                          "answers 200")


def is_loopback_host(host: str) -> bool:
    """The bind address reaches only this machine (``127.0.0.0/8``, ``::1``,
    ``localhost``); ``0.0.0.0``, ``::``, another address or a host name do not (pure)."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def open_api_warning(host: str, port: int, api_token: Secret | None) -> str | None:
    """The warning ``serve`` logs when anyone who reaches ``host:port`` can run jobs: a
    non-loopback address and no ``COMFY_WORKER_API_TOKEN`` (None otherwise; pure)."""
    if api_token or is_loopback_host(host):
        return None
    return (f"the HTTP API listens on {host}:{port}, not on loopback, and "
            f"{env_name('api_token')} is unset: anyone who can reach that port can run "
            f"jobs (and make this worker fetch URLs and models). Set "
            f"{env_name('api_token')}, or {env_name('host')}=127.0.0.1 behind your own "
            "proxy")


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared Content-Length of an ASGI request, or None (absent or unreadable)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def error_json(path: str, err: WorkerError) -> tuple[int, bytes]:
    """Status and body of an error the middlewares answer: the Comfy API v2's envelope
    under ``/api/v2``, ours elsewhere."""
    if path.startswith(v2_wire.PREFIX + "/"):
        return v2_wire.error_status(err), json.dumps(v2_wire.error_body(err)).encode()
    return err.status, json.dumps(err.to_json()).encode()


def error_response(err: WorkerError, *, status: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if err.status in (429, 503) else {}
    return JSONResponse(err.to_json(), status_code=status or err.status,
                        headers={**retry, **(headers or {})})

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
            await self._reject(scope, send, declared)
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
                await self._reject(scope, send, None)
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

    async def _reject(self, scope: MutableMapping[str, Any],
                      send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
                      declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more bytes"
        status, body = error_json(scope.get("path", ""), RequestTooLarge(
            f"request body too large: {size} sent, the limit is {self.max_bytes} bytes",
            details=[{"limit_bytes": self.max_bytes,
                      "setting": env_name("max_request_bytes")}],
            hint="send smaller input images (or a URL to them), or raise "
                 f"{env_name('max_request_bytes')}",
        ))
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


# --- API token (pure ASGI, before anything is read) -------------------------------------

OPEN_PATHS = frozenset({"/health", v2_wire.PREFIX + "/health"})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None (pure)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


def token_matches(given: bytes | None, expected: bytes) -> bool:
    """Constant-time comparison (a wrong token takes as long as a nearly right one)."""
    return hmac.compare_digest(given or b"", expected) and bool(given) and bool(expected)


class RequireToken:
    """Every route except /health needs ``Authorization: Bearer TOKEN`` (401 otherwise,
    with ``WWW-Authenticate``). The token is never logged or echoed."""

    def __init__(self, app: ASGIApp, token: Secret) -> None:
        self.app = app
        self._token = token.reveal().encode()

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[Any]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or token_matches(
                bearer_token(scope.get("headers", [])), self._token):
            await self.app(scope, receive, send)
            return
        given = bearer_token(scope.get("headers", []))
        err = Unauthorized(
            "missing API token" if given is None else "wrong API token",
            hint=f"send the header 'Authorization: Bearer <{env_name('api_token')}>'")
        _, body = error_json(scope.get("path", ""), err)
        challenge = b'Bearer realm="comfy-worker"' + (
            b', error="invalid_token"' if given is not None else b"")
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge),
        ]})
        await send({"type": "http.response.body", "body": body})


# --- the FastAPI app -------------------------------------------------------------------

_ERROR_SCHEMA = {"type": "object", "required": ["error", "details", "reference"],
                 "properties": {
                     "error": {"type": "string", "description": "what went wrong"},
                     "details": {"type": "array", "description": "structured data, e.g. "
                                 "one entry per failing node"},
                     "reference": {"type": "string", "description": "stable error code, "
                                   "e.g. workflow-invalid, job-timeout"},
                     "hint": {"type": "string", "description": "how to fix it"}}}
_READINESS_SCHEMA = {"type": "object", "properties": {
    "ready": {"type": "boolean"},
    "phase": {"type": "string", "enum": [p.value for p in Phase]},
    "reason": {"type": "string"}, "queued": {"type": "integer"}}}
_JOB_STATUS_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"},
    "status": {"type": "string",
               "enum": ["queued", "running", "completed", "failed", "cancelled"]},
    "output": {"description": "the job result {images, videos, timings}, or an error "
               "{error, details, reference, hint}"},
    "progress": {"type": "object"}, "created": {"type": "number"},
    "started": {"type": "number"}, "finished": {"type": "number"}}}
_RESULT_SCHEMA = {"type": "object", "properties": {
    "images": {"type": "array"}, "videos": {"type": "array"}, "timings": {"type": "object"}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: _json(_ERROR_SCHEMA, text) for code, text in (
        (400, "body is not JSON"), (413, f"body over {env_name('max_request_bytes')}"),
        (422, "invalid job input or workflow"), (429, "queue full"),
        (499, "the client hung up; the job was cancelled"),
        (500, "the workflow failed"), (502, "a model source failed"),
        (503, "not ready (see /health)"), (504, "job timed out"),
        (507, "no disk space for a model"),
    )
}
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


async def _outcome_unless_disconnected(request: Request, job: Job) -> Outcome | None:
    """The job's outcome; None (and the job cancelled) if the client disconnects first."""
    outcome = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({outcome}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return outcome.result()
        if await request.is_disconnected():
            log.info("job %s: the client disconnected; cancelling the job", job.id)
            job.cancel.set()
            return None


def create_app(service: ApiService, *, max_request_bytes: int,
               api_token: Secret | None = None, v2: api_v2.V2Api | None = None) -> FastAPI:
    """The HTTP API around ``service``, with the body size limit in front and, when
    ``api_token`` is set, the token check in front of that; with ``v2``, the Comfy API
    v2 (``/api/v2``) beside it on the same queue."""
    app = FastAPI(
        title="comfy-worker",
        description="Run ComfyUI workflows (API format) with locked, verified models.",
        version="1",
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    if api_token:
        app.add_middleware(RequireToken, token=api_token)  # added last: runs first

    async def read_job_input(request: Request) -> Mapping[str, Any]:
        raw = await request.body()
        try:
            body = loads(raw)
        except ValueError as exc:
            what = ("is JSON this worker refuses" if isinstance(exc, JsonRefused)
                    else "is not valid JSON")
            raise RequestInvalid(f"request body {what}", details=[str(exc)],
                                 hint="send a JSON object, e.g. {\"input\": {...}}") from None
        return job_input_of(body, where="request body")

    async def accept(request: Request, *, keep: bool) -> Job | JSONResponse:
        """The request's job, queued; or the response that says why it was not."""
        try:
            job_input = await read_job_input(request)
            state = service.health()
            if not state.accepts_jobs:  # recovering: the job waits for the new ComfyUI
                raise not_ready_error(state)
            return service.queue.submit(job_input, keep=keep)
        except WorkerError as exc:
            return error_response(exc)

    @app.post("/generate/sync", openapi_extra=_JOB_BODY,
              responses={200: _json(_RESULT_SCHEMA, "the job's result"), **_ERRORS},
              summary="Run a job and answer with its output")
    async def generate_sync(request: Request) -> JSONResponse:
        job = await accept(request, keep=False)
        if isinstance(job, JSONResponse):
            return job
        outcome = await _outcome_unless_disconnected(request, job)
        if outcome is None:
            return error_response(JobCancelled(CANCELLED), status=CLIENT_CLOSED_REQUEST)
        status, body = response_for(outcome)
        return JSONResponse(body, status_code=status, headers={"X-Job-Id": job.id})

    @app.post("/generate", status_code=202, openapi_extra=_JOB_BODY,
              responses={202: _json({"type": "object", "properties": {
                  "id": {"type": "string"}, "status": {"type": "string"}}}, "queued"),
                  **_ERRORS},
              summary="Queue a job; poll GET /status/{id}")
    async def generate(request: Request) -> JSONResponse:
        job = await accept(request, keep=True)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse({"id": job.id, "status": "queued"}, status_code=202)

    @app.get("/status/{job_id}",
             responses={200: _json(_JOB_STATUS_SCHEMA, "the job"),
                        404: _json(_ERROR_SCHEMA, "unknown job id")},
             summary="A queued job's state and output")
    async def status(job_id: str) -> JSONResponse:
        job = service.queue.get(job_id)
        if job is None:
            return error_response(JobNotFound(
                f"unknown job id {job_id!r}",
                hint="finished jobs are kept for a limited number of results; sync jobs "
                "(/generate/sync) are not kept"))
        return JSONResponse(job.to_json())

    if v2 is not None:
        api_v2.mount(app, v2)

    @app.get("/health", responses={200: _json(_READINESS_SCHEMA, "ready"),
                                   503: _json(_READINESS_SCHEMA, "not ready, and why")},
             summary="200 when the worker takes jobs (see the sync mode)")
    async def health() -> JSONResponse:
        state = service.health()
        body = {**state.to_json(), "queued": service.queue.waiting}
        return JSONResponse(body, status_code=200 if state.ready else 503)

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


def main(settings: Settings) -> int:
    """``comfy-worker serve``: bind ``--host``/``--port`` at once, answer ``/health`` with
    503 while the worker starts in the background, serve until SIGINT/SIGTERM. Exits 1
    if start-up had failed, else 0."""
    from comfy_worker.worker import Worker

    worker = Worker(settings)
    service = ApiService(worker)
    return run_server(service, host=settings.host, port=settings.port,
                      max_request_bytes=settings.max_request_bytes,
                      api_token=settings.api_token,
                      v2=api_v2.v2_api(service, settings, worker.work_dir))


def run_server(service: ApiService, *, host: str, port: int, max_request_bytes: int,
               api_token: Secret | None = None, sock: socket.socket | None = None,
               on_listening: Callable[[Any], None] | None = None,
               v2: api_v2.V2Api | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or ``server.should_exit``). 0, or 1 when start-up failed.

    ``on_listening(server)`` is called once the socket is bound, before start-up begins,
    so a caller (the Vast command) can start companions and stop the server later. ``v2``
    (``serve``): the Comfy API v2 too, its assets removed when the server stops.
    """
    sock = sock or bind_socket(host, port)
    app = create_app(service, max_request_bytes=max_request_bytes, api_token=api_token,
                     v2=v2)
    server = make_server(app)
    bound = sock.getsockname()
    log.info("HTTP API listening on http://%s:%s (docs at /docs; %s)", bound[0], bound[1],
             "API token required" if api_token else "no API token")
    warning = open_api_warning(str(bound[0]), int(bound[1]), api_token)
    if warning is not None:
        log.warning("%s", warning)
    service.start_background()
    if on_listening is not None:
        on_listening(server)
    try:
        server.run(sockets=[sock])
    finally:
        if v2 is not None:
            v2.close()
        service.shutdown()
        sock.close()
    return 1 if service.failed else 0
