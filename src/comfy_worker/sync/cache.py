"""The request cache: models a job brings (not in the lock), kept on disk under a size
cap, the least recently used evicted first.

A request file is a model file with a ``.NAME.used`` sidecar beside it
(:func:`~comfy_worker.sync.paths.used_path`). The sidecar's mtime is the file's last
use: every claim touches it, so workers sharing a volume see each other's use, and a
worker finds its cache again after a restart by listing sidecars (:func:`list_cache`).
Its content (JSON: sha256, size) is for people. A file without a sidecar (a locked
file, a file put there by hand) is never evicted.

While a worker uses a request file it holds a shared ``flock`` on the sidecar
(:class:`UseLock`). Eviction (:func:`evict`) takes an exclusive one without waiting and
skips a file it cannot get, so a file in use by any process on this host (on any host,
where the volume's flock spans hosts) is not evicted; it also skips a file whose
download lock is held (being replaced or verified) and any file the caller protects
(its lock's paths, its live claims).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from comfy_worker.sync.paths import STATE_DIR, used_path
from comfy_worker.sync.place import file_lock_nowait
from comfy_worker.sync.record import remove_record

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 10 * 1024**3
"""10 GiB: room for hundreds of LoRAs (10-800 MB each) or one or two checkpoints, beside
a 50-100 GB lock on a typical volume or on a 20-50 GB container disk."""

_SIDECAR = re.compile(r"^\.(.+)\.used$")


@dataclass(frozen=True)
class CachedFile:
    """A request file on disk."""

    path: str
    """POSIX path relative to the models root, e.g. ``loras/user-1.safetensors``."""
    location: Path
    size: int
    last_used: float
    """The sidecar's mtime (seconds since the epoch)."""


# --- decisions (pure) -------------------------------------------------------------------


def bytes_to_free(*, cached: int, pending: int, size: int, cap: int, free_disk: int) -> int:
    """Bytes to evict so ``size`` more bytes fit under ``cap`` (with ``cached`` bytes of
    request files on disk and ``pending`` bytes of others being downloaded) and on the
    disk (``free_disk`` bytes free)."""
    return max(0, cached + pending + size - cap, size - free_disk)


def eviction_order(files: Iterable[CachedFile], *, protected: Callable[[str], bool]
                   ) -> list[CachedFile]:
    """The files that may be evicted, least recently used first."""
    return sorted((f for f in files if not protected(f.path)),
                  key=lambda f: (f.last_used, f.path))


@dataclass(frozen=True)
class EvictionPlan:
    """How to make room for one more request file (:func:`plan_eviction`)."""

    need: int
    """Bytes to free."""
    candidates: tuple[CachedFile, ...]
    """The files that may go, least recently used first: evict them in order until
    ``need`` bytes are freed (skipping one another process still holds)."""
    fits: bool
    """Whether evicting every candidate would make the file fit under the cap; when not,
    nothing should be evicted: the file can never fit now."""


def plan_eviction(files: Iterable[CachedFile], *, size: int, pending: int, cap: int,
                  free_disk: int, protected: Callable[[str], bool]) -> EvictionPlan:
    """The eviction policy (pure): least recently used first, never a ``protected`` file
    (locked, or in use), and only as many bytes as ``size`` more need under ``cap`` (with
    ``pending`` bytes of other request files downloading) and on the disk."""
    files = list(files)
    candidates = eviction_order(files, protected=protected)
    cached = sum(f.size for f in files)
    kept = cached - sum(f.size for f in candidates)
    return EvictionPlan(
        need=bytes_to_free(cached=cached, pending=pending, size=size, cap=cap,
                           free_disk=free_disk),
        candidates=tuple(candidates), fits=kept + pending + size <= cap)


# --- on disk ----------------------------------------------------------------------------


def list_cache(root: Path) -> list[CachedFile]:
    """Every request file under ``root`` (a sidecar beside an existing file)."""
    found: list[CachedFile] = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        names = set(filenames)
        for name in filenames:
            m = _SIDECAR.match(name)
            if m is None or m.group(1) not in names:
                continue
            location = Path(dirpath) / m.group(1)
            try:
                size = os.stat(location).st_size
                last_used = os.stat(Path(dirpath) / name).st_mtime
            except OSError:
                continue  # evicted meanwhile
            found.append(CachedFile(location.relative_to(root).as_posix(), location, size,
                                    last_used))
    return found


def touch(location: Path) -> None:
    """Record a use of the request file at ``location`` (best effort)."""
    with contextlib.suppress(OSError):
        os.utime(used_path(location))


def unmark(location: Path) -> None:
    """``location`` is a locked file: take its sidecar away, so no worker evicts it."""
    with contextlib.suppress(OSError):
        used_path(location).unlink()


class UseLock:
    """A shared ``flock`` on a request file's sidecar, held while the file is in use."""

    def __init__(self, fd: int, sidecar: Path) -> None:
        self._fd: int | None = fd
        self.sidecar = sidecar

    @classmethod
    def take(cls, target: Path, *, create: bool, sha256: str = "", size: int = 0
             ) -> UseLock | None:
        """Lock ``target``'s sidecar, creating it when ``create`` (which makes ``target``
        a request file); None when there is none (or it cannot be made)."""
        sidecar = used_path(target)
        for _ in range(20):
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            try:
                fd = os.open(sidecar, flags, 0o644)
            except OSError:
                return None  # none there, or the directory is read-only
            fcntl.flock(fd, fcntl.LOCK_SH)  # an eviction holds it only briefly
            try:
                same = os.fstat(fd).st_ino == os.stat(sidecar).st_ino
            except FileNotFoundError:
                same = False  # evicted while we waited: our lock is on a removed file
            if same:
                if create and os.fstat(fd).st_size == 0:
                    with contextlib.suppress(OSError):
                        os.write(fd, json.dumps({"sha256": sha256, "size": size}).encode())
                    touch(target)
                return cls(fd, sidecar)
            os.close(fd)
            if not create:
                return None
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock_sidecar_nowait(sidecar: Path) -> int | None:
    """An fd holding ``sidecar`` exclusively, or None (missing, or in use)."""
    try:
        fd = os.open(sidecar, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        same = os.fstat(fd).st_ino == os.stat(sidecar).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def evict(file: CachedFile, *, protected: Callable[[str], bool], state_dir: Path | None
          ) -> bool:
    """Remove a request file, its record and its sidecar; False (nothing removed) when
    it is in use, being downloaded or verified, or ``protected``."""
    with file_lock_nowait(file.location) as got:
        if not got:
            return False
        fd = _lock_sidecar_nowait(used_path(file.location))
        if fd is None:
            return False
        try:
            if protected(file.path):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file.location)
            remove_record(file.location, state_dir)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(used_path(file.location))
            return True
        finally:
            os.close(fd)


def remove_orphan_sidecar(target: Path) -> None:
    """Remove ``target``'s sidecar when ``target`` does not exist and nobody uses it (a
    request file whose download failed)."""
    if target.exists():
        return
    sidecar = used_path(target)
    fd = _lock_sidecar_nowait(sidecar)
    if fd is None:
        return
    try:
        if not target.exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sidecar)
    finally:
        os.close(fd)
