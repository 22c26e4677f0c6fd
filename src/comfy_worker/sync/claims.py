"""A job's hold on its model files: :class:`Claim`, and the reference counts behind it
(:class:`Uses`).

A path is *in use* while a claim holds it or a download of a job's own model runs for
it; a file in use is never evicted, and two uses of one path must pin the same sha256.
A claim waits for its files' tasks (:mod:`comfy_worker.sync.filetask`) and reports how
far they are; releasing it lowers its files still downloading to background priority.

Threads: :class:`Uses` and a claim's files change under the owner's condition (the model
store's one lock); :meth:`Claim.wait` waits on that condition.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from comfy_worker.config import env_name
from comfy_worker.errors import (
    JobCancelled,
    JobInputInvalid,
    LockfileError,
    ModelPathConflict,
    ModelWaitTimeout,
)
from comfy_worker.job.events import ProgressFn, WaitProgress
from comfy_worker.lockfile import LockEntry, validate_model_path
from comfy_worker.sync.filetask import FileTask
from comfy_worker.sync.progress import human_bytes
from comfy_worker.sync.run import FileResult

PROGRESS_EVERY = 1.0
"""Seconds between two progress reports of a waiting claim."""
POLL = 0.1


class Uses:
    """Live uses of each path and the sha256 they pin (under the owner's lock)."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        self._sha: dict[str, str] = {}

    def add(self, entry: LockEntry) -> None:
        self._count[entry.path] = self._count.get(entry.path, 0) + 1
        self._sha[entry.path] = entry.sha256

    def remove(self, path: str) -> bool:
        """One use of ``path`` ended; True when it was the last."""
        left = self._count.get(path, 0) - 1
        if left > 0:
            self._count[path] = left
            return False
        self._count.pop(path, None)
        self._sha.pop(path, None)
        return True

    def in_use(self, path: str) -> bool:
        return self._count.get(path, 0) > 0

    def check(self, entry: LockEntry, running: FileTask | None) -> None:
        """Raise :class:`ModelPathConflict` when a live use of ``entry``'s path (or the
        task running for it) pins other bytes."""
        path, sha = entry.path, entry.sha256
        other = self._sha.get(path) if self.in_use(path) else None
        if running is not None and running.entry.sha256 != sha:
            other = running.entry.sha256
        if other is not None and other != sha:
            raise ModelPathConflict(
                f'"{path}" (sha256 {sha}) is in use with other bytes (sha256 {other}) by '
                "a job running now",
                hint="give each version of a model its own path, e.g. with its hash in "
                "the file name")


@dataclass
class ClaimFile:
    """One file of a claim: done once ``result`` is set (at once, or from its task)."""

    entry: LockEntry
    requested: bool
    task: FileTask | None = None
    result: FileResult | None = None


def claim_files(entries: Sequence[LockEntry], *, requested: bool,
                locked: Mapping[str, LockEntry], folders: frozenset[str]
                ) -> dict[str, ClaimFile]:
    """What a claim of ``entries`` holds, by path (pure). ``requested``: a job brought
    them: each path must be safe (the lock's rules), and one naming a locked path must
    pin the locked bytes (it is then the locked file). Raises :class:`JobInputInvalid`
    or :class:`ModelPathConflict` (also for one path asked for with two sha256)."""
    files: dict[str, ClaimFile] = {}
    for entry in entries:
        wanted = _claim_file(entry, requested=requested, locked=locked, folders=folders)
        seen = files.get(wanted.entry.path)
        if seen is not None and seen.entry.sha256 != wanted.entry.sha256:
            raise ModelPathConflict(
                f'"{entry.path}" is asked for twice with different sha256 '
                f"({seen.entry.sha256[:12]}..., {entry.sha256[:12]}...)",
                hint="one path holds one file: give each model its own path")
        files[wanted.entry.path] = wanted
    return files


def _claim_file(entry: LockEntry, *, requested: bool, locked: Mapping[str, LockEntry],
                folders: frozenset[str]) -> ClaimFile:
    if not requested:
        return ClaimFile(entry, requested=False)
    try:
        validate_model_path(entry.path, where="requested model", folders=folders)
    except LockfileError as exc:
        raise JobInputInvalid(exc.message, hint=exc.hint) from None
    pinned = locked.get(entry.path)
    if pinned is None:
        return ClaimFile(entry, requested=True)
    if pinned.sha256 != entry.sha256:
        raise ModelPathConflict(
            f'requested model "{entry.path}" (sha256 {entry.sha256}) names a locked '
            f"file with other bytes (sha256 {pinned.sha256})",
            hint="give the requested model another path, or leave it out to use the "
            "locked file")
    return ClaimFile(pinned, requested=False)  # the locked file itself


def copy_error(error: BaseException) -> BaseException:
    """A copy of a shared error, so threads raising it do not share one traceback."""
    try:
        return copy.copy(error).with_traceback(None)
    except Exception:
        return error


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
    """One job's hold on its files (from :meth:`ModelStore.ensure
    <comfy_worker.sync.store.ModelStore.ensure>`). While it is held, its files are
    downloaded at job priority and none of them is evicted; release it when the job is
    done (or use it as a context manager).

    ``check_open`` raises when the store was closed with ``cancel``; ``on_release(files)``
    gives the files back (called once, without the lock)."""

    def __init__(self, files: dict[str, ClaimFile], cond: threading.Condition, *,
                 check_open: Callable[[], None],
                 on_release: Callable[[Sequence[ClaimFile]], None]) -> None:
        self._files = files
        self._cond = cond
        self._check_open = check_open
        self._on_release = on_release
        self._released = False

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._files)

    @property
    def files(self) -> tuple[ClaimFile, ...]:
        return tuple(self._files.values())

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def wait(self, *, timeout: float | None = None, cancel: threading.Event | None = None,
             on_progress: ProgressFn | None = None) -> Mapping[str, Path]:
        """Block until every file is present and verified: ``{path: location}``.

        Raises the error of a file that failed (a ``SyncError`` naming it; the other
        files go on for other claims), :class:`ModelWaitTimeout` after ``timeout``
        seconds, :class:`JobCancelled` once ``cancel`` is set, :class:`ShuttingDown`
        when the store closes. ``on_progress`` is called at once when something is
        missing, then about once a second, from this thread.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        rate = _Rate(bytes=self._bytes_done())
        next_report = time.monotonic()
        while True:
            with self._cond:
                if self._released:
                    raise RuntimeError("this claim was released; ensure() the files again")
                missing = self._settle()
                if not missing:
                    return {p: f.result.location for p, f in self._files.items()
                            if f.result is not None}
                self._check_open()
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                raise JobCancelled(
                    f"the job was cancelled while it waited for {len(missing)} model "
                    f"file(s): {', '.join(missing)}")
            if deadline is not None and now >= deadline:
                raise self._timeout(timeout or 0.0, missing)
            if on_progress is not None and now >= next_report:
                on_progress(self._progress(missing, rate.update(now, self._bytes_done())))
                next_report = now + PROGRESS_EVERY
            with self._cond:
                if not self._settle():
                    continue
                wait = POLL if deadline is None else min(POLL, max(0.0, deadline - now))
                self._cond.wait(wait)

    def release(self) -> None:
        """The job is done with its files: they may be evicted again, and files still
        downloading go on at background priority. Safe to call twice."""
        with self._cond:
            if self._released:
                return
            self._released = True
        self._on_release(self.files)

    def _settle(self) -> list[str]:
        """Under the lock: collect finished tasks; raise a failed file's error; the paths
        still missing."""
        missing: list[str] = []
        for path, f in self._files.items():
            if f.result is not None:
                continue
            task = f.task
            if task is None or not task.done:
                missing.append(path)
                continue
            if task.error is not None:
                raise copy_error(task.error)
            f.result = task.result
        return missing

    def _file_bytes(self, f: ClaimFile) -> int:
        if f.result is not None:
            return f.entry.size
        return min(f.task.bytes_done, f.entry.size) if f.task is not None else 0

    def _bytes_done(self) -> int:
        return sum(self._file_bytes(f) for f in self._files.values())

    def _progress(self, missing: Sequence[str], rate: float) -> WaitProgress:
        return WaitProgress(files_done=len(self._files) - len(missing),
                            files_total=len(self._files), bytes_done=self._bytes_done(),
                            bytes_total=sum(f.entry.size for f in self._files.values()),
                            bytes_per_s=rate, waiting_for=tuple(missing))

    def _timeout(self, timeout: float, missing: Sequence[str]) -> ModelWaitTimeout:
        p = self._progress(missing, 0.0)
        details = [{"path": path, "bytes_done": self._file_bytes(self._files[path]),
                    "bytes_total": self._files[path].entry.size} for path in missing]
        return ModelWaitTimeout(
            f"waited {timeout:g} s for the job's models; still missing: "
            f"{', '.join(missing)} ({human_bytes(p.bytes_done)} of "
            f"{human_bytes(p.bytes_total)} here)",
            hint="the downloads go on: retry the job in a while, or raise "
            f"{env_name('model_wait_timeout')}", details=details)
