"""RunPod serverless adapter: RunPod job → :meth:`Worker.run_job` → RunPod result.

The worker is started (models synced, ComfyUI ready) *before*
``runpod.serverless.start``, so no job is billed for the boot and none sees a ComfyUI
that is not up yet. The handler is async: the job runs in a thread, and when RunPod
stops the job (cancel, endpoint timeout) the SDK cancels the handler's task; the
handler then sets the job's cancel event, which interrupts ComfyUI and clears its queue,
and waits for that before it gives the cancellation back to the SDK.

The SDK's local modes work unchanged: ``--test_input '{"input": ...}'``, a
``test_input.json`` in the working directory, ``--rp_serve_api --rp_api_port N``.

As a platform (entrypoints/platform.py): it starts the worker before serving (blocking);
it reads no readiness (RunPod sends jobs only once the SDK runs); it serves each RunPod
job through the async handler. SIGTERM stops ComfyUI cleanly (exit 143).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.errors import WorkerError
from comfy_worker.job.events import JobEvent
from comfy_worker.worker import Worker

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
"""Least time between two progress updates sent to RunPod (each is an HTTP request)."""

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ProgressSender = Callable[[dict[str, Any], dict[str, Any]], None]


class Throttle:
    """Lets a call through at most every ``interval`` seconds (the first always)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False


def make_handler(worker: Worker, send_progress: ProgressSender | None, *,
                 refresh_worker: bool = False) -> Handler:
    """The async handler for ``runpod.serverless.start``.

    ``send_progress(job, payload)`` is ``runpod.serverless.progress_update`` on RunPod,
    ``None`` in the SDK's local modes (there is no RunPod to send to). With
    ``refresh_worker`` (``REFRESH_WORKER=true``) every result, failed ones too, carries
    ``"refresh_worker": true``: the runpod SDK takes it out of the output and asks RunPod
    for a fresh worker after the job (``stopPod``), as worker-comfyui does.
    """

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id") or "local")
        cancel = threading.Event()
        progress = None
        if send_progress is not None:
            throttle = Throttle(PROGRESS_INTERVAL_S)

            def progress(update: JobEvent) -> None:
                if throttle.ready():
                    send_progress(job, update.to_json())

        def run() -> dict[str, Any]:
            try:
                out = worker.run_job(job, job_id=job_id, progress=progress,
                                     cancel=cancel).to_json()
            except WorkerError as err:  # RunPod marks a result with "error" as failed
                out = err.to_json()
            return {**out, "refresh_worker": True} if refresh_worker else out

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            log.warning("job %s: stopped by RunPod; interrupting ComfyUI", job_id)
            cancel.set()
            while not task.done():  # let the interrupt and cleanup finish first
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    continue
            raise

    return handler


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through `finally`, which stops ComfyUI cleanly.
    sys.exit(128 + signum)


def main(settings: Settings) -> int:
    """Start the worker, then hand control to the runpod SDK (which reads ``sys.argv``)."""
    import runpod  # imported here: `comfy-worker run/serve` do not need it

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    worker = Worker(settings)
    try:
        worker.start()
        send = runpod.serverless.progress_update if settings.runpod_platform else None
        if settings.refresh_worker:
            log.info("REFRESH_WORKER is set: RunPod gets a fresh worker after each job")
        runpod.serverless.start({"handler": make_handler(
            worker, send, refresh_worker=settings.refresh_worker)})
    finally:
        worker.stop()
    return 0
