"""The Comfy API v2's jobs: each one a job of the worker's own queue
(:class:`~comfy_worker.entrypoints.job_queue.JobQueue`, one at a time, in arrival order,
shared with ``/generate``), so models on demand, preflight, timeouts and recycling apply.

:class:`V2Jobs` checks a submission (:mod:`.wire`), resolves its ``core/ASSET``
references to the assets' bytes (pinned in the store until the job is over), claims its
``Idempotency-Key`` (single use; released when no job was made), and queues a job input
that is only built when the job starts: ``{"workflow", "images": [each asset as the file
ComfyUI loads], "comfy_org_api_key"}``, so a waiting job holds no copy of its assets and
the partner-node key lives only in that function until ComfyUI has it. When the job
ends, its outputs become assets (:mod:`.assets`) and its record keeps their ids, its
error and timings, for ``COMFY_WORKER_ASSET_TTL`` (at most ``MAX_JOBS`` records).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from comfy_worker.config import Secret, env_name
from comfy_worker.entrypoints.api_v2 import wire
from comfy_worker.entrypoints.api_v2.assets import Asset, AssetStore, Pin
from comfy_worker.entrypoints.job_queue import Job as QueueJob
from comfy_worker.entrypoints.job_queue import JobQueue, Outcome
from comfy_worker.errors import (
    JobCancelled,
    JobNotFound,
    MissingAsset,
    WorkerError,
    WorkerStartFailed,
    as_worker_error,
)
from comfy_worker.job.events import JobEvent, NodeProgress
from comfy_worker.job.request import JobLimits, parse_timeout, parse_workflow
from comfy_worker.readiness import Phase, Readiness

log = logging.getLogger(__name__)

MAX_JOBS = 1000
MAX_KEYS = 10_000


class Service(Protocol):
    """What the registry needs of :class:`~comfy_worker.entrypoints.job_queue.ApiService`."""

    queue: JobQueue

    def health(self) -> Readiness: ...


@dataclass(frozen=True)
class OutputRef:
    """One output of a finished job: its asset as it was stored."""

    node_id: str
    name: str
    kind: str
    asset: Asset


@dataclass
class Final:
    status: str
    """succeeded, failed or canceled."""
    completed: float
    outputs: tuple[OutputRef, ...] = ()
    error: WorkerError | None = None
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass
class V2Job:
    id: str
    seq: int
    created: float
    expires: float
    labels: dict[str, str]
    workflow: dict[str, Any]
    """The API graph as ComfyUI runs it (assets as their file names; no secret)."""
    queued: QueueJob | None
    pin: Pin | None
    cancel_requested: bool = False
    started: float | None = None
    last_progress: JobEvent | None = None
    final: Final | None = None


@dataclass(frozen=True)
class Snapshot:
    """A job as a client sees it now."""

    status: str
    queue_position: int | None
    progress: dict[str, Any] | None
    job: V2Job

    @property
    def terminal(self) -> bool:
        return self.status in wire.TERMINAL


class V2Jobs:
    def __init__(self, service: Service, store: AssetStore, *, ttl: float,
                 max_input_bytes: int, max_timeout: float = JobLimits.max_timeout,
                 max_jobs: int = MAX_JOBS, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.store = store
        self.ttl = ttl
        self.max_input_bytes = max_input_bytes
        self.max_timeout = max_timeout
        """The most seconds a job's ``timeout`` may ask for (the operator's
        COMFY_WORKER_MAX_JOB_TIMEOUT, as the job pipeline checks it)."""
        self.max_jobs = max_jobs
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.RLock()
        self._jobs: OrderedDict[str, V2Job] = OrderedDict()
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._seq = 0

    # --- submit -------------------------------------------------------------------------

    def submit(self, body: object, *, idempotency_key: str | None = None) -> V2Job:
        """Check, resolve and queue one v2 job; raises a :class:`WorkerError` (nothing is
        queued and the key stays free then)."""
        submission = wire.parse_submission(body)
        self._refuse_if_stopped(self.service.health())
        refs = wire.find_asset_refs(submission.workflow)
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._keys:
                raise wire.key_reused(idempotency_key)
        pin, found = self.store.pin(r.asset_id for r in refs)
        try:
            missing = [r for r in refs if r.asset_id not in found]
            if missing:
                raise wire.missing_assets(missing)
            total = sum(a.size for a in found.values())
            if total > self.max_input_bytes:
                raise MissingAsset(
                    f"the job's assets are {total} bytes together, over the "
                    f"{self.max_input_bytes}-byte limit of one job's inputs",
                    hint=f"use smaller or fewer input assets, or raise "
                    f"{env_name('max_request_bytes')}")
            names = {i: wire.input_name(i, a.file_path, a.content_type)
                     for i, a in found.items()}
            workflow = parse_workflow(wire.with_assets(submission.workflow, names))
            if "timeout" in submission.extensions:
                parse_timeout(submission.extensions["timeout"], 1.0, self.max_timeout)
            job = self._queue(workflow, submission, names, found, pin, idempotency_key)
        except BaseException:
            pin.release()
            raise
        assert job.queued is not None
        job.queued.future.add_done_callback(lambda f: self._finish(job, f))
        log.info("v2 job %s: queued (%d asset(s)%s)", job.id, len(found),
                 ", partner-node key" if submission.api_key else "")
        return job

    @staticmethod
    def _refuse_if_stopped(state: Readiness) -> None:
        """Jobs wait while the worker starts or recovers; after a failed start-up (or a
        stop) none will ever run."""
        if state.phase in (Phase.FAILED, Phase.STOPPED):
            raise WorkerStartFailed(f"this worker takes no jobs: {state.reason}",
                                    hint="see the worker's log; fix the cause and restart "
                                    "it, or send the job to another worker")

    def _queue(self, workflow: dict[str, Any], submission: wire.Submission,
               names: Mapping[str, str], assets: Mapping[str, Asset], pin: Pin,
               key: str | None) -> V2Job:
        body = _job_input(workflow, submission.extensions, names, assets, pin,
                          submission.api_key)
        with self._lock:
            if key is not None and key in self._keys:  # a concurrent twin claimed it
                raise wire.key_reused(key)
            job_id = wire.new_id()
            queued = self.service.queue.submit(body, keep=False, job_id=job_id)
            now = self._clock()
            self._seq += 1
            job = V2Job(job_id, self._seq, now, now + self.ttl, submission.labels, workflow,
                        queued, pin)
            self._jobs[job_id] = job
            if key is not None:
                self._keys[key] = None
                while len(self._keys) > self.max_keys:
                    self._keys.popitem(last=False)
            self._forget_old()
            return job

    # --- the end of a job ------------------------------------------------------------------

    def _finish(self, job: V2Job, future: Future[Outcome]) -> None:
        """In the queue's thread, when the job ended: outputs stored as assets."""
        try:
            outcome: Outcome = future.result()
            final = self._final(job, outcome)
        except Exception as exc:  # never lose the job, whatever happened
            log.exception("v2 job %s: storing its outcome failed", job.id)
            final = Final("failed", self._clock(), error=as_worker_error(exc))
        with self._lock:
            queued = job.queued
            job.started = queued.started if queued is not None else None
            job.last_progress = queued.progress if queued is not None else None
            job.final = final
            job.queued = None
        if job.pin is not None:
            job.pin.release()
            job.pin = None
        log.info("v2 job %s: %s", job.id, final.status)

    def _final(self, job: V2Job, outcome: Outcome) -> Final:
        if isinstance(outcome, JobCancelled):
            return Final("canceled", self._clock(), error=outcome)
        if isinstance(outcome, WorkerError):
            return Final("failed", self._clock(), error=outcome)
        result = outcome.to_json()
        outputs: list[OutputRef] = []
        try:
            for key, video in (("images", False), ("videos", True)):
                for item in result.get(key) or []:
                    outputs.append(self._store_output(job, item, video=video))
        except WorkerError as err:
            for out in outputs:
                self.store.delete(out.asset.id)
            return Final("failed", self._clock(), error=err)
        timings = result.get("timings") or {}
        return Final("succeeded", self._clock(), tuple(outputs),
                     timings={k: v for k, v in timings.items()
                              if isinstance(v, int | float) and k.endswith("_ms")})

    def _store_output(self, job: V2Job, item: Mapping[str, Any], *, video: bool
                      ) -> OutputRef:
        name = str(item.get("filename") or "output")
        content_type = wire.parse_content_type(None, name)
        if item.get("type") == "s3_url":
            asset = self.store.add_remote(str(item.get("data")), content_type=content_type,
                                          file_path=name, job_id=job.id)
        else:
            data = base64.b64decode(str(item.get("data") or ""))
            asset = self.store.add_bytes(data, content_type=content_type, file_path=name,
                                         job_id=job.id)
        return OutputRef(str(item.get("node_id") or ""), name,
                         wire.output_kind(name, content_type, video=video), asset)

    # --- reading --------------------------------------------------------------------------

    def get(self, job_id: str) -> V2Job:
        canonical = wire.canonical_id(job_id)
        with self._lock:
            self._forget_old()
            job = self._jobs.get(canonical) if canonical else None
        if job is None:
            raise JobNotFound(f"no job {job_id[:64]!r} on this worker",
                              hint=f"job records are kept for {env_name('asset_ttl')} "
                              f"seconds (at most {self.max_jobs}); list them with GET "
                              "/api/v2/jobs")
        return job

    def snapshot(self, job: V2Job) -> Snapshot:
        with self._lock:
            if job.final is not None:
                return Snapshot(job.final.status, None, _final_progress(job), job)
            queued = job.queued
            assert queued is not None
            if queued.started is None:
                if job.cancel_requested:
                    return Snapshot("canceled", None, None, job)
                return Snapshot("queued", self.service.queue.position(queued), None, job)
            status = "canceling" if job.cancel_requested else "running"
            return Snapshot(status, None, wire.progress_json(queued.progress), job)

    def list(self, query: wire.ListQuery) -> tuple[list[Snapshot], str | None]:
        """Newest first; the next page's cursor when there is one."""
        with self._lock:
            self._forget_old()
            jobs = list(reversed(self._jobs.values()))
        page: list[Snapshot] = []
        for job in jobs:
            if query.before is not None and job.seq >= query.before:
                continue
            if any(job.labels.get(k) != v for k, v in query.labels):
                continue
            snap = self.snapshot(job)
            if query.statuses is not None and snap.status not in query.statuses:
                continue
            if len(page) == query.limit:
                return page, wire.encode_cursor(page[-1].job.seq)
            page.append(snap)
        return page, None

    def cancel(self, job_id: str) -> V2Job:
        """Idempotent: a waiting job never starts, a running one is interrupted (its
        prompt stopped in ComfyUI), an ended one stays as it ended."""
        job = self.get(job_id)
        with self._lock:
            if job.final is None and job.queued is not None and not job.cancel_requested:
                job.cancel_requested = True
                waiting = self.service.queue.cancel(job.queued)
                log.info("v2 job %s: cancel requested (%s)", job.id,
                         "it was waiting" if waiting else "interrupting it")
        return job

    def _forget_old(self) -> None:
        """Under the lock: ended jobs past their retention, then the oldest ended ones
        over ``max_jobs``."""
        now = self._clock()
        ended = [j for j in self._jobs.values() if j.final is not None]
        over = len(self._jobs) - self.max_jobs
        for job in ended:
            if job.expires <= now or over > 0:
                del self._jobs[job.id]
                over -= 1


