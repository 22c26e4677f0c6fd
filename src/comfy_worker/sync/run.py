"""``sync_models``: make every locked file present and verified.

A thin map over :class:`FileSync`, one locked file each, safe to run concurrently:
look for the file in each model root (volume first), trust it by its record or verify
it, else download it under a per-file lock into the volume (when writable) or the local
models dir (its sha256 computed as the bytes land), check the hash, publish.
``settings.jobs`` files download at once, each over ``settings.connections`` ranges.

:class:`FileSync` is also the per-file path of :class:`~comfy_worker.sync.store.ModelStore`,
which steers each file through a :class:`FileWatcher` (its priority, its bytes, the
moment before a download).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings, env_name
from comfy_worker.errors import (
    DownloadFailed,
    ModelHashMismatch,
    ModelSizeMismatch,
    SyncError,
)
from comfy_worker.lockfile import LockEntry, Lockfile, load_lock
from comfy_worker.sync import check, fetch
from comfy_worker.sync.download import Download, Gate
from comfy_worker.sync.paths import ModelPaths, prepare_model_paths, state_dir, temp_path
from comfy_worker.sync.place import can_write, file_lock, publish
from comfy_worker.sync.plan import action_for, backoff_seconds, download_root
from comfy_worker.sync.progress import Progress
from comfy_worker.sync.record import Record, write_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    path: str
    """The lock path, e.g. ``loras/x.safetensors``."""
    action: str
    """``volume`` | ``cached`` | ``downloaded``."""
    location: Path
    """Absolute path of the verified file."""
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "action": self.action, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "location": str(self.location)}


@dataclass(frozen=True)
class SyncReport:
    files: tuple[FileResult, ...]
    roots: tuple[Path, ...]
    extra_model_paths: Path
    """The yaml sync wrote (pass it to ComfyUI's ``--extra-model-paths-config``)."""
    seconds: float

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.bytes for f in self.files if f.action == "downloaded")

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.action] = counts.get(f.action, 0) + 1
        return {"files": [f.to_json() for f in self.files], "seconds": round(self.seconds, 3),
                "downloaded_bytes": self.downloaded_bytes, "counts": counts,
                "roots": [str(r) for r in self.roots],
                "extra_model_paths": str(self.extra_model_paths)}


class FileWatcher:
    """What a caller of :meth:`FileSync.run` sees of one file, and steers (no-ops here;
    the model store's tasks override them). Called from the thread that runs the file
    and, for :meth:`received`, from its download's connection threads."""

    def priority(self) -> int:
        """The file's priority now: 0 is the lowest (a background file); above 0 the file
        takes no download slot and lower downloads make way for it (see ``Gate``)."""
        return 0

    def received(self, n: int) -> None:
        """``n`` more bytes were written (negative: a failed attempt's bytes dropped)."""

    def download(self, download: Download | None) -> None:
        """The :class:`Download` now running for the file, or None once it ended."""

    def before_download(self, entry: LockEntry, target: Path) -> None:
        """Called holding the file's lock, once the source answered (located, its size
        and hash checked) and just before the bytes start (each attempt)."""

    def may_replace(self, target: Path) -> None:
        """``target`` holds other bytes than the entry's: raise when it must not be
        replaced (a job's entry over a file the job does not own)."""

    def stopped(self) -> bool:
        """Nobody needs the file any more: its download stops (``Cancelled``)."""
        return False

    def job_source(self) -> bool:
        """The entry came with a job: its source is a stranger's, fetched under the URL
        policy and without the operator's ``HF_TOKEN``; its errors name no hash or size
        the source serves, and a hash mismatch is not retried (see
        :mod:`comfy_worker.sync.fetch`)."""
        return False


_NO_WATCHER = FileWatcher()


class FileSlots:
    """How many files download at once. A file of priority above 0 (a job waits for it)
    takes no slot, so it never waits behind background files; one raised while it
    waits for a slot goes at once."""

    def __init__(self, slots: int) -> None:
        self._free = max(1, slots)
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, priority: Callable[[], int], cancelled: threading.Event) -> Iterator[None]:
        taken = False
        with self._cond:
            while priority() <= 0:
                if cancelled.is_set():
                    raise fetch.Cancelled()
                if self._free > 0:
                    self._free -= 1
                    taken = True
                    break
                self._cond.wait(0.2)
        try:
            yield
        finally:
            if taken:
                with self._cond:
                    self._free += 1
                    self._cond.notify_all()

    def wake(self) -> None:
        """A priority changed: let waiters look again now."""
        with self._cond:
            self._cond.notify_all()


