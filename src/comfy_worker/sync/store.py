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

The store composes four parts, each with its own state, none reaching into another's:
:mod:`~comfy_worker.sync.filetask` (the files in flight, their priorities),
:mod:`~comfy_worker.sync.claims` (a job's hold on its files, and the reference counts
that keep a file in use from eviction), :mod:`~comfy_worker.sync.request_cache` (the
models jobs bring, under a cap) and :mod:`~comfy_worker.sync.prefetch` (the background
sync's threads). The store itself keeps the lock's record (present, failed) and the
lifecycle, and steers a file from a claim to its task and back.

Threads: ``store-prefetch`` checks the lock, then feeds the missing files to the
prefetch pool; a file a claim starts runs in a ``store-file`` thread of its own; each
download runs its own connection threads. One condition (``_cond``) guards the state of
every part; a claim waits on it.

Priority: background files download at ``BACKGROUND``, claimed ones at ``JOB``.
All downloads draw connection slots from one ``Gate``: while a job's file downloads, the
background ones give their slots up at their next block (1 MiB) and wait, keeping every
byte written; a background file a job asks for is raised in place, not restarted. A
claimed file takes no download slot, so it never queues behind background files.

Sharing is keyed by the file's path under the models root (unique in a lock; a
requested file naming a locked path must pin the same sha256): one task per path, and
every claim of that path waits on it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from comfy_worker.config import Settings
from comfy_worker.errors import (
    ShuttingDown,
    WorkerError,
)
from comfy_worker.lockfile import LockEntry, Lockfile, allowed_folders
from comfy_worker.sync import cache, fetch
from comfy_worker.sync.claims import Claim, ClaimFile, Uses, claim_files, copy_error
from comfy_worker.sync.filetask import BACKGROUND, JOB, FileTask, FileTasks
from comfy_worker.sync.lock_state import LockState, StoreStatus
from comfy_worker.sync.paths import ModelPaths
from comfy_worker.sync.prefetch import Prefetcher
from comfy_worker.sync.progress import Progress
from comfy_worker.sync.request_cache import RequestCache
from comfy_worker.sync.run import FileResult, FileSync, SyncReport

log = logging.getLogger(__name__)

__all__ = ["BACKGROUND", "JOB", "Claim", "ModelStore", "StoreStatus"]


# --- the store ----------------------------------------------------------------------


