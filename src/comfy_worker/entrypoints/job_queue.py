"""Jobs one at a time, in arrival order, behind a Worker started in the background.

:class:`JobQueue` runs jobs on one thread from a FIFO queue and keeps a bounded number of
finished results; :class:`ApiService` starts the Worker in the background, answers
health, and feeds the queue. Used by the HTTP API (``http_api.py``) and, through it, the
Vast adapter. No HTTP here.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from comfy_worker.errors import (
    JobCancelled,
    QueueFull,
    ShuttingDown,
    WorkerError,
    as_worker_error,
)
from comfy_worker.job.events import JobEvent
from comfy_worker.readiness import Phase, Readiness

log = logging.getLogger(__name__)

DEFAULT_MAX_FINISHED = 100
DEFAULT_MAX_FINISHED_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_QUEUED = 1000
SHUTTING_DOWN = "the server is shutting down"
CANCELLED = "cancelled: the client went away before the job ran"


class Result(Protocol):
    """A job's success value (:class:`comfy_worker.job.JobResult`)."""

    def to_json(self) -> dict[str, Any]: ...


Outcome = Result | WorkerError
"""What a finished job holds: its result, or the error it failed with."""


class WorkerLike(Protocol):
    """What the API needs from :class:`comfy_worker.worker.Worker` (docs/ARCHITECTURE.md)."""

    def start(self) -> None: ...

    def readiness(self) -> Readiness: ...

    def run_job(
        self,
        job_input: object,
        *,
        job_id: str | None = None,
        progress: Callable[[Any], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Result: ...

    def stop(self) -> None: ...


# --- the job queue -------------------------------------------------------------------


JobInput = dict[str, Any] | str | Callable[[], object]
"""A job body; or a function that makes it when the job starts (the v2 API reads its
assets' bytes only then, so a waiting job holds no copy of them)."""


@dataclass
class Job:
    id: str
    input: JobInput | None = field(repr=False)
    """Dropped once the job ran (it may carry a partner-node key)."""
    keep: bool = True
    """Keep the output for ``GET /status`` (async jobs); sync jobs hand it back directly."""
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    outcome: Outcome | None = None
    progress: JobEvent | None = None
    size: int = 0
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set when nobody waits for the result any more: skipped if queued, interrupted if
    running (the Worker gets it as ``cancel``)."""
    future: concurrent.futures.Future[Outcome] = field(
        default_factory=concurrent.futures.Future, repr=False
    )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.progress is not None and self.status == "running":
            body["progress"] = self.progress.to_json()
        if self.outcome is not None:
            body["output"] = self.outcome.to_json()
        for name in ("created", "started", "finished"):
            if (value := getattr(self, name)) is not None:
                body[name] = round(value, 3)
        return body


RunJob = Callable[[Job], Result]
class JobQueue:
    """One worker thread runs jobs from a FIFO queue, in the order they were submitted.

    Finished jobs that are kept for ``GET /status`` are evicted oldest first once more
    than ``max_finished`` of them, or more than ``max_finished_bytes`` of their JSON
    outputs, are held.
    """

    def __init__(
        self,
        run: RunJob,
        *,
        max_finished: int = DEFAULT_MAX_FINISHED,
        max_finished_bytes: int = DEFAULT_MAX_FINISHED_BYTES,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._run = run
        self._max_finished = max_finished
        self._max_finished_bytes = max_finished_bytes
        self._max_queued = max_queued
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._pending: OrderedDict[str, Job] = OrderedDict()
        """Jobs in the queue, in arrival order."""
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._finished_bytes = 0
        self._waiting = 0
        self._stopping = threading.Event()
        self._running: Job | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="job-queue", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Cancel the running job, fail the waiting ones, end the thread."""
        with self._lock:  # a submit() either lands before the sentinel or sees the flag
            self._stopping.set()
            if self._running is not None:
                self._running.cancel.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job_input: JobInput, *, keep: bool = True,
               job_id: str | None = None) -> Job:
        """Queue a job (``job_id``: the caller's own unique id, else a new one)."""
        job = Job(id=job_id or uuid.uuid4().hex, input=job_input, keep=keep)
        with self._lock:
            if self._stopping.is_set():
                raise ShuttingDown(SHUTTING_DOWN, hint="send the job to another worker")
            if self._waiting >= self._max_queued:
                raise QueueFull(f"queue full: {self._waiting} jobs are already waiting",
                                hint="retry later, or send the job to another worker")
            if job.id in self._jobs:
                raise ValueError(f"job id {job.id!r} is already queued")
            self._waiting += 1
            self._jobs[job.id] = job
            self._pending[job.id] = job
            self._queue.put(job)
        return job

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 after it, ...; None unless ``job`` waits (jobs
        whose cancel is set are skipped: they never run)."""
        with self._lock:
            if job.id not in self._pending or job.cancel.is_set():
                return None
            ahead = 0
            for other in self._pending.values():
                if other is job:
                    return ahead + 1
                if not other.cancel.is_set():
                    ahead += 1
        return None

    def cancel(self, job: Job) -> bool:
        """Ask ``job`` to stop, atomically with the queue's start of a job: True when it
        will never start (it waited), False when it already runs (it is interrupted) or
        ended."""
        with self._lock:
            job.cancel.set()
            return job.started is None and job.finished is None

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._stopping.is_set():
                if job is not None:
                    with self._lock:
                        self._waiting -= 1
                        self._pending.pop(job.id, None)
                    self._finish(job, ShuttingDown(SHUTTING_DOWN))
                self._fail_waiting(SHUTTING_DOWN)
                return
            with self._lock:
                self._waiting -= 1
                self._pending.pop(job.id, None)
                if job.cancel.is_set():
                    job.status = "cancelled"
                else:
                    job.status = "running"
                    job.started = time.time()
                    self._running = job
            if job.status == "cancelled":
                self._finish(job, JobCancelled(CANCELLED))
                continue
            outcome: Outcome
            try:
                outcome = self._run(job)
            except WorkerError as exc:
                outcome = exc
            except Exception as exc:  # never lose the job, whatever the worker does
                log.exception("job %s raised", job.id)
                outcome = as_worker_error(exc)
            with self._lock:
                self._running = None
            self._finish(job, outcome)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            job.input = None
            job.outcome = outcome
            job.status = "failed" if isinstance(outcome, WorkerError) else "completed"
            job.finished = time.time()
            if job.keep:
                job.size = len(json.dumps(outcome.to_json(), default=str))
                self._finished[job.id] = job.size
                self._finished_bytes += job.size
                self._evict()
            else:
                self._jobs.pop(job.id, None)
        job.future.set_result(outcome)

    def _evict(self) -> None:
        while len(self._finished) > 1 and (
            len(self._finished) > self._max_finished
            or self._finished_bytes > self._max_finished_bytes
        ):
            old_id, size = self._finished.popitem(last=False)
            self._finished_bytes -= size
            self._jobs.pop(old_id, None)

    def _fail_waiting(self, reason: str) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                with self._lock:
                    self._waiting -= 1
                    self._pending.pop(job.id, None)
                self._finish(job, ShuttingDown(reason))


# --- the service: start-up in the background, jobs through the queue -------------------

Listener = Callable[[Readiness], None]
"""Called once start-up is over: with the READY readiness (once it would answer 200) or
with the FAILED one."""


class ApiService:
    """A Worker behind a :class:`JobQueue`, started in the background."""

    def __init__(
        self,
        worker: WorkerLike,
        *,
        listener: Listener | None = None,
        max_finished: int = DEFAULT_MAX_FINISHED,
        max_finished_bytes: int = DEFAULT_MAX_FINISHED_BYTES,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.worker = worker
        self._listener = listener
        self._closing = threading.Event()
        self.queue = JobQueue(
            self._run_job,
            max_finished=max_finished,
            max_finished_bytes=max_finished_bytes,
            max_queued=max_queued,
        )
        self._failure: Readiness | None = None
        self._thread: threading.Thread | None = None

    def start_background(self) -> None:
        self.queue.start()
        self._thread = threading.Thread(target=self._start, name="worker-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.worker.start()
        except Exception as exc:
            self._failure = Readiness.failed(as_worker_error(exc))
            log.error("%s", self._failure.reason)
            self._notify(self._failure)
            return
        while not (state := self.health()).ready:  # tell the listener once /health is 200
            if self._closing.wait(0.1) or state.phase in (Phase.FAILED, Phase.STOPPED):
                return
        log.info("worker ready")
        self._notify(state)

    def _notify(self, state: Readiness) -> None:
        if self._listener is not None:
            try:
                self._listener(state)
            except Exception:
                log.exception("start-up listener failed on %s", state.phase.value)

    @property
    def failed(self) -> bool:
        """Start-up failed."""
        return self._failure is not None

    def health(self) -> Readiness:
        return self._failure or self.worker.readiness()

    def _run_job(self, job: Job) -> Result:
        def progress(update: JobEvent) -> None:
            job.progress = update

        body = job.input() if callable(job.input) else job.input
        return self.worker.run_job(body, job_id=job.id, progress=progress, cancel=job.cancel)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._closing.set()
        self.queue.stop(timeout)
        try:
            self.worker.stop()
        except Exception:
            log.exception("worker.stop() failed")