class FileSync:
    """The shared state of one sync; :meth:`run` handles one locked file."""

    def __init__(self, settings: Settings, roots: list[Path], progress: Progress) -> None:
        self.settings = settings
        self.roots = roots
        self.progress = progress
        self.volume_models = roots[0] if settings.volume is not None else None
        volume_there = settings.volume is not None and Path(settings.volume).is_dir()
        self.dest_root = download_root(
            roots, self.volume_models,
            volume_usable=volume_there and self.volume_models is not None
            and can_write(self.volume_models))
        self.state_dir = state_dir(settings)
        self.slots = FileSlots(settings.jobs)
        # One pool of connections for all files (see download.Gate): the model store
        # raises a file a job waits for above the background ones.
        self.downloads = fetch.Downloads(
            Gate(max(1, settings.jobs) * max(1, settings.connections)))

    # --- existing files ---------------------------------------------------------------

    def trusted(self, entry: LockEntry, target: Path) -> bool:
        """A record vouches for the file: no byte is read."""
        return check.trusted(target, entry, state_dir=self.state_dir)

    def trusted_root(self, entry: LockEntry) -> Path | None:
        """The first root where a record vouches for the file (stat + record, no byte of
        the file read), or None."""
        for root in self.roots:
            if self.trusted(entry, root / entry.path):
                return root
        return None

    def vouched_root(self, entry: LockEntry) -> Path | None:
        """:meth:`trusted_root`, or None when the roots cannot be read (the download path
        then says why)."""
        try:
            return self.trusted_root(entry)
        except OSError:
            return None

    def result(self, entry: LockEntry, root: Path, seconds: float = 0.0) -> FileResult:
        """The result for a file found verified in ``root``."""
        return FileResult(entry.path, action_for(root, self.volume_models), root / entry.path,
                          entry.size, seconds)

    def verify_existing(self, entry: LockEntry, target: Path) -> bool:
        verdict = check.verify_file(target, entry, fast=self.settings.fast_verify,
                                    state_dir=self.state_dir)
        if verdict.present and not verdict.ok:
            log.warning("%s: %s: not the locked file", target, verdict.detail)
        return verdict.ok

    # --- one file ---------------------------------------------------------------------

    def run(self, entry: LockEntry, watcher: FileWatcher | None = None) -> FileResult:
        watcher = watcher or _NO_WATCHER
        t0 = time.monotonic()
        if self.downloads.cancelled.is_set():
            raise fetch.Cancelled()

        def done(root: Path, action: str | None = None) -> FileResult:
            action = action or action_for(root, self.volume_models)
            result = FileResult(entry.path, action, root / entry.path, entry.size,
                                time.monotonic() - t0)
            self.progress.file_done(entry.path, action, entry.size, result.seconds)
            return result

        try:
            trusted = self.trusted_root(entry)  # warm path: stat + record, nothing read
            if trusted is not None:
                return done(trusted)
            shadowing: list[Path] = []  # wrong files ComfyUI might still find first
            for root in self.roots:  # present but not vouched for: verify (once, locked)
                target = root / entry.path
                if not os.path.isfile(target):
                    continue
                if can_write(target.parent):
                    ours: list[bool] = []  # a job leaves no lock beside a file not its own
                    with file_lock(target, on_wait=f"waiting for another sync of {target}",
                                   keep=(lambda ours=ours: bool(ours)) if watcher.job_source()
                                   else None):
                        if self.verify_existing(entry, target):
                            ours.append(True)
                            return done(root)
                        watcher.may_replace(target)
                elif self.verify_existing(entry, target):
                    return done(root)
                else:
                    watcher.may_replace(target)
                    shadowing.append(target)
            for bad in shadowing:
                log.warning("%s does not match the lock and cannot be replaced (read-only); "
                            "ComfyUI searches it before %s: remove it there", bad,
                            self.dest_root)
            target = self.dest_root / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            # A job's file that did not arrive leaves no lock file behind.
            keep = None if not watcher.job_source() else target.exists
            with file_lock(target, on_wait=f"{target}: another sync is downloading it; "
                           "waiting to reuse it", keep=keep):
                if self.verify_existing(entry, target):
                    return done(self.dest_root)  # another worker fetched it meanwhile
                if os.path.isfile(target):
                    watcher.may_replace(target)
                remove_stale_temps(target)
                self.download(entry, target, watcher)
            return done(self.dest_root, "downloaded")
        except OSError as exc:
            if isinstance(exc, SyncError):
                raise
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise fetch.disk_full_error(self.dest_root, entry.size, path=entry.path) \
                    from None
            raise SyncError(f'"{entry.path}": {exc.strerror or exc}: {exc.filename or ""}',
                            hint="check that the models dir / volume is writable") from None

    def download(self, entry: LockEntry, target: Path,
                 watcher: FileWatcher = _NO_WATCHER) -> None:
        """Download, verify, publish; retry transient failures and (for a locked file)
        hash mismatches."""
        job = watcher.job_source()
        attempts = 1 + self.settings.retries
        last: Exception | None = None
        actual: str | None = None
        for attempt in range(attempts):
            if attempt:
                delay = backoff_seconds(attempt)
                log.warning('"%s": attempt %d of %d failed (%s); retrying in %.1f s',
                            entry.path, attempt, attempts, last, delay)
                if self.downloads.cancelled.wait(delay):
                    raise fetch.Cancelled()
            tmp = temp_path(target)
            received = 0

            def on_bytes(n: int) -> None:
                nonlocal received
                received += n
                self.progress.add(n)
                watcher.received(n)

            published = False
            try:
                if watcher.stopped():
                    raise fetch.Cancelled()
                # Located before taking a download slot, so a freed slot is used at once.
                remote = fetch.locate(entry.source, self.settings, path=entry.path, job=job)
                check_source(entry, remote, job=job)
                watcher.before_download(entry, target)  # (after the source answered)
                if watcher.stopped():
                    raise fetch.Cancelled()
                with self.slots.hold(watcher.priority, self.downloads.cancelled):
                    fetch.check_free_space(target.parent, entry.size,
                                           what=f'"{entry.path}"')
                    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                    # The sha256 is computed as the bytes land: no hashing after the last;
                    # never more than the entry's size is written.
                    sha = fetch.transfer(remote, tmp, self.settings, path=entry.path,
                                         source=entry.source, on_bytes=on_bytes,
                                         downloads=self.downloads,
                                         priority=watcher.priority(), size=entry.size,
                                         job=job, watch=watcher.download)
                if sha != entry.sha256:
                    actual = sha
                    last = ModelHashMismatch(f"sha256 {sha}, expected {entry.sha256}")
                    if job:  # a job's pin is its own: no second download to prove it
                        attempts = attempt + 1
                        break
                    continue
                t_pub = time.monotonic()
                st = publish(tmp, target)
                published = True
                log.debug('"%s": fsync + rename in %.2f s', entry.path, time.monotonic() - t_pub)
                write_record(target, Record.of(st, sha), self.state_dir)
                return
            except fetch.Transient as exc:
                last, actual = exc, None
            finally:
                if not published:
                    tmp.unlink(missing_ok=True)
                    self.progress.add(-received)
                    watcher.received(-received)
        if actual is not None and job:
            raise ModelHashMismatch(
                f'"{entry.path}": the bytes {entry.source.describe()} serves do not hash to '
                f"the entry's sha256 {entry.sha256}",
                hint="correct the entry's sha256, size or source")
        if actual is not None:
            raise ModelHashMismatch(
                f'"{entry.path}": downloaded file has sha256 {actual}, the entry expects '
                f"{entry.sha256} (source {entry.source.describe()}, {attempts} attempts)",
                hint="the source serves other bytes than the lock pins: re-pin it with "
                f"`comfy-worker lock add SOURCE --path {entry.path} --replace` if the change "
                "is intended; otherwise the source or the network corrupts data")
        raise DownloadFailed(
            f'"{entry.path}": download from {entry.source.describe()} failed after '
            f"{attempts} attempts: {last}",
            hint="the source is unreachable or failing; retry later, or raise "
            f"{env_name('retries')}")


