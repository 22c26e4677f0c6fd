"""``ModelStore``: models on demand, so a worker serves while its lock still syncs.

One store per worker, thread-safe, built on the per-file path of ``sync_models``
(:class:`~comfy_worker.sync.run.FileSync`), so every guarantee of a sync holds: a file
exists under its final name only once its sha256 matched; a failed download leaves no
temp file; a per-file ``flock`` makes workers on one volume download a file once; the
volume is used in place and downloads go into it when writable; records make a warm
start read nothing.

* :meth:`ModelStore.start` checks every locked file once (stat + record, no byte read)
  and, with ``prefetch``, downloads the missing ones in the background at the lowest
  priority.
* :meth:`ModelStore.ensure` is a job asking for its files: a :class:`Claim`. A file
  present and vouched for is done at once; one already downloading (in the background
  or for another job) is shared and raised to job priority; any other starts at once,
  at job priority; one that failed before is tried again.
* ``requested=True``: a job's own models (lock-entry shaped, sha256-pinned), kept in the
  request cache (:mod:`comfy_worker.sync.cache`) under ``cache_bytes``.

Threads: ``store-prefetch`` checks the lock, then feeds the missing files to
``2 x settings.jobs`` ``store-bg`` threads (``settings.jobs`` downloading at a time, the
others locating their next file); a file a claim starts runs in a ``store-file`` thread
of its own; each download runs its own connection threads.

Priority: background files download at :data:`BACKGROUND`, claimed ones at :data:`JOB`.
All downloads draw connection slots from one ``Gate``: while a job's file downloads, the
background ones give their slots up at their next block (1 MiB) and wait, keeping every
byte written; a background file a job asks for is raised in place, not restarted. A
claimed file takes no download slot, so it never queues behind background files.

Sharing is keyed by the file's path under the models root (unique in a lock; a
requested file naming a locked path must pin the same sha256): one task per path, and
every claim of that path waits on it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from comfy_worker.config import Settings, env_name
from comfy_worker.errors import (
    JobCancelled,
    JobInputInvalid,
    LockfileError,
    ModelCacheFull,
    ModelPathConflict,
    ModelWaitTimeout,
    ShuttingDown,
    WorkerError,
)
from comfy_worker.job.events import ProgressFn, WaitProgress
from comfy_worker.lockfile import LockEntry, Lockfile, allowed_folders, validate_model_path
from comfy_worker.sync import cache, fetch
from comfy_worker.sync.download import Download
from comfy_worker.sync.paths import ModelPaths
from comfy_worker.sync.progress import Progress, human_bytes
from comfy_worker.sync.run import FileResult, FileSync, FileWatcher, SyncReport

log = logging.getLogger(__name__)

BACKGROUND = 0
"""Priority of the background sync: the lowest."""
JOB = 10
"""Priority of a file a job waits for."""

WAIT_TIMEOUT_SETTING = env_name("model_wait_timeout")
CACHE_BYTES_SETTING = env_name("model_cache_bytes")
_PROGRESS_EVERY = 1.0
_POLL = 0.1
_LOG_EVERY = 30.0


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Downloading:
    """A file being made present now."""

    path: str
    bytes_done: int
    bytes_total: int
    priority: str
    """``job`` (a job waits for it) or ``background``."""
    requested: bool
    """A job's own model (not in the lock)."""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "priority": self.priority,
                "requested": self.requested}


@dataclass(frozen=True)
class Failed:
    """A locked file whose last attempt failed."""

    path: str
    reference: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "reference": self.reference, "error": self.error}


