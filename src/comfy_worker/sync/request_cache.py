"""The model store's request cache: the models jobs bring, kept under a size cap.

What lives on disk (sidecars, their flocks, eviction of one file) is
:mod:`comfy_worker.sync.cache`; this is one store's side of it: the sidecar locks it holds
while its jobs use a request file, the bytes of request files downloading now (counted
against the cap), and making room for a new one by the pure policy
:func:`~comfy_worker.sync.cache.plan_eviction`, one file at a time (``_evicting``).

Threads: ``_use_locks`` and ``_pending`` change under the owner's condition (the model
store's one lock); ``protected`` is called without it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from comfy_worker.config import env_name
from comfy_worker.errors import ModelCacheFull
from comfy_worker.lockfile import LockEntry
from comfy_worker.sync import cache, fetch
from comfy_worker.sync.progress import human_bytes

log = logging.getLogger(__name__)


class RequestCache:
    """Request files of one store under ``root``, at most ``cap`` bytes in all."""

    def __init__(self, root: Path, cap: int, *, state_dir: Path, locked: frozenset[str],
                 protected: Callable[[str], bool], cond: threading.Condition) -> None:
        self.root = root
        self.cap = cap
        self._state_dir = state_dir
        self._locked = locked
        self._protected = protected
        self._cond = cond
        self._use_locks: dict[str, cache.UseLock] = {}
        self._pending: dict[str, int] = {}
        """Request files downloading now -> their size."""
        self._evicting = threading.Lock()

    # --- uses ------------------------------------------------------------------------

    def hold(self, entry: LockEntry, *, create: bool, in_use: Callable[[], bool]) -> None:
        """Hold ``entry``'s sidecar (shared flock) while the store uses it, so no worker
        evicts it (``create``: make the file a request file). Never called holding the
        lock; ``in_use`` is asked under it."""
        with self._cond:
            if entry.path in self._use_locks:
                return
        use = cache.UseLock.take(self.root / entry.path, create=create, sha256=entry.sha256,
                                 size=entry.size)
        if use is None:
            return
        with self._cond:
            if entry.path not in self._use_locks and in_use():
                self._use_locks[entry.path] = use
                return
        use.close()

    def let_go(self, path: str) -> cache.UseLock | None:
        """Under the lock: the last use of ``path`` ended; its sidecar lock to close."""
        return self._use_locks.pop(path, None)

    def after_last_use(self, path: str, use: cache.UseLock | None) -> None:
        """Outside the lock: let the sidecar go; a request file that never arrived loses
        its sidecar."""
        if use is not None:
            use.close()
        cache.remove_orphan_sidecar(self.root / path)

    def used(self, location: Path) -> None:
        cache.touch(location)

    def close(self) -> None:
        with self._cond:
            locks = list(self._use_locks.values())
            self._use_locks.clear()
        for use in locks:
            use.close()

    # --- room ------------------------------------------------------------------------

    def downloaded(self, path: str) -> None:
        """Under the lock: ``path``'s download ended; its bytes are no longer pending."""
        self._pending.pop(path, None)

    def check_fits(self, entry: LockEntry) -> None:
        """Before ``entry``'s source is even asked: raise :class:`ModelCacheFull` when it
        cannot fit under the cap now, even with every evictable file evicted (evicts
        nothing)."""
        files, pending, plan = self._plan(entry)
        if not plan.fits:
            held = sum(f.size for f in files) - sum(f.size for f in plan.candidates)
            raise self._full(entry, held + pending)

    def make_room(self, entry: LockEntry) -> None:
        """Room for ``entry`` (about to be downloaded) under the cap and on the disk:
        least recently used request files out, none that is locked or in use. Raises
        :class:`ModelCacheFull`, evicting nothing, when it can never fit now."""
        with self._evicting:
            self._make_room(entry)
            with self._cond:
                self._pending[entry.path] = entry.size

    def _plan(self, entry: LockEntry) -> tuple[list[cache.CachedFile], int, cache.EvictionPlan]:
        # This lock's files are never evicted here, so they are no part of the cache.
        files = [f for f in cache.list_cache(self.root)
                 if f.path != entry.path and f.path not in self._locked]
        with self._cond:
            pending = sum(n for p, n in self._pending.items() if p != entry.path)
        try:
            free = shutil.disk_usage(fetch.existing_ancestor(self.root)).free
        except OSError:
            free = entry.size
        return files, pending, cache.plan_eviction(
            files, size=entry.size, pending=pending, cap=self.cap, free_disk=free,
            protected=self._protected)

    def _make_room(self, entry: LockEntry) -> None:
        files, pending, plan = self._plan(entry)
        cached = sum(f.size for f in files)
        freed = 0
        if plan.fits:
            for victim in plan.candidates:
                if freed >= plan.need:
                    break
                if cache.evict(victim, protected=self._protected, state_dir=self._state_dir):
                    freed += victim.size
                    log.info('request cache: evicted "%s" (%s, last used %.0f s ago) to make '
                             'room for "%s"', victim.path, human_bytes(victim.size),
                             time.time() - victim.last_used, entry.path)
        if cached - freed + pending + entry.size > self.cap:
            raise self._full(entry, cached - freed + pending)

    def _full(self, entry: LockEntry, kept: int) -> ModelCacheFull:
        setting = env_name("model_cache_bytes")
        return ModelCacheFull(
            f'requested model "{entry.path}" ({entry.size} bytes) does not fit in the '
            f"model cache: its cap is {self.cap} bytes ({setting}) and {kept} "
            "bytes are held by files in use or being downloaded",
            hint=f"raise {setting}, or retry when other jobs are done")