def _job_input(workflow: dict[str, Any], extensions: Mapping[str, Any],
               names: Mapping[str, str], assets: Mapping[str, Asset], pin: Pin,
               api_key: Secret | None) -> Callable[[], dict[str, Any]]:
    """The job input, made when the job starts: the assets' bytes read then."""

    def build() -> dict[str, Any]:
        images = []
        for asset_id, asset in assets.items():
            assert asset.hash is not None
            try:
                data = pin.read(asset.hash)
            except OSError as exc:
                raise MissingAsset(f"asset {asset_id}: its bytes cannot be read ({exc})",
                                   hint="upload it again and resubmit the job") from None
            images.append({"name": names[asset_id],
                           "image": base64.b64encode(data).decode("ascii")})
        out: dict[str, Any] = {"workflow": workflow, "images": images, **extensions}
        if api_key:
            out["comfy_org_api_key"] = api_key.reveal()
        return out

    return build


def _final_progress(job: V2Job) -> dict[str, Any] | None:
    if job.final is None or job.final.status != "succeeded":
        return None
    nodes = job.last_progress.nodes_total if isinstance(job.last_progress, NodeProgress) \
        else 0
    return {"value": 1.0, "nodes_done": nodes, "nodes_total": nodes}


# --- the job as JSON --------------------------------------------------------------------