@dataclass(frozen=True)
class StoreStatus:
    """The lock's files for ``/health``: present files count as done."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    downloading: tuple[Downloading, ...]
    failed: tuple[Failed, ...]
    checked: bool
    """Every locked file was looked at once (before that, present files may not count)."""
    prefetch: bool

    @property
    def complete(self) -> bool:
        return self.files_done == self.files_total

    def to_json(self) -> dict[str, Any]:
        return {"files_done": self.files_done, "files_total": self.files_total,
                "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "complete": self.complete, "checked": self.checked,
                "prefetch": self.prefetch,
                "downloading": [d.to_json() for d in self.downloading],
                "failed": [f.to_json() for f in self.failed]}


# --- one file being made present ------------------------------------------------------------


class _Task(FileWatcher):
    """One file being made present (checked, verified or downloaded), shared by every
    claim that needs it. ``claims``, ``done``, ``result`` and ``error`` change under
    the store's lock."""

    def __init__(self, store: ModelStore, entry: LockEntry, *, requested: bool,
                 priority: int) -> None:
        self.store = store
        self.entry = entry
        self.requested = requested
        self.claims = 0
        self.done = False
        self.result: FileResult | None = None
        self.error: BaseException | None = None
        self._priority = BACKGROUND
        self._download: Download | None = None
        self._received = 0
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
        gate = self.store._files.downloads.gate
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
        self.store._files.slots.wake()

    def finish(self) -> None:
        """The task ended: it no longer holds lower downloads back."""
        with self._lock:
            if not self.done and self._priority > BACKGROUND:
                self.store._files.downloads.gate.leave(self._priority)
            self.done = True

    # FileWatcher

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
        self.store._before_download(self, target)


@dataclass
class _ClaimFile:
    entry: LockEntry
    requested: bool
    task: _Task | None = None
    result: FileResult | None = None


# --- the store ----------------------------------------------------------------------------