def check_source(entry: LockEntry, remote: fetch.Remote, *, job: bool) -> None:
    """Before any byte: the size and (the Hub's LFS) sha256 the source names must be the
    entry's. A job's source is not told back what it holds (no content oracle)."""
    if remote.size is not None and remote.size != entry.size:
        if job:
            raise ModelSizeMismatch(
                f'"{entry.path}": {entry.source.describe()} does not serve the {entry.size} '
                "bytes the entry pins", hint="correct the entry's size and sha256, or its "
                "source")
        raise ModelSizeMismatch(
            f'"{entry.path}": {entry.source.describe()} is {remote.size} '
            f"bytes, the lock says {entry.size}",
            hint="re-pin it with `comfy-worker lock add SOURCE --path "
            f"{entry.path} --replace` if the change is intended")
    if remote.sha256 is not None and remote.sha256 != entry.sha256:
        # The Hub's LFS metadata names the file's sha256: no byte can match.
        if job:
            raise ModelHashMismatch(
                f'"{entry.path}": {entry.source.describe()} holds other bytes than the '
                f"entry's sha256 {entry.sha256} (the Hub's LFS metadata)",
                hint="correct the entry's sha256, size or source")
        raise ModelHashMismatch(
            f'"{entry.path}": {entry.source.describe()} has sha256 '
            f"{remote.sha256} (the Hub's LFS metadata), the entry expects "
            f"{entry.sha256}",
            hint="the entry pins other bytes than the source holds: correct its "
            "sha256 or source (a locked file: `comfy-worker lock add SOURCE "
            f"--path {entry.path} --replace`)")