class ModelStore:
    """Models on demand for one worker. See the module doc."""

    def __init__(self, settings: Settings, lock: Lockfile, paths: ModelPaths, *,
                 prefetch: bool = True, cache_bytes: int = cache.DEFAULT_CACHE_BYTES,
                 progress: bool | None = None) -> None:
        self.settings = settings
        self.lock = lock
        self.paths = paths
        self.prefetch = prefetch
        self._bar = progress is True
        self._files = FileSync(settings, list(paths.roots), Progress(0, bar=False))
        self._locked = {m.path: m for m in lock.models}
        self._folders = allowed_folders(lock.extra_folders)
        self._cond = threading.Condition()
        self._tasks = FileTasks(self._files, before_download=self._before_download)
        self._uses = Uses()  # live claims + running request downloads: never evicted
        self._cache = RequestCache(self._files.dest_root, cache_bytes, cond=self._cond,
                                   state_dir=self._files.state_dir,
                                   locked=frozenset(self._locked), protected=self._protected)
        self._threads = ThreadGroup()
        self._prefetch = Prefetcher(threads=max(1, settings.jobs) * 2, cond=self._cond,
                                    fetch=self._fetch_in_background, spawn=self._threads.spawn,
                                    closing=lambda: self._closing)
        self._record = LockState(lock)
        self._started = self._closing = False
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
        self._threads.spawn(self._check_lock, "store-prefetch")

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
            self._prefetch.clear()
            self._cond.notify_all()
        if cancel:
            self._files.downloads.cancel()
        self._threads.join(timeout if cancel else None)
        self._cache.close()
        self._files.progress.stop()

    def _check_open(self, *, new_work: bool = False) -> None:
        """Under the lock: raise once close(cancel=True) was called (with ``new_work``:
        once close() was called at all)."""
        if self._shutdown is not None:
            raise copy_error(self._shutdown)
        if new_work and self._closing:
            raise ShuttingDown("the model store is closed: the worker is shutting down",
                               hint="retry the job on another worker")

    # --- claims -------------------------------------------------------------------------

    def ensure(self, entries: Sequence[LockEntry], *, requested: bool = False) -> Claim:
        """Ask for ``entries`` now, at job priority; wait with :meth:`Claim.wait`.

        ``requested``: the job brought them (not in the lock): fetched and verified the
        same way, kept in the request cache. Raises :class:`ShuttingDown` after
        :meth:`close`, :class:`ModelPathConflict` for a path that holds other bytes for
        the lock or for a live claim, :class:`JobInputInvalid` for an unsafe path,
        :class:`ModelCacheFull` for a requested file that cannot fit the cache now."""
        files = claim_files(entries, requested=requested, locked=self._locked,
                            folders=self._folders)
        with self._cond:
            self._check_open(new_work=True)
            for f in files.values():
                self._uses.check(f.entry, self._tasks.get(f.entry.path))
            for f in files.values():
                self._uses.add(f.entry)
        claim = Claim(files, self._cond, check_open=self._check_open,
                      on_release=self._release)
        try:
            for f in files.values():
                self._resolve(f)
        except BaseException:
            claim.release()
            raise
        return claim

    def _resolve(self, f: ClaimFile) -> None:
        """Make ``f`` done at once (present and vouched for), or attach it to its task."""
        entry = f.entry
        if f.requested:
            self._cache.hold(entry, create=False, in_use=lambda: self._uses.in_use(entry.path))
        with self._cond:
            f.task = self._tasks.attach(entry.path)
            if f.task is not None:
                return
        root = self._files.vouched_root(entry)
        if root is not None:
            f.result = self._files.result(entry, root)
            self._found(f.result, requested=f.requested)
            return
        if f.requested:
            self._cache.check_fits(entry)  # before its source is asked anything
        with self._cond:
            self._check_open(new_work=True)
            f.task = self._tasks.attach(entry.path)
            if f.task is not None:
                return
            task = self._new_task(entry, requested=f.requested, priority=JOB)
            f.task = self._tasks.attach(entry.path)
        self._threads.spawn(lambda: self._run_task(task), f"store-file-{next(self._names)}")

    def _release(self, files: Sequence[ClaimFile]) -> None:
        """A claim is done with ``files``: they may be evicted again; files still
        downloading go on at background priority."""
        with self._cond:
            for f in files:
                if f.task is not None:
                    self._tasks.detach(f.task)
        for f in files:
            if f.requested and f.result is not None:
                self._cache.used(f.result.location)
            self._end_use(f.entry.path)

    def _end_use(self, path: str) -> None:
        with self._cond:
            last = self._uses.remove(path)
            use = self._cache.let_go(path) if last else None
        if last:
            self._cache.after_last_use(path, use)

    def _protected(self, path: str) -> bool:
        """Never evicted: a locked file, or one in use here."""
        with self._cond:
            return self._uses.in_use(path) or path in self._locked

    def _found(self, result: FileResult, *, requested: bool) -> None:
        """A file is present and vouched for at ``result.location``."""
        if requested:
            self._cache.used(result.location)
            return
        if result.path in self._locked:
            cache.unmark(result.location)  # locked here: no worker may evict it
            with self._cond:
                self._record.found(result)

    # --- tasks --------------------------------------------------------------------------

    def _new_task(self, entry: LockEntry, *, requested: bool, priority: int) -> FileTask:
        task = self._tasks.new(entry, requested=requested, priority=priority)  # (locked)
        if requested:
            self._uses.add(entry)  # the download protects its own file until it ends
        return task

    def _run_task(self, task: FileTask) -> None:
        error: BaseException | None = None
        result: FileResult | None = None
        try:
            result = self._tasks.run(task)
        except fetch.Cancelled:
            error = self._shutdown or ShuttingDown("model downloads stopped",
                                                   hint="retry the job")
        except BaseException as exc:
            error = exc
        with self._cond:
            self._tasks.end(task, result, error)
            self._cache.downloaded(task.path)
            if error is not None:
                self._record.failed(task.path, error)  # (for status, wait_all)
            elif result is not None and not task.requested:
                self._record.found(result)  # before any claim wakes up
            self._cond.notify_all()
        if task.requested:  # the download's own use ends with it, claims' go on
            self._end_use(task.path)
        if result is not None:
            self._found(result, requested=task.requested)
        elif not isinstance(error, ShuttingDown):
            log_failure(task, error)

    def _before_download(self, task: FileTask, target: Path) -> None:
        """A request file is about to be downloaded: mark it one, and make room for it."""
        if task.requested:
            self._cache.hold(task.entry, create=True,
                             in_use=lambda: self._uses.in_use(task.path))
            self._cache.make_room(task.entry)

    # --- the background sync ------------------------------------------------------------

    def _check_lock(self) -> None:
        """Look at every locked file once; then, with prefetch, download the missing."""
        missing: list[LockEntry] = []
        for entry in self.lock.models:
            if self._closing:
                return
            root = self._files.vouched_root(entry)
            if root is not None:
                self._found(self._files.result(entry, root), requested=False)
            else:
                missing.append(entry)
        with self._cond:
            self._record.checked = True
            self._cond.notify_all()
        need = sum(e.size for e in missing)
        if self._bar and need:
            self._files.progress = Progress(need, bar=True).start()
        self._prefetch.fetch_missing(missing, of=len(self.lock.models), enabled=self.prefetch,
                                     summary=lambda: self.status().summary())

    def _fetch_in_background(self, entry: LockEntry) -> None:
        with self._cond:
            if self._tasks.get(entry.path) is not None or entry.path in self._record.present:
                return  # a claim runs it, or it is there
            task = self._new_task(entry, requested=False, priority=BACKGROUND)
        self._run_task(task)

    def wait_all(self) -> SyncReport:
        """Every locked file present and verified, like :func:`sync_models`; raises the
        first failure (a ``SyncError``) as soon as it happens. Files that failed before
        are tried again. Call :meth:`close` after a failure to stop the others."""
        t0 = time.monotonic()
        self.start()
        with self._cond:
            since, missing = self._record.last_failure, self._record.missing()
        self._prefetch.enqueue(missing)
        while True:
            with self._cond:
                self._check_open()
                failure = self._record.failure_since(since)
                if failure is not None:
                    raise copy_error(failure)
                files = self._record.complete()
                if files is not None:
                    break
                self._cond.wait(0.5)
        return SyncReport(files=files, roots=self.paths.roots,
                          extra_model_paths=self.paths.extra_model_paths,
                          seconds=time.monotonic() - t0)

    def status(self) -> StoreStatus:
        with self._cond:
            return self._record.status(self._tasks.running(), prefetch=self.prefetch)


class ThreadGroup:
    """The store's own threads, so close() can wait for them."""

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def spawn(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def join(self, timeout: float | None) -> None:
        """Wait for every thread (but the caller), at most ``timeout`` seconds in all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s still busy after close (a file check or a wait for another "
                            "worker's download); leaving it", thread.name)


def log_failure(task: FileTask, error: BaseException | None) -> None:
    who = "a job's file" if task.claims > 0 else "background sync"
    if isinstance(error, WorkerError):
        log.warning('%s: "%s" failed (%s): %s; the other files go on', who, task.path,
                    error.reference, error.message)
    else:
        log.error('%s: "%s" failed: %r', who, task.path, error, exc_info=error)
