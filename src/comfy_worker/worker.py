"""The worker: model sync and ComfyUI boot at the same time, then one job at a time.

ComfyUI is launched with an ``extra_model_paths.yaml`` computed from the settings alone
(:func:`comfy_worker.sync.model_roots`), so it can boot while the models are still
being synced; ComfyUI sees files that appear later without a restart. The worker is
ready when both are done.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from comfy_worker import sync as model_sync
from comfy_worker.comfy.process import ComfyProcess, LaunchConfig, State, gpu_present
from comfy_worker.config import Settings
from comfy_worker.errors import ComfyDied, ComfyStartError, JobError, WorkerError
from comfy_worker.job import JobRunner, error_response, parse_job_input
from comfy_worker.lockfile import Lockfile, load_lock

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._own_work_dir = settings.work_dir is None
        self.work_dir = Path(settings.work_dir) if settings.work_dir is not None else \
            Path(tempfile.mkdtemp(prefix="comfy-worker-"))
        self.comfy: ComfyProcess | None = None
        self.runner: JobRunner | None = None
        self.sync_report: Any = None
        self.timings: dict[str, float] = {}
        """``sync_s``, ``boot_s`` and ``ready_s`` (both done) of :meth:`start`."""
        self._lock = threading.Lock()
        self._phase = "not started"
        self._error: str | None = None
        self._started = threading.Event()

    # --- start-up ---------------------------------------------------------------------------

    def _load_lock(self) -> Lockfile:
        path = self.settings.lock_path
        if not Path(path).exists():
            log.warning("no lock file at %s: no models are synced (ComfyUI still sees the "
                        "model folders)", path)
            return Lockfile()
        return load_lock(path)

    def _launch_config(self, extra_model_paths: Path) -> LaunchConfig:
        s = self.settings
        if s.comfyui_dir is None:
            raise ComfyStartError("COMFYUI_DIR is not set",
                                  hint="set COMFYUI_DIR (or --comfyui-dir) to a ComfyUI "
                                  "checkout; scripts/setup_comfyui.sh makes one")
        cpu = s.comfyui_cpu if s.comfyui_cpu is not None else not gpu_present()
        return LaunchConfig(
            comfyui_dir=Path(s.comfyui_dir), python=s.comfyui_python,
            work_dir=self.work_dir / "comfyui", extra_model_paths=extra_model_paths,
            cpu=cpu, extra_args=tuple(s.comfyui_extra_args), boot_timeout=s.boot_timeout,
        )

    def start(self) -> None:
        """Sync models and boot ComfyUI concurrently; return when both are done.

        Raises the first fatal error (a ``SyncError`` or :class:`ComfyStartError`); a
        failure of either stops the other's ComfyUI.
        """
        t0 = time.perf_counter()
        try:
            lock = self._load_lock()
            roots = model_sync.model_roots(self.settings)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            yaml_path = model_sync.write_extra_model_paths(
                roots, lock.folders, self.work_dir / "extra_model_paths.yaml")
            self.comfy = ComfyProcess(self._launch_config(Path(yaml_path)))
            self.runner = JobRunner(self.settings, self.comfy, [m.path for m in lock.models])
        except WorkerError as exc:
            self._fail(exc)
            raise

        errors: list[BaseException] = []
        done = threading.Condition()
        finished: set[str] = set()

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

        def boot() -> None:
            assert self.comfy is not None and self.runner is not None
            self.comfy.start()
            self.runner.warm_up()

        def sync() -> None:
            self.sync_report = model_sync.sync_models(self.settings, lock=lock)

        self._set_phase("syncing models and starting ComfyUI")
        threads = [threading.Thread(target=run, args=(name, fn), name=f"worker-{name}",
                                    daemon=True)
                   for name, fn in (("sync", sync), ("boot", boot))]
        for t in threads:
            t.start()
        with done:
            while len(finished) < 2 and not errors:
                done.wait()
                if "sync" in finished and "boot" not in finished and not errors:
                    self._set_phase("starting ComfyUI")
                elif "boot" in finished and "sync" not in finished and not errors:
                    self._set_phase("syncing models")
        if errors:
            exc = errors[0]
            if self.comfy is not None:
                self.comfy.stop()
            self._fail(exc)
            raise exc
        self.timings["ready_s"] = time.perf_counter() - t0
        log.info("worker ready in %.1f s (sync %.1f s, ComfyUI %.1f s)",
                 self.timings["ready_s"], self.timings.get("sync_s", 0.0),
                 self.timings.get("boot_s", 0.0))
        self._set_phase("ready")
        self._started.set()

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def _fail(self, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._error = message
            self._phase = "failed"
        self._started.set()

    # --- state ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            phase, error = self._phase, self._error
        if error is not None:
            return False, f"start-up failed: {error}"
        if phase != "ready":
            return False, phase
        comfy = self.comfy
        if comfy is None:
            return False, "not started"
        state = comfy.state
        if state is State.READY and comfy.alive():
            return True, "ready"
        if state is State.STOPPED:
            return False, "stopped"
        if state is State.STARTING:
            return False, "restarting ComfyUI"
        return False, f"ComfyUI is down: {comfy.last_error or 'exited'}"

    # --- jobs --------------------------------------------------------------------------------

    def run_job(self, job_input: Mapping[str, Any], *, job_id: str | None = None,
                progress: Callable[[dict[str, Any]], None] | None = None,
                cancel: threading.Event | None = None) -> dict[str, Any]:
        """One job; never raises for the job's own failure (returns ``{"error", ...}``)."""
        try:
            request = parse_job_input(job_input, default_timeout=self.settings.job_timeout)
        except JobError as exc:
            return error_response(exc)
        if not self._started.wait(self.settings.boot_timeout):
            return error_response(ComfyDied("worker is still starting",
                                            hint="wait for readiness before sending jobs"))
        with self._lock:
            error = self._error
        if error is not None or self.runner is None:
            return error_response(ComfyDied(f"worker failed to start: {error}"))
        try:
            return self.runner.run(request, job_id=job_id, progress=progress, cancel=cancel)
        except Exception as exc:  # a bug must not take the worker down with the job
            log.error("job %s: internal error\n%s", job_id, traceback.format_exc())
            return {"error": f"internal error: {type(exc).__name__}: {exc}", "details": [],
                    "reference": "internal-error"}

    def stop(self) -> None:
        if self.comfy is not None:
            self.comfy.stop()
        with self._lock:
            if self._phase == "ready":
                self._phase = "stopped"
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
