"""The lock's side of the model store: which locked files are present, which failed
last, whether every one was looked at, and the status ``/health`` shows.

Threads: a :class:`LockState` changes under the owner's condition (the model store's one
lock); :meth:`LockState.status` is built from a snapshot taken under it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfy_worker.lockfile import LockEntry, Lockfile
from comfy_worker.sync.filetask import JOB, FileTask
from comfy_worker.sync.progress import human_bytes
from comfy_worker.sync.run import FileResult


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

    def summary(self) -> tuple[object, str]:
        """A key that changes with progress, and the background sync's log line."""
        return ((self.files_done, self.bytes_done),
                f"background sync: {self.files_done} of {self.files_total} files, "
                f"{human_bytes(self.bytes_done)} of {human_bytes(self.bytes_total)}"
                + (f", {len(self.failed)} failed" if self.failed else ""))

    def to_json(self) -> dict[str, Any]:
        return {"files_done": self.files_done, "files_total": self.files_total,
                "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "complete": self.complete, "checked": self.checked,
                "prefetch": self.prefetch,
                "downloading": [d.to_json() for d in self.downloading],
                "failed": [f.to_json() for f in self.failed]}


class LockState:
    """The locked files' record (under the owner's lock)."""

    def __init__(self, lock: Lockfile) -> None:
        self.lock = lock
        self.locked: Mapping[str, LockEntry] = {m.path: m for m in lock.models}
        self.present: dict[str, FileResult] = {}
        """Locked files found or made present (the status counts them done)."""
        self._failed: dict[str, tuple[int, BaseException]] = {}
        """path -> (failure number, error) of locked files whose last attempt failed."""
        self._failures = itertools.count(1)
        self.last_failure = 0
        """The number of the latest failure (0: none yet)."""
        self.checked = False
        """Every locked file was looked at once."""

    def found(self, result: FileResult) -> None:
        """A locked file is present (a file outside the lock is not counted)."""
        if result.path in self.locked:
            self.present[result.path] = result
            self._failed.pop(result.path, None)

    def failed(self, path: str, error: BaseException) -> None:
        if path in self.locked:
            self.last_failure = next(self._failures)
            self._failed[path] = (self.last_failure, error)

    def missing(self) -> list[LockEntry]:
        return [e for e in self.lock.models if e.path not in self.present]

    def failure_since(self, number: int) -> BaseException | None:
        """The first failure (in lock order) numbered after ``number``, if any."""
        for entry in self.lock.models:
            failed = self._failed.get(entry.path)
            if failed is not None and failed[0] > number:
                return failed[1]
        return None

    def complete(self) -> tuple[FileResult, ...] | None:
        """Every locked file's result in lock order, once all are present."""
        if any(e.path not in self.present for e in self.lock.models):
            return None
        return tuple(self.present[e.path] for e in self.lock.models)

    def status(self, running: Mapping[str, FileTask], *, prefetch: bool) -> StoreStatus:
        """Under the lock: the lock's files for /health, with the files in flight."""
        present = self.present
        locked = self.lock.models
        failed = [(p, err) for p, (_n, err) in self._failed.items() if p not in present]
        bytes_done = sum(m.size for m in locked if m.path in present)
        bytes_done += sum(min(t.bytes_done, t.entry.size) for p, t in running.items()
                          if p in self.locked and p not in present)
        return StoreStatus(
            files_done=sum(1 for m in locked if m.path in present), files_total=len(locked),
            bytes_done=bytes_done, bytes_total=sum(m.size for m in locked),
            downloading=tuple(
                Downloading(t.path, t.bytes_done, t.entry.size,
                            "job" if t.priority() >= JOB else "background", t.requested)
                for t in running.values()),
            failed=tuple(Failed(p, getattr(err, "reference", "internal-error"),
                                getattr(err, "message", str(err))) for p, err in failed),
            checked=self.checked, prefetch=prefetch)