def remove_stale_temps(target: Path) -> None:
    """Temp files of a killed earlier download (we hold the file's lock: none is live)."""
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*.incomplete"):
        log.info("removing %s, left by an interrupted download", stale)
        stale.unlink(missing_ok=True)


def _missing_bytes(lock: Lockfile, roots: list[Path]) -> int:
    total = 0
    for entry in lock.models:
        if not any(os.path.isfile(root / entry.path) for root in roots):
            total += entry.size
    return total


def sync_models(settings: Settings, *, lock: Lockfile | None = None,
                paths: ModelPaths | None = None, progress: bool | None = None) -> SyncReport:
    """Make every locked file present and verified. Raises ``SyncError`` subclasses.

    ``lock=None`` loads ``settings.lock_path``. ``paths=None`` writes ComfyUI's
    ``extra_model_paths.yaml`` first (:func:`prepare_model_paths`); a caller that did
    that already passes its result. ``progress=None`` draws the bar only when stderr
    is a terminal.
    """
    t0 = time.monotonic()
    if lock is None:
        lock = load_lock(settings.lock_path)
    if paths is None:
        paths = prepare_model_paths(settings, lock)
    roots = list(paths.roots)
    missing = _missing_bytes(lock, roots)
    bar = Progress(missing, bar=progress)
    sync = FileSync(settings, roots, bar)
    if missing:  # fail before the first byte when it cannot fit
        fetch.check_free_space(sync.dest_root, missing,
                               what=f"the missing files of {len(lock.models)} locked models")
    results: dict[str, FileResult] = {}
    bar.start()
    errors: list[BaseException] = []
    try:
        workers = max(1, min(len(lock.models), settings.jobs * 2))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync") as pool:
            futures: dict[Future[FileResult], LockEntry] = {
                pool.submit(sync.run, entry): entry for entry in lock.models}
            try:
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        exc = fut.exception()
                        if exc is None:
                            results[futures[fut].path] = fut.result()
                        elif not isinstance(exc, fetch.Cancelled):
                            errors.append(exc)
                    if errors and not sync.downloads.cancelled.is_set():
                        sync.downloads.cancel()  # stop the other downloads: fail fast
            except BaseException:
                sync.downloads.cancel()
                raise
    finally:
        bar.stop()
    if errors:
        raise errors[0]
    files = tuple(results[m.path] for m in lock.models)
    report = SyncReport(files=files, roots=paths.roots,
                        extra_model_paths=paths.extra_model_paths,
                        seconds=time.monotonic() - t0)
    log.info("synced %d files in %.2f s (%d bytes downloaded)", len(files), report.seconds,
             report.downloaded_bytes)
    return report
