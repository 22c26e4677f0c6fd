"""Running one job on ComfyUI: the thin transport loop around :class:`PromptTracker`.

:class:`JobRunner` gets its :class:`~comfy_worker.job.connection.Connection` from a
factory (one per ComfyUI process; a new one after a restart), checks the workflow
(preflight), uploads input images, queues the prompt, feeds websocket events to the
tracker until it says what happened, then collects and delivers the outputs. Decisions
live in the pure modules beside it (tracker, preflight, answers, outputs); this module
only moves bytes and calls them. One job at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from comfy_worker.config import env_name
from comfy_worker.errors import ComfyDied, ComfyError, JobCancelled, JobError, JobTimeout
from comfy_worker.job.answers import execution_error, validation_error
from comfy_worker.job.connection import Connection, ConnectionFactory
from comfy_worker.job.delivery import Delivery
from comfy_worker.job.events import ProgressFn
from comfy_worker.job.outputs import JobResult, OutputFile, collect_output_files
from comfy_worker.job.preflight import (
    Available,
    find_preflight_problems,
    mark_output_nodes,
    preflight_error,
)
from comfy_worker.job.request import JobRequest
from comfy_worker.job.tracker import (
    WS_POLL_S,
    NodeProgress,
    PromptTracker,
    State,
    is_prompt_end,
)

log = logging.getLogger(__name__)

ABORT_GRACE_S = 30.0
"""After /interrupt, how long a prompt may take to stop before ComfyUI is restarted."""
QUEUE_POLL_S = 1.0

Clock = Callable[[], float]


@dataclass
class _Run:
    """One job's state while it runs (what cleanup and errors need)."""

    request: JobRequest
    job_id: str
    progress: ProgressFn | None
    cancel: threading.Event
    started: float
    deadline: float
    queued: float = 0.0
    """When the prompt went to ComfyUI (execution time counts from here)."""
    timings: dict[str, float] = field(default_factory=dict)
    conn: Connection | None = None
    tracker: PromptTracker | None = None
    uploaded: list[str] = field(default_factory=list)
    outputs: list[OutputFile] = field(default_factory=list)

    def mark(self, name: str, since: float, now: float) -> float:
        self.timings[name] = (now - since) * 1000
        return now