def output_json(out: OutputRef, base_url: str) -> dict[str, Any]:
    """The contract's ``Output``: an asset (its ``id`` serves the bytes)."""
    asset = out.asset
    return {"node_id": out.node_id, "name": out.name, "type": out.kind,
            "content_type": asset.content_type, "size_bytes": asset.size, "id": asset.id,
            "hash": asset.hash,
            "url": asset.remote_url or f"{base_url}{wire.PREFIX}/assets/{asset.id}/content",
            "url_expires_at": wire.iso(asset.expires), "job_id": asset.job_id}


def job_json(snap: Snapshot, base_url: str, *, root_path: str = "") -> dict[str, Any]:
    """The contract's ``Job`` (every key present, null where unknown); ``urls`` are
    host-relative, as the SDK resolves them against the origin it called. Beyond it:
    ``metrics`` carries the worker's timings (``models_wait_ms``, ...), the job's
    ``error`` its reference, hint and details, and ``create_time``/``update_time`` are
    the job list's fields."""
    job, final = snap.job, snap.job.final
    queued = job.queued
    started = job.started if final is not None else (queued.started if queued else None)
    completed = final.completed if final is not None else None
    metrics: dict[str, int | None] = {
        "queue_ms": round((started - job.created) * 1000) if started else None,
        "execution_ms": None}
    if final is not None:
        metrics.update({k: round(v) for k, v in final.timings.items()})
        if metrics["execution_ms"] is None and started is not None:
            metrics["execution_ms"] = round((final.completed - started) * 1000)
    link = f"{root_path}{wire.PREFIX}/jobs/{job.id}"
    return {
        "id": job.id, "status": snap.status, "created_at": wire.iso(job.created),
        "started_at": wire.iso(started) if started else None,
        "completed_at": wire.iso(completed) if completed else None,
        "expires_at": wire.iso(job.expires), "queue_position": snap.queue_position,
        "progress": snap.progress,
        "outputs": [output_json(o, base_url) for o in final.outputs] if final else [],
        "error": wire.job_error_json(final.error) if final and final.error else None,
        "metrics": metrics, "metadata": dict(job.labels),
        "urls": {"self": link, "events": f"{link}/events", "cancel": f"{link}/cancel"},
        "create_time": wire.iso(job.created),
        "update_time": wire.iso(completed or started or job.created),
    }