class ModelStore:
    """Models on demand for one worker. See the module doc."""

    def __init__(self, settings: Settings, lock: Lockfile, paths: ModelPaths, *,
                 prefetch: bool = True, cache_bytes: int = cache.DEFAULT_CACHE_BYTES,
                 progress: bool | None = None) -> None:
        self.settings = settings
        self.lock = lock
        self.paths = paths
        self.prefetch = prefetch
        self.cache_bytes = cache_bytes
        self._bar = progress is True
        self._files = FileSync(settings, list(paths.roots), Progress(0, bar=False))
        self._locked = {m.path: m for m in lock.models}
        self._folders = allowed_folders(lock.extra_folders)
        self._cond = threading.Condition()
        self._tasks: dict[str, _Task] = {}
        self._present: dict[str, FileResult] = {}
        """Locked files found or made present (the status counts them done)."""
        self._failed: dict[str, tuple[int, BaseException]] = {}
        """path -> (failure number, error) of locked files whose last attempt failed."""
        self._failures = itertools.count(1)
        self._last_failure = 0
        self._uses: dict[str, int] = {}
        """path -> live claims + running request tasks: never evicted meanwhile."""
        self._use_sha: dict[str, str] = {}
        self._use_locks: dict[str, cache.UseLock] = {}
        self._pending: dict[str, int] = {}
        """Request files downloading now -> their size (counted against the cap)."""
        self._evicting = threading.Lock()
        self._queue: deque[LockEntry] = deque()
        self._background_threads = 0
        self._threads: set[threading.Thread] = set()
        self._started = False
        self._checked = False
        self._closing = False
        self._shutdown: ShuttingDown | None = None
        self._names = itertools.count(1)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Check every locked file once (no byte read) and, with ``prefetch``, download
        the missing ones in the background at the lowest priority. Returns at once."""
        with self._cond:
            if self._started or self._closing:
                return
            self._started = True
        self._spawn(self._check_lock, "store-prefetch")

    def close(self, *, cancel: bool = True, timeout: float = 10.0) -> None:
        """Stop. ``cancel``: in-flight downloads stop at once (their temp files removed;
        files already complete stay, with their records) and waiting claims raise
        :class:`ShuttingDown`. Otherwise no new file starts, and in-flight ones finish
        (this waits for them). Takes no new claims either way."""
        with self._cond:
            self._closing = True
            if cancel and self._shutdown is None:
                self._shutdown = ShuttingDown(
                    "model downloads stopped: the worker is shutting down",
                    hint="retry the job on another worker")
            self._queue.clear()
            self._cond.notify_all()
        if cancel:
            self._files.downloads.cancel()
        deadline = time.monotonic() + timeout if cancel else None
        for thread in list(self._threads):
            if thread is threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s still busy after close (a file check or a wait for another "
                            "worker's download); leaving it", thread.name)
        with self._cond:
            locks = list(self._use_locks.values())
            self._use_locks.clear()
        for use in locks:
            use.close()
        self._files.progress.stop()

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- claims -------------------------------------------------------------------------

    def ensure(self, entries: Sequence[LockEntry], *, requested: bool = False) -> Claim:
        """Ask for ``entries`` now, at job priority; wait with :meth:`Claim.wait`.

        ``requested``: the job brought them (not in the lock): fetched and verified the
        same way, kept in the request cache. Raises :class:`ShuttingDown` after
        :meth:`close`, :class:`ModelPathConflict` for a path that holds other bytes for
        the lock or for a live claim, :class:`JobInputInvalid` for an unsafe path.
        """
        files: dict[str, _ClaimFile] = {}
        for entry in entries:
            wanted = self._classify(entry, requested)
            seen = files.get(wanted.entry.path)
            if seen is not None and seen.entry.sha256 != wanted.entry.sha256:
                raise ModelPathConflict(
                    f'"{entry.path}" is asked for twice with different sha256 '
                    f"({seen.entry.sha256[:12]}..., {entry.sha256[:12]}...)",
                    hint="one path holds one file: give each model its own path")
            files[wanted.entry.path] = wanted
        with self._cond:
            self._raise_if_closed()
            for f in files.values():
                self._check_conflict(f)
            for f in files.values():
                self._use(f.entry)
        claim = Claim(self, files)
        try:
            for f in files.values():
                self._resolve(f)
        except BaseException:
            claim.release()
            raise
        return claim

    def _classify(self, entry: LockEntry, requested: bool) -> _ClaimFile:
        locked = self._locked.get(entry.path)
        if not requested:
            return _ClaimFile(entry, requested=False)
        try:
            validate_model_path(entry.path, where="requested model", folders=self._folders)
        except LockfileError as exc:
            raise JobInputInvalid(exc.message, hint=exc.hint) from None
        if locked is None:
            return _ClaimFile(entry, requested=True)
        if locked.sha256 != entry.sha256:
            raise ModelPathConflict(
                f'requested model "{entry.path}" (sha256 {entry.sha256}) names a locked '
                f"file with other bytes (sha256 {locked.sha256})",
                hint="give the requested model another path, or leave it out to use the "
                "locked file")
        return _ClaimFile(locked, requested=False)  # the locked file itself

    def _check_conflict(self, f: _ClaimFile) -> None:
        """Under the lock: another live use of the path pins other bytes."""
        path, sha = f.entry.path, f.entry.sha256
        other = self._use_sha.get(path) if self._uses.get(path) else None
        task = self._tasks.get(path)
        if task is not None and task.entry.sha256 != sha:
            other = task.entry.sha256
        if other is not None and other != sha:
            raise ModelPathConflict(
                f'"{path}" (sha256 {sha}) is in use with other bytes (sha256 {other}) by '
                "a job running now",
                hint="give each version of a model its own path, e.g. with its hash in "
                "the file name")

    def _use(self, entry: LockEntry) -> None:
        self._uses[entry.path] = self._uses.get(entry.path, 0) + 1
        self._use_sha[entry.path] = entry.sha256

    def _unuse(self, path: str) -> tuple[cache.UseLock | None, bool]:
        """Under the lock: one use of ``path`` ended; (its use lock to close, whether it
        was the last use)."""
        left = self._uses.get(path, 0) - 1
        if left > 0:
            self._uses[path] = left
            return None, False
        self._uses.pop(path, None)
        self._use_sha.pop(path, None)
        return self._use_locks.pop(path, None), True

    def _end_use(self, path: str) -> None:
        with self._cond:
            use, last = self._unuse(path)
        self._after_use(path, use, last)

    def _after_use(self, path: str, use: cache.UseLock | None, last: bool) -> None:
        """Outside the lock: let the sidecar go; after the last use of a request file
        that never arrived, remove its sidecar."""
        if use is not None:
            use.close()
        if last:
            cache.remove_orphan_sidecar(self._files.dest_root / path)

    def _in_use(self, path: str) -> bool:
        with self._cond:
            return self._uses.get(path, 0) > 0 or path in self._locked

    def _hold_request_file(self, entry: LockEntry, target: Path, *, create: bool) -> None:
        """Hold ``target``'s sidecar (shared flock) while ``entry`` is in use here, so no
        worker evicts it. Never called holding the store's lock."""
        with self._cond:
            if entry.path in self._use_locks:
                return
        use = cache.UseLock.take(target, create=create, sha256=entry.sha256, size=entry.size)
        if use is None:
            return
        with self._cond:
            if entry.path not in self._use_locks and self._uses.get(entry.path, 0) > 0:
                self._use_locks[entry.path] = use
                return
        use.close()

    def _resolve(self, f: _ClaimFile) -> None:
        """Make ``f`` done at once (present and vouched for), or attach it to its task."""
        entry = f.entry
        if f.requested:
            self._hold_request_file(entry, self._files.dest_root / entry.path, create=False)
        with self._cond:
            if self._attach(f):
                return
        root = self._trusted_root(entry)
        if root is not None:
            f.result = self._files.result(entry, root)
            self._found(f.result, requested=f.requested)
            return
        with self._cond:
            self._raise_if_closed()
            if self._attach(f):
                return
            task = self._new_task(entry, requested=f.requested, priority=JOB)
            self._attach(f)
        self._spawn(lambda: self._run_task(task), f"store-file-{next(self._names)}")

    def _attach(self, f: _ClaimFile) -> bool:
        """Under the lock: join the task running for ``f``'s path, raised to job priority."""
        task = self._tasks.get(f.entry.path)
        if task is None:
            return False
        task.claims += 1
        f.task = task
        if task.priority() < JOB:
            log.info('"%s": a job needs it: raised to job priority (%s of %s here)',
                     task.path, human_bytes(task.bytes_done), human_bytes(task.entry.size))
            task.set_priority(JOB)
        return True

    def _detach(self, task: _Task) -> None:
        """Under the lock: a claim let go of ``task``; with none left it goes on in the
        background."""
        task.claims -= 1
        if task.claims <= 0 and not task.done and task.priority() > BACKGROUND:
            task.set_priority(BACKGROUND)

    def _found(self, result: FileResult, *, requested: bool) -> None:
        """A file is present and vouched for at ``result.location``."""
        if requested:
            cache.touch(result.location)
            return
        if result.path in self._locked:
            cache.unmark(result.location)  # locked here: no worker may evict it
            with self._cond:
                self._mark_present(result)

    def _mark_present(self, result: FileResult) -> None:
        """Under the lock: a locked file is present (a file outside the lock is not
        counted)."""
        locked = self._locked.get(result.path)
        if locked is not None:
            self._present[result.path] = result
            self._failed.pop(result.path, None)

    # --- tasks --------------------------------------------------------------------------

    def _new_task(self, entry: LockEntry, *, requested: bool, priority: int) -> _Task:
        """Under the lock."""
        task = _Task(self, entry, requested=requested, priority=priority)
        self._tasks[entry.path] = task
        if requested:
            self._use(entry)  # the download protects its own file until it ends
        return task

    def _run_task(self, task: _Task) -> None:
        error: BaseException | None = None
        result: FileResult | None = None
        try:
            result = self._files.run(task.entry, task)
        except fetch.Cancelled:
            error = self._shutdown or ShuttingDown("model downloads stopped",
                                                   hint="retry the job")
        except BaseException as exc:
            error = exc
        use: cache.UseLock | None = None
        last = False
        with self._cond:
            if self._tasks.get(task.path) is task:
                del self._tasks[task.path]
            self._pending.pop(task.path, None)
            task.result, task.error = result, error
            task.finish()
            if error is not None and task.path in self._locked:  # (for status, wait_all)
                self._last_failure = next(self._failures)
                self._failed[task.path] = (self._last_failure, error)
            elif result is not None and not task.requested:
                self._mark_present(result)  # before any claim wakes up
            if task.requested:  # the download's own use ends with it, claims' go on
                use, last = self._unuse(task.path)
            self._cond.notify_all()
        if result is not None:
            self._found(result, requested=task.requested)
        elif not isinstance(error, ShuttingDown):
            self._log_failure(task, error)
        self._after_use(task.path, use, last)

    def _log_failure(self, task: _Task, error: BaseException | None) -> None:
        who = "a job's file" if task.claims > 0 else "background sync"
        if isinstance(error, WorkerError):
            log.warning('%s: "%s" failed (%s): %s; the other files go on', who, task.path,
                        error.reference, error.message)
        else:
            log.error('%s: "%s" failed: %r', who, task.path, error, exc_info=error)

    def _before_download(self, task: _Task, target: Path) -> None:
        """A request file is about to be downloaded: mark it one, and make room for it."""
        if not task.requested:
            return
        self._hold_request_file(task.entry, target, create=True)
        with self._evicting:
            self._make_room(task.entry, target)
            with self._cond:
                self._pending[task.path] = task.entry.size

    def _make_room(self, entry: LockEntry, target: Path) -> None:
        root = self._files.dest_root
        cap = self.cache_bytes
        # This lock's files are never evicted here, so they are no part of the cache.
        files = [f for f in cache.list_cache(root)
                 if f.path != entry.path and f.path not in self._locked]
        with self._cond:
            pending = sum(n for p, n in self._pending.items() if p != entry.path)
        cached = sum(f.size for f in files)
        try:
            free = shutil.disk_usage(fetch.existing_ancestor(root)).free
        except OSError:
            free = entry.size
        need = cache.bytes_to_free(cached=cached, pending=pending, size=entry.size, cap=cap,
                                   free_disk=free)
        freed = 0
        for victim in cache.eviction_order(files, protected=self._in_use):
            if freed >= need:
                break
            if cache.evict(victim, protected=self._in_use, state_dir=self._files.state_dir):
                freed += victim.size
                log.info('request cache: evicted "%s" (%s, last used %.0f s ago) to make '
                         'room for "%s"', victim.path, human_bytes(victim.size),
                         time.time() - victim.last_used, entry.path)
        if cached - freed + pending + entry.size > cap:
            kept = cached - freed + pending
            raise ModelCacheFull(
                f'requested model "{entry.path}" ({entry.size} bytes) does not fit in the '
                f"model cache: its cap is {cap} bytes ({CACHE_BYTES_SETTING}) and {kept} "
                "bytes are held by files in use or being downloaded",
                hint=f"raise {CACHE_BYTES_SETTING}, or retry when other jobs are done")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            finally:
                with self._cond:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._cond:
            self._threads.add(thread)
        thread.start()

    # --- the background sync ------------------------------------------------------------

    def _trusted_root(self, entry: LockEntry) -> Path | None:
        """The root whose copy a record vouches for (no byte read), else None (also when
        the roots cannot be read: the download path then says why)."""
        try:
            return self._files.trusted_root(entry)
        except OSError:
            return None

    def _check_lock(self) -> None:
        """Look at every locked file once; then, with prefetch, download the missing."""
        missing: list[LockEntry] = []
        for entry in self.lock.models:
            if self._closing:
                return
            root = self._trusted_root(entry)
            if root is not None:
                self._found(self._files.result(entry, root), requested=False)
            else:
                missing.append(entry)
        with self._cond:
            self._checked = True
            self._cond.notify_all()
        need = sum(e.size for e in missing)
        log.info("%d of %d locked files present; %d missing (%s)%s",
                 len(self.lock.models) - len(missing), len(self.lock.models), len(missing),
                 human_bytes(need), ": downloading them in the background"
                 if self.prefetch and missing else "")
        if self._bar and need:
            self._files.progress = Progress(need, bar=True).start()
        if self.prefetch:
            self._enqueue(missing)
            self._log_background_progress()

    def _background_idle(self) -> bool:
        """Under the lock: nothing left to do in the background."""
        return self._closing or (self._background_threads == 0 and not self._queue)

    def _enqueue(self, entries: Sequence[LockEntry]) -> None:
        with self._cond:
            if self._closing:
                return
            queued = {e.path for e in self._queue}
            self._queue.extend(e for e in entries if e.path not in queued)
            want = min(max(1, self.settings.jobs) * 2, len(self._queue))
            spawn = max(0, want - self._background_threads)
            self._background_threads += spawn
        for _ in range(spawn):
            self._spawn(self._background_worker, f"store-bg-{next(self._names)}")

    def _background_worker(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closing or not self._queue:
                        return
                    entry = self._queue.popleft()
                    if entry.path in self._tasks or entry.path in self._present:
                        continue  # a claim runs it, or it is there
                    task = self._new_task(entry, requested=False, priority=BACKGROUND)
                self._run_task(task)
        finally:
            with self._cond:
                self._background_threads -= 1
                self._cond.notify_all()

    def _log_background_progress(self) -> None:
        """A line every 30 s while the background sync runs."""
        last = None
        while True:
            deadline = time.monotonic() + _LOG_EVERY
            with self._cond:
                while not self._background_idle() and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                if self._background_idle():
                    return
            status = self.status()
            line = (status.files_done, status.bytes_done)
            if line != last:
                log.info("background sync: %d of %d files, %s of %s%s", status.files_done,
                         status.files_total, human_bytes(status.bytes_done),
                         human_bytes(status.bytes_total),
                         f", {len(status.failed)} failed" if status.failed else "")
                last = line

    # --- all at once ('all' mode, the CLI) --------------------------------------------

    def wait_all(self) -> SyncReport:
        """Every locked file present and verified, like :func:`sync_models`; raises the
        first failure (a ``SyncError``) as soon as it happens. Files that failed before
        are tried again. Call :meth:`close` after a failure to stop the others."""
        t0 = time.monotonic()
        self.start()
        with self._cond:
            since = self._last_failure
        self._enqueue([e for e in self.lock.models if e.path not in self._present])
        while True:
            with self._cond:
                self._raise_if_cancelled()
                for entry in self.lock.models:
                    failed = self._failed.get(entry.path)
                    if failed is not None and failed[0] > since:
                        raise _copy(failed[1])
                if all(e.path in self._present for e in self.lock.models):
                    files = tuple(self._present[e.path] for e in self.lock.models)
                    break
                self._cond.wait(0.5)
        return SyncReport(files=files, roots=self.paths.roots,
                          extra_model_paths=self.paths.extra_model_paths,
                          seconds=time.monotonic() - t0)

    # --- status -------------------------------------------------------------------------

    def status(self) -> StoreStatus:
        with self._cond:
            running = {path: task for path, task in self._tasks.items()}
            present = dict(self._present)
            failed = [(p, err) for p, (_n, err) in self._failed.items()
                      if p in self._locked and p not in present]
            checked = self._checked
        files_done = sum(1 for m in self.lock.models if m.path in present)
        bytes_done = sum(m.size for m in self.lock.models if m.path in present)
        bytes_done += sum(min(t.bytes_done, t.entry.size) for p, t in running.items()
                          if p in self._locked and p not in present)
        downloading = tuple(
            Downloading(t.path, t.bytes_done, t.entry.size,
                        "job" if t.priority() >= JOB else "background", t.requested)
            for t in running.values())
        return StoreStatus(
            files_done=files_done, files_total=len(self.lock.models), bytes_done=bytes_done,
            bytes_total=sum(m.size for m in self.lock.models), downloading=downloading,
            failed=tuple(Failed(p, getattr(err, "reference", "internal-error"),
                                getattr(err, "message", str(err))) for p, err in failed),
            checked=checked, prefetch=self.prefetch)

    def _raise_if_cancelled(self) -> None:
        """Under the lock: close(cancel=True) was called."""
        if self._shutdown is not None:
            raise _copy(self._shutdown)

    def _raise_if_closed(self) -> None:
        """Under the lock: no new work after close()."""
        self._raise_if_cancelled()
        if self._closing:
            raise ShuttingDown("the model store is closed: the worker is shutting down",
                               hint="retry the job on another worker")


def _copy(error: BaseException) -> BaseException:
    """A copy of a shared error, so threads raising it do not share one traceback."""
    try:
        return copy.copy(error).with_traceback(None)
    except Exception:
        return error


# --- one job's hold on its files ------------------------------------------------------


@dataclass
class _Rate:
    """Bytes per second between two progress reports."""

    at: float = field(default_factory=time.monotonic)
    bytes: int = 0

    def update(self, now: float, done: int) -> float:
        dt = now - self.at
        rate = max(0.0, (done - self.bytes) / dt) if dt > 0 else 0.0
        self.at, self.bytes = now, done
        return rate


class Claim:
    """One job's hold on its files (from :meth:`ModelStore.ensure`). While it is held,
    its files are downloaded at job priority and none of them is evicted; release it
    when the job is done (or use it as a context manager)."""

    def __init__(self, store: ModelStore, files: dict[str, _ClaimFile]) -> None:
        self._store = store
        self._files = files
        self._released = False

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._files)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def wait(self, *, timeout: float | None = None, cancel: threading.Event | None = None,
             on_progress: ProgressFn | None = None
             ) -> Mapping[str, Path]:
        """Block until every file is present and verified: ``{path: location}``.

        Raises the error of a file that failed (a ``SyncError`` naming it; the other
        files go on for other claims), :class:`ModelWaitTimeout` after ``timeout``
        seconds, :class:`JobCancelled` once ``cancel`` is set, :class:`ShuttingDown`
        when the store closes. ``on_progress`` is called at once when something is
        missing, then about once a second, from this thread.
        """
        store = self._store
        deadline = None if timeout is None else time.monotonic() + timeout
        rate = _Rate(bytes=self._bytes_done())
        next_report = time.monotonic()
        while True:
            with store._cond:
                if self._released:
                    raise RuntimeError("this claim was released; ensure() the files again")
                missing = self._settle()
                if not missing:
                    return {p: f.result.location for p, f in self._files.items()
                            if f.result is not None}
                store._raise_if_cancelled()
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                raise JobCancelled(
                    f"the job was cancelled while it waited for {len(missing)} model "
                    f"file(s): {', '.join(missing)}")
            if deadline is not None and now >= deadline:
                raise self._timeout(timeout or 0.0, missing)
            if on_progress is not None and now >= next_report:
                on_progress(self._progress(missing, rate.update(now, self._bytes_done())))
                next_report = now + _PROGRESS_EVERY
            with store._cond:
                if not self._settle():
                    continue
                wait = _POLL if deadline is None else min(_POLL, max(0.0,
                                                                     deadline - now))
                store._cond.wait(wait)

    def _settle(self) -> list[str]:
        """Under the store's lock: collect finished tasks; raise a failed file's error;
        the paths still missing."""
        missing: list[str] = []
        for path, f in self._files.items():
            if f.result is not None:
                continue
            task = f.task
            if task is None or not task.done:
                missing.append(path)
                continue
            if task.error is not None:
                raise _copy(task.error)
            f.result = task.result
        return missing

    def _bytes_done(self) -> int:
        return sum(f.entry.size if f.result is not None
                   else (f.task.bytes_done if f.task is not None else 0)
                   for f in self._files.values())

    def _progress(self, missing: Sequence[str], rate: float) -> WaitProgress:
        return WaitProgress(files_done=len(self._files) - len(missing),
                            files_total=len(self._files), bytes_done=self._bytes_done(),
                            bytes_total=sum(f.entry.size for f in self._files.values()),
                            bytes_per_s=rate, waiting_for=tuple(missing))

    def _timeout(self, timeout: float, missing: Sequence[str]) -> ModelWaitTimeout:
        p = self._progress(missing, 0.0)
        details = [{"path": path, "bytes_done": min(self._files[path].task.bytes_done
                                                    if self._files[path].task else 0,
                                                    self._files[path].entry.size),
                    "bytes_total": self._files[path].entry.size} for path in missing]
        return ModelWaitTimeout(
            f"waited {timeout:g} s for the job's models; still missing: "
            f"{', '.join(missing)} ({human_bytes(p.bytes_done)} of "
            f"{human_bytes(p.bytes_total)} here)",
            hint="the downloads go on: retry the job in a while, or raise "
            f"{WAIT_TIMEOUT_SETTING}", details=details)

    def release(self) -> None:
        """The job is done with its files: they may be evicted again, and files still
        downloading go on at background priority. Safe to call twice."""
        store = self._store
        with store._cond:
            if self._released:
                return
            self._released = True
            for f in self._files.values():
                if f.task is not None:
                    store._detach(f.task)
        for path, f in self._files.items():
            if f.requested and f.result is not None:
                cache.touch(f.result.location)
            store._end_use(path)