class JobRunner:
    """Runs jobs on ComfyUI, one at a time, over connections from ``connect``."""

    def __init__(self, connect: ConnectionFactory, delivery: Delivery, *,
                 available_models: Available | None = None, clock: Clock = time.monotonic,
                 abort_grace: float = ABORT_GRACE_S) -> None:
        self.connect = connect
        self.delivery = delivery
        """Where outputs go (inline or S3); replaceable."""
        self.available_models = available_models or Available({})
        """Models a workflow may name that ComfyUI may not list yet (the locked ones)."""
        self._clock = clock
        self._abort_grace = abort_grace
        self._conn: Connection | None = None
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # --- per-process state --------------------------------------------------------------

    def _connection(self) -> Connection:
        """The connection to the ComfyUI that is up now (a new one after a restart)."""
        if self._conn is None or not self._conn.current():
            if self._conn is not None:
                self._conn.close()
            self._conn, self._info = None, None
            self._conn = self.connect()
        return self._conn

    def _object_info(self, conn: Connection) -> dict[str, Any]:
        if self._info is None:
            self._info = conn.object_info()
        return self._info

    def object_info(self) -> dict[str, Any]:
        """The running ComfyUI's node definitions (read once per ComfyUI process)."""
        with self._lock:
            return self._object_info(self._connection())

    def warm_up(self) -> None:
        """Connect and read ``/object_info`` now (it takes a while), so the first job
        does not pay for it."""
        with self._lock:
            self._object_info(self._connection())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._info = None, None

    # --- the job ----------------------------------------------------------------------------

    def run(self, request: JobRequest, *, job_id: str | None = None,
            progress: ProgressFn | None = None,
            cancel: threading.Event | None = None) -> JobResult:
        """Run one job; raises a :class:`~comfy_worker.errors.WorkerError` on failure."""
        with self._lock:
            now = self._clock()
            run = _Run(request, job_id or uuid.uuid4().hex[:12], progress,
                       cancel or threading.Event(), started=now,
                       deadline=now + request.timeout)
            try:
                self._submit(run)
                return self._conclude(run, self._follow(run))
            except ComfyError as exc:
                raise self._lost_comfy(run, exc) from None
            except JobError as exc:
                log.info("job %s failed: %s", run.job_id, exc.message)
                raise
            finally:
                self._cleanup(run)

    def _submit(self, run: _Run) -> None:
        """Preflight, upload, queue; once more on a restarted ComfyUI if the first one
        died before it took the prompt (nothing ran, so a retry is safe)."""
        for attempt in (1, 2):
            run.conn = conn = self._connection()
            try:
                resp = self._queue_once(run, conn)
                break
            except ComfyError:
                if attempt == 2 or not conn.gone():
                    raise
                log.warning("job %s: ComfyUI went away before the prompt was queued; "
                            "retrying on the restarted ComfyUI", run.job_id)
                run.uploaded.clear()
        if resp.prompt_id is None:
            raise validation_error(resp, run.request.workflow)
        log.info("job %s: queued prompt %s", run.job_id, resp.prompt_id)
        run.tracker = PromptTracker(resp.prompt_id, run.request.workflow, run.deadline)

    def _queue_once(self, run: _Run, conn: Connection) -> Any:
        self._preflight(conn, run.request.workflow)
        t = run.mark("preflight_ms", run.started, self._clock())
        for image in run.request.images:
            run.uploaded.append(conn.upload_image(image.name, image.data))
        run.queued = run.mark("upload_ms", t, self._clock())
        prompt = mark_output_nodes(run.request.workflow, self._object_info(conn), run.job_id)
        key = run.request.comfy_org_api_key  # partner (API) nodes read it from extra_data
        return conn.queue_prompt(prompt, {"api_key_comfy_org": key.reveal()} if key else None)

    def _preflight(self, conn: Connection, workflow: Mapping[str, Any]) -> None:
        info = self._object_info(conn)
        problems = find_preflight_problems(workflow, info, self.available_models)
        stale = {p.class_type for p in problems if p.kind == "missing_model"}
        if stale:
            # Model lists in the cached /object_info may predate files added since.
            fresh = dict(info)
            for class_type in stale:
                fresh.update(conn.object_info(class_type))
            self._info = fresh
            problems = find_preflight_problems(workflow, fresh, self.available_models)
        if problems:
            raise preflight_error(problems)

    def _follow(self, run: _Run) -> State:
        """Feed ComfyUI's events to the tracker until it is no longer RUNNING."""
        conn, tracker = run.conn, run.tracker
        assert conn is not None and tracker is not None
        while True:
            state = tracker.state(now=self._clock(), cancelled=run.cancel.is_set(),
                                  alive=conn.alive())
            if state is not State.RUNNING:
                return state
            try:
                event = conn.next_event(tracker.wait_time(self._clock()))
            except ComfyError:
                if not conn.reconnect():
                    return State.DIED
                if tracker.prompt_id in conn.history(tracker.prompt_id):
                    tracker.finish_from_history()
                continue
            update = tracker.feed(event)
            if update is not None:
                self._report(run, update)

    def _report(self, run: _Run, update: NodeProgress) -> None:
        if run.progress is None:
            return
        try:
            run.progress(update)
        except Exception:  # a progress sink must never fail the job
            log.exception("progress callback failed")

    def _conclude(self, run: _Run, state: State) -> JobResult:
        conn, tracker = run.conn, run.tracker
        assert conn is not None and tracker is not None
        details = [{"prompt_id": tracker.prompt_id}]
        if state is State.CANCELLED:
            self._stop_prompt(conn, tracker.prompt_id)
            raise JobCancelled("job cancelled; ComfyUI was interrupted (its prompt stopped)",
                               details=details)
        if state is State.TIMED_OUT:
            self._stop_prompt(conn, tracker.prompt_id)
            raise JobTimeout(
                f"job timed out after {run.request.timeout:g} s; ComfyUI was interrupted "
                "(its prompt stopped)",
                hint=f'raise "timeout" in the job input or {env_name("job_timeout")}',
                details=[{**details[0], "timeout_s": run.request.timeout,
                          "node_id": tracker.current,
                          "class_type": tracker.current_class_type}])
        if state is State.DIED:
            raise conn.death()
        t = run.mark("execution_ms", run.queued, self._clock())
        if tracker.error is not None:
            raise execution_error(tracker.error)
        if tracker.interrupted:
            raise JobCancelled("ComfyUI interrupted the prompt (someone called /interrupt)",
                               details=details)
        return self._collect(run, conn, tracker.prompt_id, t)

    def _collect(self, run: _Run, conn: Connection, prompt_id: str, since: float
                 ) -> JobResult:
        history = conn.history(prompt_id).get(prompt_id) or {}
        run.outputs = collect_output_files(history.get("outputs") or {})
        wanted = [f for f in run.outputs if f.kind != "temp"]
        blobs = [(f, conn.view(f.filename, f.subfolder, f.kind)) for f in wanted]
        items = list(zip(self.delivery.deliver(run.job_id, blobs), wanted, strict=True))
        now = run.mark("outputs_ms", since, self._clock())
        run.timings["total_ms"] = (now - run.started) * 1000
        return JobResult(images=tuple(item for item, f in items if not f.video),
                         videos=tuple(item for item, f in items if f.video),
                         timings=dict(run.timings))

    # --- failures and cleanup ---------------------------------------------------------------

    def _lost_comfy(self, run: _Run, exc: ComfyError) -> ComfyError:
        """A transport failure during the job: ComfyUI's death if it died, else ``exc``."""
        conn = run.conn
        if not isinstance(exc, ComfyDied) and conn is not None and conn.gone():
            err: ComfyError = conn.death()
        else:
            err = exc
        log.warning("job %s failed: %s", run.job_id, err.message)
        return err

    def _stop_prompt(self, conn: Connection, prompt_id: str) -> None:
        """Stop our prompt (by id: nothing else is touched), so it does not run into the
        next job; if it will not stop within the grace time, kill ComfyUI (its supervisor
        restarts it)."""
        try:
            conn.cancel_prompt(prompt_id)
            if self._prompt_stopped(conn, prompt_id):
                return
        except ComfyError as exc:
            log.warning("interrupting ComfyUI failed: %s", exc.message)
        log.error("prompt %s did not stop within %.0f s of /interrupt; restarting ComfyUI",
                  prompt_id, self._abort_grace)
        conn.kill()

    def _prompt_stopped(self, conn: Connection, prompt_id: str) -> bool:
        deadline = self._clock() + self._abort_grace
        next_poll = self._clock()
        while self._clock() < deadline:
            if not conn.alive():
                return True
            try:
                event = conn.next_event(WS_POLL_S)
            except ComfyError:
                if not conn.reconnect():
                    return True
                event = None
            if is_prompt_end(event, prompt_id):
                return True
            if self._clock() >= next_poll:
                next_poll = self._clock() + QUEUE_POLL_S
                if not conn.prompt_active(prompt_id):
                    return True
        return False

    def _cleanup(self, run: _Run) -> None:
        """Remove this job's uploaded inputs, its output/temp files and its history."""
        conn = run.conn
        if conn is None or not conn.alive():
            return
        targets = [("input", name) for name in run.uploaded]
        targets += [(f.kind, str(PurePosixPath(f.subfolder) / f.filename) if f.subfolder
                     else f.filename) for f in run.outputs]
        for kind, rel in targets:
            _remove_inside(conn.dirs.get(kind), rel)
        if run.tracker is not None:
            try:
                conn.delete_history(run.tracker.prompt_id)
            except ComfyError as exc:
                log.debug("could not delete history of %s: %s", run.tracker.prompt_id,
                          exc.message)


def _remove_inside(root: Path | None, rel: str) -> None:
    """Delete ``root/rel`` if it lies inside ``root`` (names come from ComfyUI)."""
    if root is None:
        return
    path = (root / rel).resolve()
    if path.is_relative_to(root.resolve()):
        path.unlink(missing_ok=True)
