"""The worker: ComfyUI boot and model sync at the same time, then one job at a time.

ComfyUI is launched with an ``extra_model_paths.yaml`` computed from the settings and
the lock alone (:func:`comfy_worker.sync.prepare_model_paths`), so it can boot while the
models are still being synced; ComfyUI sees files that appear later without a restart.

Two sync modes (``COMFY_WORKER_SYNC_MODE``): ``on-demand`` (default) is ready when
ComfyUI is up; each job waits only for the models it uses (the locked ones its
workflow names, and the ones it brings), which the model store fetches first, while the
rest of the lock downloads in the background. ``all`` is ready only when every locked
file is present and verified. The worker's state is one
:class:`~comfy_worker.readiness.Readiness` value that every entrypoint reads.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from comfy_worker import sync as model_sync
from comfy_worker.comfy.process import ComfyProcess, LaunchConfig, State, gpu_present
from comfy_worker.comfy.recycle import process_rss, restart_reason
from comfy_worker.config import Settings, env_name
from comfy_worker.errors import (
    ComfyStartError,
    WarmupFailed,
    WorkerError,
    WorkerStartFailed,
    WorkerStarting,
    as_worker_error,
)
from comfy_worker.job import JobRequest, JobResult, JobRunner, parse_job_input
from comfy_worker.job.connection import comfy_connections
from comfy_worker.job.delivery import LazyDelivery
from comfy_worker.job.events import ProgressFn, ReadaheadProgress
from comfy_worker.job.inputs import fetch_url_images, read_job_file
from comfy_worker.job.models import brought_model_error, needed_entries, request_models
from comfy_worker.job.preflight import Available
from comfy_worker.lockfile import Lockfile, allowed_folders, load_lock
from comfy_worker.readahead import memory_budget_now, read_ahead
from comfy_worker.readiness import Phase, Readiness
from comfy_worker.sync import check as sync_check
from comfy_worker.sync.paths import state_dir
from comfy_worker.sync.store import Claim, ModelStore
from comfy_worker.workflow.convert import is_ui_workflow, ui_to_api

log = logging.getLogger(__name__)

class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._own_work_dir = settings.work_dir is None
        self.work_dir = Path(settings.work_dir) if settings.work_dir is not None else \
            Path(tempfile.mkdtemp(prefix="comfy-worker-"))
        self.comfy: ComfyProcess | None = None
        self.paths: model_sync.ModelPaths | None = None
        self.lock = Lockfile()
        self.store: ModelStore | None = None
        self.runner: JobRunner | None = None
        self.timings: dict[str, float] = {}
        """``sync_s``, ``boot_s`` and ``ready_s`` (both done) of :meth:`start`."""
        self._lock = threading.Lock()
        self._state = Readiness(Phase.STARTING, "not started")
        self._started = threading.Event()
        self._warmup_input: object = None
        self._startup_readahead = threading.Event()
        """Set to stop the start-up read-ahead (a job reads its own files first)."""
        self._generation = 0
        self._jobs_done = 0
        """Jobs run on ComfyUI generation ``_generation`` (for the recycle rules)."""

    # --- start-up ---------------------------------------------------------------------------

    def _load_lock(self) -> Lockfile:
        path = self.settings.lock_path
        if not Path(path).exists():
            log.warning("no lock file at %s: no models are synced (ComfyUI still sees the "
                        "model folders)", path)
            return Lockfile()
        return load_lock(path)

    def _prepare(self) -> Lockfile:
        if self.settings.warmup is not None:  # a bad file fails start-up before the boot
            self._warmup_input = read_job_file(self.settings.warmup,
                                               setting=env_name("warmup"))
        lock = self._load_lock()
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
            if self.settings.sync_mode == "all":
                self._run_concurrently(t0, {"sync": self.store.wait_all, "boot": self._boot})
            else:
                self.store.start()  # the whole lock, in the background, lowest priority
                self._start_readahead()
                self._run_concurrently(t0, {"boot": self._boot})
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
                 if sync_check.trusted(volume / e.path, e, state_dir=self.state_dir)]
        if not files:
            return
        budget = memory_budget_now(self.settings.readahead_memory)
        log.info("reading ahead %d verified file(s) on the volume while ComfyUI starts",
                 len(files))
        threading.Thread(target=read_ahead, args=(files,), name="readahead-startup",
                         kwargs={"budget_bytes": budget, "cancel": self._startup_readahead},
                         daemon=True).start()

    def _warm_up(self) -> None:
        """Run COMFY_WORKER_WARMUP's job once, so the first real job finds its models
        loaded; its failure fails start-up."""
        if self._warmup_input is None:
            return
        self._set(Readiness(Phase.STARTING, "running the warm-up job"))
        t0 = time.perf_counter()
        try:
            request = self._parse(self._warmup_input)
            result = self._run(request, job_id="warmup", progress=None, cancel=None)
        except WorkerError as err:
            raise WarmupFailed(
                f"the warm-up job ({env_name('warmup')}={self.settings.warmup}) failed: "
                f"{err.message}", hint=err.hint or "fix the warm-up job, or unset "
                f"{env_name('warmup')}", details=[err.to_json()]) from err
        self.timings["warmup_s"] = time.perf_counter() - t0
        self._jobs_done = 0  # start-up's own job does not count for the recycle rules
        log.info("warm-up job done in %.1f s (%d image(s), %d video(s))",
                 self.timings["warmup_s"], len(result.images), len(result.videos))

    def _run_concurrently(self, t0: float, steps: Mapping[str, Callable[[], None]]) -> None:
        """Run each step in its own thread; return when all are done, or raise the first
        failure as soon as it happens (the others are left to the caller's cleanup)."""
        errors: list[BaseException] = []
        finished: set[str] = set()
        done = threading.Condition()

        def run(name: str, fn: Callable[[], None]) -> None:
            try:
                fn()
                self.timings[f"{name}_s"] = time.perf_counter() - t0
            except BaseException as exc:
                errors.append(exc)
            finally:
                with done:
                    finished.add(name)
                    done.notify_all()

        self._set(Readiness(Phase.STARTING, "syncing models and starting ComfyUI"))
        for name, fn in steps.items():
            threading.Thread(target=run, args=(name, fn), name=f"worker-{name}",
                             daemon=True).start()
        with done:
            while len(finished) < len(steps) and not errors:
                done.wait()
                if not errors:
                    self._set(Readiness(Phase.STARTING, _waiting_for(set(steps) - finished)))
        if errors:
            raise errors[0]

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
        if not state.ready or comfy is None:
            return state
        if comfy.state is State.READY and comfy.alive():
            return state
        if comfy.state is State.STOPPED:
            return replace(state, phase=Phase.STOPPED, reason="stopped")
        if comfy.state is State.STARTING:
            return replace(state, phase=Phase.RECOVERING, reason="restarting ComfyUI")
        return replace(state, phase=Phase.RECOVERING,
                       reason=f"ComfyUI is down: {comfy.last_error or 'exited'}")

    # --- jobs --------------------------------------------------------------------------------

    def run_job(self, job_input: object, *, job_id: str | None = None,
                progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> JobResult:
        """One job. Raises a :class:`WorkerError` for any failure (a bug becomes an
        ``InternalError``, logged with its traceback); the worker stays up."""
        request = self._parse(job_input)
        self._wait_started()
        return self._run(request, job_id=job_id, progress=progress, cancel=cancel)

    def _parse(self, job_input: object) -> JobRequest:
        return parse_job_input(job_input, default_timeout=self.settings.job_timeout,
                               folders=allowed_folders(self.lock.extra_folders))

    def _run(self, request: JobRequest, *, job_id: str | None, progress: ProgressFn | None,
             cancel: threading.Event | None) -> JobResult:
        assert self.runner is not None
        steps: dict[str, float] = {}
        claims: list[Claim] = []
        try:
            request = self._before_run(request, steps)
            self._wait_for_models(request, claims, steps, progress, cancel)
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

    def _wait_for_models(self, request: JobRequest, claims: list[Claim],
                         steps: dict[str, float], progress: ProgressFn | None,
                         cancel: threading.Event | None) -> None:
        """Make the job's models present and verified before its prompt is queued: the
        locked ones its workflow names and the ones it brings, fetched ahead of anything
        else. Waiting does not count against the job's ``timeout``."""
        assert self.store is not None
        brought = request_models(request.models, self.lock)
        locked = needed_entries(request.workflow, self.lock.models)
        locked += tuple(e for e in request.models if e not in brought
                        and e not in locked)
        if not locked and not brought:
            return
        t0 = time.perf_counter()
        if locked:
            claims.append(self.store.ensure(locked))
        if brought:
            claims.append(self.store.ensure(brought, requested=True))
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
        steps["models_wait"] = (time.perf_counter() - t0) * 1000
        self._read_ahead(files, steps, progress, cancel)

    def _read_ahead(self, files: list[Path], steps: dict[str, float],
                    progress: ProgressFn | None, cancel: threading.Event | None) -> None:
        """Read the job's verified model files that are not in memory yet with large
        parallel reads, so ComfyUI's own small reads hit the page cache."""
        if not self.settings.readahead or not files:
            return
        self._startup_readahead.set()  # the job's files go first
        t0 = time.perf_counter()

        def on_bytes(done: int, total: int) -> None:
            if progress is not None:
                progress(ReadaheadProgress(done, total, time.perf_counter() - t0))

        report = read_ahead(files, budget_bytes=memory_budget_now(
            self.settings.readahead_memory), cancel=cancel, on_progress=on_bytes)
        steps["readahead"] = (time.perf_counter() - t0) * 1000
        log.info("read ahead %d file(s), %.1f MB in %.2f s (%d already in memory)",
                 len(report.files_read), report.bytes_read / 1e6, report.seconds,
                 len(report.files_resident))

    def _before_run(self, request: JobRequest, steps: dict[str, float]) -> JobRequest:
        """What a job needs before its prompt goes to ComfyUI: a UI-format workflow
        converted (with the running ComfyUI's node definitions), its input images fetched
        from URLs. Each step's milliseconds go into ``steps`` (the job's timings)."""
        if is_ui_workflow(request.workflow):
            assert self.runner is not None
            t0 = time.perf_counter()
            request = replace(request, workflow=ui_to_api(request.workflow,
                                                          self.runner.object_info()))
            steps["convert_ms"] = (time.perf_counter() - t0) * 1000
        if any(image.url is not None for image in request.images):
            t0 = time.perf_counter()
            images = fetch_url_images(request.images,
                                      max_bytes=self.settings.input_url_max_bytes,
                                      timeout=self.settings.input_url_timeout)
            request = replace(request, images=images)
            steps["inputs_ms"] = (time.perf_counter() - t0) * 1000
        return request

    def _after_job(self) -> None:
        """Give ComfyUI a fresh process when the recycle rules say so (between jobs:
        the next job waits for it)."""
        comfy = self.comfy
        if comfy is None or comfy.state is not State.READY:
            return
        if comfy.generation != self._generation:
            self._generation, self._jobs_done = comfy.generation, 0
        self._jobs_done += 1
        s = self.settings
        rss = process_rss(comfy.pid) if s.max_comfy_rss and comfy.pid is not None else None
        reason = restart_reason(jobs_done=self._jobs_done, rss_bytes=rss,
                                after_jobs=s.restart_after_jobs, max_rss=s.max_comfy_rss)
        if reason is not None:
            try:
                comfy.restart(reason)
            except WorkerError as exc:  # it stopped or died meanwhile: nothing to do
                log.debug("no restart: %s", exc.message)

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

    @property
    def state_dir(self) -> Path:
        return state_dir(self.settings)

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


def launch_config(settings: Settings, work_dir: Path,
                  extra_model_paths: Path | None = None) -> LaunchConfig:
    """How to launch ComfyUI for these settings (COMFYUI_DIR is required)."""
    s = settings
    if s.comfyui_dir is None:
        raise ComfyStartError(f"{env_name('comfyui_dir')} is not set",
                              hint=f"set {env_name('comfyui_dir')} (or --comfyui-dir) to a ComfyUI "
                              "checkout; scripts/setup_comfyui.sh makes one")
    cpu = s.comfyui_cpu if s.comfyui_cpu is not None else not gpu_present()
    return LaunchConfig(
        comfyui_dir=Path(s.comfyui_dir), python=s.comfyui_python, work_dir=work_dir,
        extra_model_paths=extra_model_paths, cpu=cpu, extra_args=tuple(s.comfyui_extra_args),
        boot_timeout=s.boot_timeout,
    )


def _waiting_for(steps: set[str]) -> str:
    if steps == {"boot"}:
        return "starting ComfyUI"
    if steps == {"sync"}:
        return "syncing models"
    return "syncing models and starting ComfyUI"
