"""Files in flight for the model store: one :class:`FileTask` per file being made present
(checked, verified or downloaded), shared by every claim that needs it, in one
:class:`FileTasks` table keyed by the file's path under the models root.

A task is the :class:`~comfy_worker.sync.run.FileWatcher` of its file's
:meth:`FileSync.run <comfy_worker.sync.run.FileSync.run>`: it carries the file's
priority into the shared connection :class:`~comfy_worker.sync.download.Gate` and the
file slots, counts the bytes received, and tells its owner the moment before the bytes
start. Priority: background files run at :data:`BACKGROUND`, claimed ones at :data:`JOB`;
while a job's file runs (or waits), lower downloads give their connections up at their
next block (``Gate.enter``), keeping every byte written.

Threads: a task's own state is under its lock; the table, a task's ``claims``, ``done``,
``result`` and ``error`` change under the owner's condition (the model store's one lock),
which every caller of the table methods holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from comfy_worker.errors import ModelPathConflict
from comfy_worker.lockfile import LockEntry
from comfy_worker.sync.download import Download
from comfy_worker.sync.paths import used_path
from comfy_worker.sync.progress import human_bytes
from comfy_worker.sync.run import FileResult, FileSync, FileWatcher

log = logging.getLogger(__name__)

BACKGROUND = 0
"""Priority of the background sync: the lowest."""
JOB = 10
"""Priority of a file a job waits for."""

BeforeBytes = Callable[["FileTask", Path], None]
"""Called (holding the file's lock) just before ``target`` is downloaded."""


class FileTask(FileWatcher):
    """One file being made present, shared by every claim that needs it."""

    def __init__(self, files: FileSync, entry: LockEntry, *, requested: bool, priority: int,
                 before_download: BeforeBytes) -> None:
        self.entry = entry
        self.requested = requested
        """A job's own model (not in the lock): kept in the request cache."""
        self.claims = 0
        self.done = False
        self.result: FileResult | None = None
        self.error: BaseException | None = None
        self._files = files
        self._before_download = before_download
        self._priority = BACKGROUND
        self._download: Download | None = None
        self._received = 0
        self._stopped = False
        self._lock = threading.Lock()
        self.set_priority(priority)

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def bytes_done(self) -> int:
        return self.entry.size if self.result is not None else max(0, self._received)

    def set_priority(self, value: int) -> None:
        """From the moment a job waits for the file (before its download starts: while it
        is located, or waits for a slot) lower downloads make way (``Gate.enter``)."""
        gate = self._files.downloads.gate
        with self._lock:
            old, self._priority = self._priority, value
            download = self._download
            if old != value and not self.done:
                if old > BACKGROUND:
                    gate.leave(old)
                if value > BACKGROUND:
                    gate.enter(value)
        if download is not None:
            download.priority = value
        self._files.slots.wake()

    def stop(self) -> None:
        """Nobody needs the file any more (a job's own model whose last claim went): its
        download stops at once, its temp file is removed."""
        with self._lock:
            self._stopped = True
            download = self._download
        if download is not None:
            download.cancel()

    def finish(self, result: FileResult | None, error: BaseException | None) -> None:
        """The task ended (under the owner's lock): it no longer holds lower downloads
        back."""
        with self._lock:
            if not self.done and self._priority > BACKGROUND:
                self._files.downloads.gate.leave(self._priority)
            self.done = True
        self.result, self.error = result, error

    # --- FileWatcher --------------------------------------------------------------------

    def priority(self) -> int:
        return self._priority

    def received(self, n: int) -> None:
        with self._lock:
            self._received += n

    def download(self, download: Download | None) -> None:
        with self._lock:
            self._download = download
            value = self._priority
        if download is not None and download.priority != value:
            download.priority = value

    def before_download(self, entry: LockEntry, target: Path) -> None:
        self._before_download(self, target)

    def may_replace(self, target: Path) -> None:
        """A job's own model replaces only a request-cache file (one with a sidecar): any
        other file at its path is the operator's (placed by hand, or another lock's)."""
        if self.requested and not used_path(target).is_file():
            raise ModelPathConflict(
                f'requested model "{self.path}": {target} holds another file, which the '
                "job does not own (not a model a job brought); it is left as it is",
                hint="give the job's model another path, or remove the file there if it "
                "is not needed")

    def stopped(self) -> bool:
        return self._stopped

    def job_source(self) -> bool:
        return self.requested  # a job's own model: its source is the job's, untrusted


class FileTasks:
    """The files in flight, one task per path. Every method but :meth:`run` is called
    holding the owner's lock."""

    def __init__(self, files: FileSync, *, before_download: BeforeBytes) -> None:
        self._files = files
        self._before_download = before_download
        self._tasks: dict[str, FileTask] = {}

    def get(self, path: str) -> FileTask | None:
        return self._tasks.get(path)

    def running(self) -> dict[str, FileTask]:
        return dict(self._tasks)

    def new(self, entry: LockEntry, *, requested: bool, priority: int) -> FileTask:
        task = FileTask(self._files, entry, requested=requested, priority=priority,
                        before_download=self._before_download)
        self._tasks[entry.path] = task
        return task

    def attach(self, path: str) -> FileTask | None:
        """A claim joins the task running for ``path`` (raised to job priority), if any
        (one being stopped does not count: a new task follows it)."""
        task = self._tasks.get(path)
        if task is None or task.stopped():
            return None
        task.claims += 1
        if task.priority() < JOB:
            log.info('"%s": a job needs it: raised to job priority (%s of %s here)',
                     task.path, human_bytes(task.bytes_done), human_bytes(task.entry.size))
            task.set_priority(JOB)
        return task

    def detach(self, task: FileTask) -> None:
        """A claim let go of ``task``; with none left a locked file goes on in the
        background, and a job's own model stops (nobody else wants it)."""
        task.claims -= 1
        if task.claims > 0 or task.done:
            return
        if task.requested:
            task.stop()
        elif task.priority() > BACKGROUND:
            task.set_priority(BACKGROUND)

    def end(self, task: FileTask, result: FileResult | None, error: BaseException | None
            ) -> None:
        """``task`` finished: out of the table (unless a newer task for its path took its
        place), its outcome set for its claims."""
        if self._tasks.get(task.path) is task:
            del self._tasks[task.path]
        task.finish(result, error)

    def run(self, task: FileTask) -> FileResult:
        """Make the task's file present (called without the owner's lock, in the task's
        own thread). Raises what :meth:`FileSync.run` raises."""
        return self._files.run(task.entry, task)
