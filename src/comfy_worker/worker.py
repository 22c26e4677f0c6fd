"""The worker: start-up (model sync and ComfyUI's boot side by side), readiness, and
ComfyUI's process; each job goes through the pipeline (:mod:`comfy_worker.job.pipeline`).

ComfyUI is launched with an ``extra_model_paths.yaml`` computed from the settings and the
lock alone (:func:`comfy_worker.sync.prepare_model_paths`), so it boots while models still
sync. Sync modes (``COMFY_WORKER_SYNC_MODE``): ``on-demand`` (default) is ready when
ComfyUI is up, each job waiting only for its own models (fetched first) while the rest of
the lock downloads in the background; ``all`` is ready once every locked file is present
and verified. The state is one :class:`~comfy_worker.readiness.Readiness` value.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from comfy_worker import sync as model_sync
from comfy_worker.comfy.process import ComfyProcess, launch_config
from comfy_worker.comfy.recycle import Recycler
from comfy_worker.config import Settings, env_name
from comfy_worker.errors import (
    WarmupFailed,
    WorkerError,
    WorkerStartFailed,
    WorkerStarting,
    as_worker_error,
)
from comfy_worker.job import JobResult, JobRunner
from comfy_worker.job.connection import comfy_connections
from comfy_worker.job.delivery import LazyDelivery
from comfy_worker.job.events import ProgressFn
from comfy_worker.job.inputs import read_job_file
from comfy_worker.job.pipeline import JobPipeline, parse_job
from comfy_worker.job.preflight import Available
from comfy_worker.lockfile import Lockfile, load_lock_if_any
from comfy_worker.readahead import read_ahead_in_background
from comfy_worker.readiness import Phase, Readiness
from comfy_worker.startup import run_side_by_side, waiting_for
from comfy_worker.sync import check as sync_check
from comfy_worker.sync.paths import state_dir
from comfy_worker.sync.store import ModelStore

log = logging.getLogger(__name__)

class Worker:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._own_work_dir = settings.work_dir is None
        self.work_dir = Path(settings.work_dir) if settings.work_dir is not None else \
            Path(tempfile.mkdtemp(prefix="comfy-worker-"))
        self.comfy: ComfyProcess | None = None
        self.paths: model_sync.ModelPaths | None = None
        self.lock = Lockfile()
        self.store: ModelStore | None = None
        self.runner: JobRunner | None = None
        self.recycler: Recycler | None = None
        self.pipeline: JobPipeline | None = None  # the per-job stages, made by start()
        self.timings: dict[str, float] = {}
        """``sync_s``, ``boot_s`` and ``ready_s`` (both done) of :meth:`start`."""
        self._lock = threading.Lock()
        self._state = Readiness(Phase.STARTING, "not started")
        self._started = threading.Event()
        self._warmup_input: object = None
        self._startup_readahead = threading.Event()
        """Set to stop the start-up read-ahead (a job reads its own files first)."""

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        """New settings apply to the next job (its pipeline reads them too)."""
        self._settings = value
        for part in (self.pipeline, self.recycler):
            if part is not None:
                part.settings = value

    # --- start-up ---------------------------------------------------------------------------

    def _prepare(self) -> Lockfile:
        if self.settings.warmup is not None:  # a bad file fails start-up before the boot
            self._warmup_input = read_job_file(self.settings.warmup,
                                               setting=env_name("warmup"))
        lock = load_lock_if_any(self.settings.lock_path)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.paths = model_sync.prepare_model_paths(self.settings, lock, folder_markers=True)
        self.lock = lock
        self.store = ModelStore(self.settings, lock, self.paths,
                                prefetch=self.settings.prefetch,
                                cache_bytes=self.settings.model_cache_bytes)
        self.comfy = ComfyProcess(launch_config(self.settings, self.work_dir / "comfyui",
                                                self.paths.extra_model_paths))
        connect = comfy_connections(self.comfy, uuid.uuid4().hex,
                                    ready_timeout=self.settings.boot_timeout)
        self.runner = JobRunner(connect, LazyDelivery(self.settings),
                                available_models=Available.of(m.path for m in lock.models))
        self.recycler = Recycler(self.comfy, self.settings)
        self.pipeline = JobPipeline(self.settings, lock, runner=self.runner, models=self.store,
                                    after_job=self.recycler.job_done,
                                    first_reads=self._startup_readahead)
        return lock

    def start(self) -> None:
        """Sync models and boot ComfyUI concurrently; return when both are done.

        Raises the first fatal error (a ``SyncError`` or :class:`ComfyStartError`); a
        failure of either stops the other's ComfyUI.
        """
        t0 = time.perf_counter()
        try:
            self._prepare()
            assert self.store is not None
            steps: dict[str, Callable[[], None]] = {"boot": self._boot}
            if self.settings.sync_mode == "all":
                steps["sync"] = self.store.wait_all
            else:
                self.store.start()  # the whole lock, in the background, lowest priority
                self._start_readahead()
            self._set(Readiness(Phase.STARTING, waiting_for(set(steps))))
            run_side_by_side(steps, timings=self.timings, waiting=lambda left: self._set(
                Readiness(Phase.STARTING, waiting_for(left))))
            self._warm_up()
        except BaseException as exc:
            if self.comfy is not None:
                self.comfy.stop()
            self._set(Readiness.failed(as_worker_error(exc)))
            self._started.set()
            raise
        self.timings["ready_s"] = time.perf_counter() - t0
        log.info("worker ready in %.1f s (sync %.1f s, ComfyUI %.1f s)",
                 self.timings["ready_s"], self.timings.get("sync_s", 0.0),
                 self.timings.get("boot_s", 0.0))
        self._set(Readiness(Phase.READY, "ready"))
        self._started.set()

    def _boot(self) -> None:
        assert self.comfy is not None and self.runner is not None
        self.comfy.start()
        self.runner.warm_up()

    def _start_readahead(self) -> None:
        """While ComfyUI boots, read the volume's verified locked files into the page cache
        in lock order, within the memory budget. Stops when the first job reads its own."""
        volume = self.paths.roots[0] if self.paths and self.settings.volume else None
        if not self.settings.readahead or volume is None:
            return
        files = [volume / e.path for e in self.lock.models
                 if sync_check.trusted(volume / e.path, e, state_dir=state_dir(self.settings))]
        if not files:
            return
        log.info("reading ahead %d verified file(s) on the volume while ComfyUI starts",
                 len(files))
        read_ahead_in_background(files, memory=self.settings.readahead_memory,
                                 cancel=self._startup_readahead)

    def _warm_up(self) -> None:
        """Run COMFY_WORKER_WARMUP's job once, so the first real job finds its models
        loaded; its failure fails start-up."""
        if self._warmup_input is None:
            return
        self._set(Readiness(Phase.STARTING, "running the warm-up job"))
        t0 = time.perf_counter()
        assert self.pipeline is not None
        try:
            result = self.pipeline.run(parse_job(self._warmup_input, self.settings, self.lock),
                                       job_id="warmup")
        except WorkerError as err:
            raise WarmupFailed(
                f"the warm-up job ({env_name('warmup')}={self.settings.warmup}) failed: "
                f"{err.message}", hint=err.hint or "fix the warm-up job, or unset "
                f"{env_name('warmup')}", details=[err.to_json()]) from err
        self.timings["warmup_s"] = time.perf_counter() - t0
        if self.recycler is not None:  # start-up's own job does not count
            self.recycler.forget_jobs()
        log.info("warm-up job done in %.1f s (%d image(s), %d video(s))",
                 self.timings["warmup_s"], len(result.images), len(result.videos))

    def _set(self, state: Readiness) -> None:
        with self._lock:
            self._state = state

    # --- state ------------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """The worker's state now; after start-up, it follows ComfyUI's supervisor."""
        with self._lock:
            state = self._state
        if self.store is not None and self.settings.sync_mode == "on-demand":
            state = replace(state, sync=self.store.status().to_json())
        comfy = self.comfy
        if comfy is None:
            return state
        if comfy.ready_seconds is not None:
            state = replace(state, comfyui=comfy.features.to_json())
        return state.following(comfy.state, alive=comfy.alive(), last_error=comfy.last_error)

    # --- jobs --------------------------------------------------------------------------------

    def run_job(self, job_input: object, *, job_id: str | None = None,
                progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> JobResult:
        """One job (its body, any wrapping: :func:`~comfy_worker.job.request.job_input_of`)
        through the pipeline. Raises a :class:`WorkerError` for any failure (a bug becomes
        an ``InternalError``, logged with its traceback); the worker stays up."""
        request = parse_job(job_input, self.settings, self.lock)
        self._wait_started()
        assert self.pipeline is not None
        return self.pipeline.run(request, job_id=job_id, progress=progress, cancel=cancel)

    def _wait_started(self) -> None:
        if not self._started.wait(self.settings.boot_timeout):
            raise WorkerStarting(
                f"worker is still starting after {self.settings.boot_timeout:g} s "
                f"({self.readiness().reason})",
                hint="wait until the worker reports ready (/health), then send the job")
        state = self.readiness()
        if state.phase is Phase.FAILED or self.runner is None:
            raise WorkerStartFailed(f"worker failed to start: {state.reason}",
                                    hint="see the worker's log; fix the cause and restart it")

    def stop(self) -> None:
        self._startup_readahead.set()
        if self.store is not None:  # in-flight downloads stop; complete files are kept
            self.store.close(cancel=True)
        if self.runner is not None:
            self.runner.close()
        if self.comfy is not None:
            self.comfy.stop()
        with self._lock:
            if self._state.ready:
                self._state = Readiness(Phase.STOPPED, "stopped")
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


