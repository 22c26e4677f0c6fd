"""The model store's background prefetch: the lock's missing files, downloaded at the
lowest priority by a small pool of threads while the worker serves.

``2 x settings.jobs`` ``store-bg`` threads take files from one queue in lock order
(``settings.jobs`` downloading at a time, the others locating their next file), and
stop when the queue is empty or the store closes; :meth:`Prefetcher.log_progress` writes
a line every 30 s while they work.

Threads: the queue and the thread count change under the owner's condition (the model
store's one lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from comfy_worker.lockfile import LockEntry
from comfy_worker.sync.progress import human_bytes

log = logging.getLogger(__name__)

LOG_EVERY = 30.0
"""Seconds between two progress lines of the background sync."""


class Prefetcher:
    """Feeds ``entries`` to ``fetch(entry)`` in the background.

    ``fetch`` makes one file present (it skips a file a claim runs, or one already
    there); ``spawn(target, name)`` starts a thread the owner tracks; ``closing()`` says
    the owner is closing (asked under the lock)."""

    def __init__(self, *, threads: int, cond: threading.Condition,
                 fetch: Callable[[LockEntry], None],
                 spawn: Callable[[Callable[[], None], str], None],
                 closing: Callable[[], bool]) -> None:
        self._want = max(1, threads)
        self._cond = cond
        self._fetch = fetch
        self._spawn = spawn
        self._closing = closing
        self._queue: deque[LockEntry] = deque()
        self._threads = 0
        self._names = 0

    def fetch_missing(self, missing: Sequence[LockEntry], *, of: int, enabled: bool,
                      summary: Callable[[], tuple[object, str]]) -> None:
        """The lock was checked: ``missing`` of its ``of`` files are not there. With
        prefetch ``enabled``, download them, logging ``summary()`` every 30 s until done
        (this returns then)."""
        log.info("%d of %d locked files present; %d missing (%s)%s", of - len(missing), of,
                 len(missing), human_bytes(sum(e.size for e in missing)),
                 ": downloading them in the background" if enabled and missing else "")
        if enabled:
            self.enqueue(missing)
            self.log_progress(summary)

    def enqueue(self, entries: Sequence[LockEntry]) -> None:
        """Queue ``entries`` (once each) and start threads up to the pool's size."""
        with self._cond:
            if self._closing():
                return
            queued = {e.path for e in self._queue}
            self._queue.extend(e for e in entries if e.path not in queued)
            spawn = max(0, min(self._want, len(self._queue)) - self._threads)
            self._threads += spawn
            names = range(self._names + 1, self._names + spawn + 1)
            self._names += spawn
        for n in names:
            self._spawn(self._work, f"store-bg-{n}")

    def clear(self) -> None:
        """Under the lock: forget what is queued (the store is closing)."""
        self._queue.clear()

    def idle(self) -> bool:
        """Under the lock: nothing left to do in the background."""
        return self._closing() or (self._threads == 0 and not self._queue)

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closing() or not self._queue:
                        return
                    entry = self._queue.popleft()
                self._fetch(entry)
        finally:
            with self._cond:
                self._threads -= 1
                self._cond.notify_all()

    def log_progress(self, line: Callable[[], tuple[object, str]]) -> None:
        """Until the background is idle: every 30 s, ``line()`` (a key and its text) is
        logged when its key changed."""
        last = None
        while True:
            deadline = time.monotonic() + LOG_EVERY
            with self._cond:
                while not self.idle() and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                if self.idle():
                    return
            key, text = line()
            if key != last:
                log.info("%s", text)
                last = key
