"""The ``/api/v2`` routes: thin handlers from HTTP to :class:`V2Api` and back.

Every failure is answered with the contract's envelope (:func:`.wire.error_body`) and
its status, a bug as ``internal_error`` 500; nothing a request does stops the server.
Disk work (hashing an upload, writing it) runs in a thread, off the event loop.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from comfy_worker.config import env_name
from comfy_worker.entrypoints.api_v2 import wire
from comfy_worker.entrypoints.api_v2.assets import AssetStore
from comfy_worker.entrypoints.api_v2.events import KEEPALIVE_S, POLL_S, job_events
from comfy_worker.entrypoints.api_v2.jobs import Service, Snapshot, V2Jobs, job_json
from comfy_worker.entrypoints.api_v2.upload import parse_upload
from comfy_worker.errors import (
    AssetNotFound,
    RequestInvalid,
    TooManyStreams,
    WorkerError,
    as_worker_error,
)
from comfy_worker.job.request import JobLimits
from comfy_worker.readiness import Phase

log = logging.getLogger(__name__)

MAX_STREAMS = 64
MAX_JSON_BYTES = 1 << 20
"""``POST /assets/from-hash`` takes a small JSON object."""


class V2Api:
    """The v2 surface's state: the job registry, the asset store, open streams."""

    def __init__(self, service: Service, store: AssetStore, *, ttl: float,
                 max_request_bytes: int, max_timeout: float = JobLimits.max_timeout,
                 keepalive_s: float = KEEPALIVE_S, poll_s: float = POLL_S,
                 max_streams: int = MAX_STREAMS) -> None:
        self.service = service
        self.store = store
        self.jobs = V2Jobs(service, store, ttl=ttl, max_input_bytes=max_request_bytes,
                           max_timeout=max_timeout)
        self.keepalive_s = keepalive_s
        self.poll_s = poll_s
        self.max_streams = max_streams
        self._streams = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def open_stream(self) -> None:
        with self._lock:
            if self._streams >= self.max_streams:
                raise TooManyStreams(
                    f"{self._streams} event streams are open, the most this worker serves",
                    hint="poll GET /api/v2/jobs/{id} instead, or retry the stream later")
            self._streams += 1

    def close_stream(self) -> None:
        with self._lock:
            self._streams -= 1

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Ends open streams; removes the assets from disk."""
        self._closing.set()
        self.store.close()


def error_response(err: WorkerError, *, head: bool = False) -> Response:
    if head:
        return Response(status_code=wire.error_status(err), headers=wire.error_headers(err))
    return JSONResponse(wire.error_body(err), status_code=wire.error_status(err),
                        headers=wire.error_headers(err))


Handler = Callable[..., Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """Errors as the contract's envelope; a bug logged and answered 500."""

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except WorkerError as err:
            return error_response(err)
        except Exception as exc:
            log.exception("v2 %s failed", handler.__name__)
            return error_response(as_worker_error(exc))

    return run


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def job_body(request: Request, snap: Snapshot) -> dict[str, Any]:
    """A job as the contract's ``Job``, its URLs for the origin and mount this request used."""
    return job_json(snap, base_url(request), root_path=request.scope.get("root_path", ""))


def job_response(request: Request, snap: Snapshot, *, status_code: int = 200) -> Response:
    return JSONResponse(job_body(request, snap), status_code=status_code)


async def json_body(request: Request) -> object:
    raw = await request.body()
    if len(raw) > MAX_JSON_BYTES and request.url.path.endswith("/from-hash"):
        raise RequestInvalid(f"the body is {len(raw)} bytes; this route takes a small JSON "
                             "object", hint='send {"hash": "blake3:...", "file_path": "..."}')
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(f"the request body is not JSON ({str(exc)[:120]})",
                             hint="send a JSON object with Content-Type: application/json"
                             ) from None


