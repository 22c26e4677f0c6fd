"""The per-job pipeline: a job body → its result, one stage after the other.

    parse → convert → fetch inputs → wait for models → read ahead → run → recycle

:class:`JobPipeline` holds the job policy; each stage is a small method that records its
milliseconds in the job's ``timings`` (``convert_ms``, ``inputs_ms``, ``models_wait_ms``,
``readahead_ms``; the runner adds its own). What it needs from the rest of the worker
comes in as parts (the model store, the runner on ComfyUI, the read-ahead, the recycle
rule), so every stage runs in unit tests with fakes, without a ComfyUI.

A failure of any stage is a :class:`WorkerError` (a bug becomes ``InternalError``, logged
with its traceback); the job's model claims are released and the recycle rule applied
whatever happened, so the worker stays up for the next job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from comfy_worker.config import Settings
from comfy_worker.errors import WorkerError, as_worker_error
from comfy_worker.job.events import ProgressFn, ReadaheadProgress
from comfy_worker.job.inputs import fetch_url_images
from comfy_worker.job.models import brought_model_error, needed_entries, request_models
from comfy_worker.job.outputs import JobResult
from comfy_worker.job.request import JobLimits, JobRequest, parse_job_input
from comfy_worker.lockfile import LockEntry, Lockfile, allowed_folders
from comfy_worker.net.policy import UrlPolicy
from comfy_worker.readahead import ReadaheadReport, memory_budget_now, read_ahead
from comfy_worker.workflow.convert import is_ui_workflow, ui_to_api

log = logging.getLogger(__name__)


# --- the parts a pipeline runs on (the worker's, or a test's fakes) -------------------------


class Claim(Protocol):
    def wait(self, *, timeout: float | None, cancel: threading.Event | None,
             on_progress: ProgressFn | None) -> Mapping[str, Path]: ...

    def release(self) -> None: ...


class Models(Protocol):
    """The model store (:class:`comfy_worker.sync.ModelStore`)."""

    def ensure(self, entries: Sequence[LockEntry], *, requested: bool = False) -> Claim: ...


class Runner(Protocol):
    """The prompt on ComfyUI (:class:`comfy_worker.job.JobRunner`)."""

    def run(self, request: JobRequest, *, job_id: str | None = None,
            progress: ProgressFn | None = None,
            cancel: threading.Event | None = None) -> JobResult: ...

    def object_info(self) -> dict[str, Any]: ...


ImageFetcher = Callable[..., Any]
""":func:`comfy_worker.job.inputs.fetch_url_images`."""
ReadAhead = Callable[..., ReadaheadReport]
""":func:`comfy_worker.readahead.read_ahead`."""


def parse_job(body: object, settings: Settings, lock: Lockfile) -> JobRequest:
    """A job body (any wrapping) → a validated request (pure): the default timeout, the
    limits, the URL policy and the partner-node key from the settings, the model folders
    a job may use from the lock. Raises ``JobInputInvalid`` (``UrlNotAllowed`` for a URL
    the policy refuses)."""
    return parse_job_input(body, default_timeout=settings.job_timeout,
                           folders=allowed_folders(lock.extra_folders),
                           limits=JobLimits.of(settings),
                           default_api_key=settings.comfy_org_api_key)


class JobPipeline:
    """One job at a time through its stages (see the module doc). ``after_job`` runs after
    every job, whatever happened (the recycle rule); ``first_reads`` is set before a job
    reads its files ahead (the start-up read-ahead makes way)."""

    def __init__(self, settings: Settings, lock: Lockfile, *, runner: Runner, models: Models,
                 after_job: Callable[[], None] = lambda: None,
                 first_reads: threading.Event | None = None,
                 fetch_images: ImageFetcher = fetch_url_images,
                 read_files: ReadAhead = read_ahead,
                 memory_budget: Callable[[float], int] = memory_budget_now) -> None:
        self.settings = settings
        self.lock = lock
        self.runner = runner
        self.models = models
        self._after_job = after_job
        self._first_reads = first_reads or threading.Event()
        self._fetch_images = fetch_images
        self._read_files = read_files
        self._memory_budget = memory_budget

    def parse(self, body: object) -> JobRequest:
        return parse_job(body, self.settings, self.lock)

    def run(self, request: JobRequest, *, job_id: str | None = None,
            progress: ProgressFn | None = None,
            cancel: threading.Event | None = None) -> JobResult:
        """Every stage after parsing; raises a :class:`WorkerError` for any failure."""
        steps: dict[str, float] = {}
        claims: list[Claim] = []
        try:
            request = self.convert(request, steps)
            request = self.fetch_inputs(request, steps, cancel)
            files = self.wait_for_models(request, claims, steps, progress, cancel)
            self.read_ahead(files, steps, progress, cancel)
            result = self.runner.run(request, job_id=job_id, progress=progress, cancel=cancel)
            return result.with_steps_before(steps)
        except WorkerError:
            raise
        except Exception as exc:  # a bug must not take the worker down with the job
            log.exception("job %s: internal error", job_id)
            raise as_worker_error(exc) from exc
        finally:
            for claim in claims:
                claim.release()
            self._after_job()

    # --- the stages -------------------------------------------------------------------

    def convert(self, request: JobRequest, steps: dict[str, float]) -> JobRequest:
        """A UI-format workflow → the API prompt, with the running ComfyUI's node
        definitions."""
        if not is_ui_workflow(request.workflow):
            return request
        t0 = time.perf_counter()
        request = replace(request, workflow=ui_to_api(request.workflow,
                                                      self.runner.object_info()))
        steps["convert_ms"] = _ms_since(t0)
        return request

    def fetch_inputs(self, request: JobRequest, steps: dict[str, float],
                     cancel: threading.Event | None = None) -> JobRequest:
        """The job's input images given by URL, fetched under the URL policy. The time it
        takes counts against the job's ``timeout`` (the rest is left for running it); a
        cancel stops the fetches at once."""
        if not any(image.url is not None for image in request.images):
            return request
        t0 = time.perf_counter()
        started = time.monotonic()
        images = self._fetch_images(request.images,
                                    max_bytes=self.settings.input_url_max_bytes,
                                    timeout=self.settings.input_url_timeout,
                                    policy=UrlPolicy.of(self.settings.url_allow),
                                    deadline=started + request.timeout,
                                    job_timeout=request.timeout, cancel=cancel)
        steps["inputs_ms"] = _ms_since(t0)
        left = max(0.001, request.timeout - (time.monotonic() - started))
        return replace(request, images=images, timeout=left)

    def wait_for_models(self, request: JobRequest, claims: list[Claim],
                        steps: dict[str, float], progress: ProgressFn | None,
                        cancel: threading.Event | None) -> list[Path]:
        """The job's models present and verified before its prompt is queued: the locked
        ones its workflow names and the ones it brings, fetched ahead of anything else.
        The claims go into ``claims`` (the caller releases them). Waiting does not count
        against the job's ``timeout``. Returns the files' locations."""
        brought = request_models(request.models, self.lock)
        locked = needed_entries(request.workflow, self.lock.models)
        # A job's entry for a locked path is the locked file: the lock's entry (its
        # source, its size) is fetched, never the job's.
        pinned = (self.lock.entry(e.path) for e in request.models if e not in brought)
        locked += tuple(e for e in pinned if e is not None and e not in locked)
        if not locked and not brought:
            return []
        t0 = time.perf_counter()
        if locked:
            claims.append(self.models.ensure(locked))
        if brought:
            claims.append(self.models.ensure(brought, requested=True))
        deadline = time.monotonic() + self.settings.model_wait_timeout
        files: list[Path] = []
        for claim in claims:
            try:
                found = claim.wait(timeout=max(0.0, deadline - time.monotonic()),
                                   cancel=cancel, on_progress=progress)
            except WorkerError as exc:
                if brought and claim is claims[-1]:
                    raise brought_model_error(exc) from exc
                raise
            files.extend(found.values())
        steps["models_wait_ms"] = _ms_since(t0)
        return files

    def read_ahead(self, files: Sequence[Path], steps: dict[str, float],
                   progress: ProgressFn | None, cancel: threading.Event | None) -> None:
        """The job's model files not in memory yet, read with large parallel reads, so
        ComfyUI's own small reads hit the page cache."""
        if not self.settings.readahead or not files:
            return
        self._first_reads.set()  # the job's files go first
        t0 = time.perf_counter()

        def on_bytes(done: int, total: int) -> None:
            if progress is not None:
                progress(ReadaheadProgress(done, total, time.perf_counter() - t0))

        report = self._read_files(
            list(files), budget_bytes=self._memory_budget(self.settings.readahead_memory),
            cancel=cancel, on_progress=on_bytes)
        steps["readahead_ms"] = _ms_since(t0)
        log.info("read ahead %d file(s), %.1f MB in %.2f s (%d already in memory)",
                 len(report.files_read), report.bytes_read / 1e6, report.seconds,
                 len(report.files_resident))


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