def mount(app: FastAPI, api: V2Api) -> None:
    """Adds the ``/api/v2`` routes to ``app``; unknown ``/api/v2`` paths and methods are
    answered in the v2 envelope too."""
    app.include_router(router(api))
    previous = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)

    async def v2_http_errors(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith(wire.PREFIX + "/"):
            return await previous(request, exc)  # type: ignore[no-any-return]
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                   f"http_{exc.status_code}")
        return JSONResponse({"error": {"code": code, "message": f"{request.method} "
                                       f"{request.url.path[:200]}: {exc.detail}",
                                       "details": None}},
                            status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(StarletteHTTPException, v2_http_errors)


def router(api: V2Api) -> APIRouter:
    r = APIRouter(prefix=wire.PREFIX, tags=["Comfy API v2"])
    jobs, store = api.jobs, api.store

    # --- health ---------------------------------------------------------------------------

    @r.get("/health", summary="Liveness (no token needed): 200 unless start-up failed")
    @guarded
    async def health() -> Response:
        state = api.service.health()
        ok = state.phase not in (Phase.FAILED, Phase.STOPPED)
        body = {"status": "healthy" if state.ready else state.phase.value,
                **state.to_json(), "queued": api.service.queue.waiting}
        return JSONResponse(body, status_code=200 if ok else 503)

    # --- jobs -------------------------------------------------------------------------------

    @r.post("/jobs", status_code=201, summary="Submit a workflow (API format)")
    @guarded
    async def submit(request: Request) -> Response:
        key = wire.parse_idempotency_key(request.headers.get("Idempotency-Key"))
        body = await json_body(request)
        job = await run_in_threadpool(jobs.submit, body, idempotency_key=key)
        return job_response(request, jobs.snapshot(job), status_code=201)

    @r.get("/jobs", summary="Jobs, newest first (status, limit, cursor, metadata[KEY])")
    @guarded
    async def list_jobs(request: Request) -> Response:
        query = wire.parse_list_query(request.query_params.multi_items())
        page, cursor = jobs.list(query)
        out: dict[str, Any] = {"jobs": [job_body(request, s) for s in page]}
        if cursor is not None:
            out["next_cursor"] = cursor
        return JSONResponse(out)

    @r.get("/jobs/{job_id}", summary="A job: status, progress, outputs, error")
    @guarded
    async def get_job(request: Request, job_id: str) -> Response:
        return job_response(request, jobs.snapshot(jobs.get(job_id)))

    @r.post("/jobs/{job_id}/cancel", summary="Cancel a job (idempotent)")
    @guarded
    async def cancel(request: Request, job_id: str) -> Response:
        return job_response(request, jobs.snapshot(jobs.cancel(job_id)))

    @r.get("/jobs/{job_id}/workflow", summary="The workflow a job runs (API format)")
    @guarded
    async def workflow(job_id: str) -> Response:
        return JSONResponse({"workflow": jobs.get(job_id).workflow, "format": "api"})

    @r.get("/jobs/{job_id}/events", summary="Server-Sent Events: status, progress, output")
    @guarded
    async def events(request: Request, job_id: str) -> Response:
        job = jobs.get(job_id)
        api.open_stream()

        async def stream() -> Any:
            try:
                async for chunk in job_events(jobs, job, base_url=base_url(request),
                                              closing=lambda: api.closing,
                                              keepalive_s=api.keepalive_s,
                                              poll_s=api.poll_s):
                    yield chunk
            finally:
                api.close_stream()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- assets -----------------------------------------------------------------------------

    @r.post("/assets", status_code=201, summary="Upload a file (multipart; blake3, dedup)")
    @guarded
    async def upload(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type")

        def store_it() -> tuple[Any, bool]:
            writer = store.writer()
            try:
                form = parse_upload(content_type, body, writer)
                file_path = wire.parse_file_path(form.one("file_path"))
                declared = form.one("content_type") or form.file_content_type
                expected = form.one("expected_hash")
                return store.add_upload(
                    writer, content_type=wire.parse_content_type(declared, file_path),
                    file_path=file_path, expected_hash=wire.parse_hash(
                        expected, where='field "expected_hash"') if expected else None)
            finally:
                writer.discard()

        asset, created = await run_in_threadpool(store_it)
        return JSONResponse(asset.to_json(base_url(request), created_new=created),
                            status_code=201 if created else 200)

    @r.post("/assets/from-hash", summary="An asset over bytes this worker already has")
    @guarded
    async def from_hash(request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise RequestInvalid("the body is not a JSON object",
                                 hint='send {"hash": "blake3:...", "file_path": "photo.png"}')
        digest = wire.parse_hash(body.get("hash"), where='field "hash"')
        file_path = body.get("file_path")
        file_path = wire.parse_file_path(file_path) if file_path is not None else None
        asset = store.from_hash(digest, file_path=file_path)
        return JSONResponse(asset.to_json(base_url(request), created_new=False))

    @r.head("/assets/by-hash/{digest}", summary="200 when this worker has those bytes")
    async def by_hash(digest: str) -> Response:
        try:
            found = store.has_hash(wire.parse_hash(digest, where="the hash"))
        except WorkerError as err:
            return error_response(err, head=True)
        return Response(status_code=200 if found else 404)

    @r.get("/assets/{asset_id}", summary="An asset's record (and its content URL)")
    @guarded
    async def get_asset(request: Request, asset_id: str) -> Response:
        asset = store.get(_asset_id(asset_id))
        if asset is None:
            raise _no_asset(asset_id)
        return JSONResponse(asset.to_json(base_url(request)))

    @r.get("/assets/{asset_id}/content", summary="An asset's bytes (Range supported)")
    @guarded
    async def content(asset_id: str) -> Response:
        found = store.content(_asset_id(asset_id))
        if found is None:
            raise _no_asset(asset_id)
        asset, path = found
        if path is None:
            assert asset.remote_url is not None
            return RedirectResponse(asset.remote_url, status_code=302)
        name = Path(asset.file_path or asset.id).name
        return FileResponse(path, media_type=asset.content_type, filename=name,
                            content_disposition_type="inline")

    @r.delete("/assets/{asset_id}", status_code=204, summary="Delete an asset")
    @guarded
    async def delete_asset(asset_id: str) -> Response:
        if not store.delete(_asset_id(asset_id)):
            raise _no_asset(asset_id)
        return Response(status_code=204)

    return r


def _asset_id(text: str) -> str:
    return wire.canonical_id(text) or ""


def _no_asset(asset_id: str) -> AssetNotFound:
    return AssetNotFound(f"no asset {asset_id[:64]!r} on this worker",
                         hint=f"assets expire ({env_name('asset_ttl')}) and may be evicted "
                         f"under {env_name('assets_max_bytes')}; upload it again")
