"""Putting a verified file under its final name, and one downloader per file.

A download goes to ``.NAME.<random>.incomplete`` beside the target; only after its
sha256 matched is it fsynced and renamed over the final name (``os.replace`` is atomic
on one filesystem). A per-file ``flock`` on ``.NAME.lock`` makes concurrent syncs on one
volume download each file once: the others wait, then find it verified. A lock file's
holder may remove it (a failed job model leaves nothing behind); whoever locks it checks
that it still holds the file at that path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from comfy_worker.sync.paths import lock_path

log = logging.getLogger(__name__)


def _lock_fd(lock: Path, *, wait: bool, on_wait: str | None = None) -> int | None:
    """An fd holding ``lock`` exclusively (None: held elsewhere and ``wait`` is false).
    A lock file may be removed by its holder (a failed job model leaves none behind), so
    after the lock is taken it must still be the file at that path; else take it again."""
    for _ in range(100):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or not wait:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return None
                raise
            if on_wait:
                log.info("%s", on_wait)
                on_wait = None
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it meanwhile: lock the file there now
    raise OSError(errno.EAGAIN, f"{lock}: replaced again and again while being locked")


@contextlib.contextmanager
def file_lock(target: Path, *, on_wait: str | None = None,
              keep: Callable[[], bool] | None = None) -> Iterator[float]:
    """Hold an exclusive lock for ``target`` (blocking). Yields the seconds waited. The
    lock file stays for the next time, unless ``keep()`` (asked at the end, still
    holding the lock) says otherwise: then it is removed first."""
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    fd = _lock_fd(lock, wait=True, on_wait=on_wait)
    assert fd is not None
    try:
        yield time.monotonic() - t0
    finally:
        try:
            if keep is not None and not keep():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
        finally:
            os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def file_lock_nowait(target: Path) -> Iterator[bool]:
    """Try ``target``'s lock without waiting: yields True holding it, False when another
    holder (a download, a verification) has it."""
    try:
        fd = _lock_fd(lock_path(target), wait=False)
    except OSError:
        yield False
        return
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(tmp: Path, target: Path) -> os.stat_result:
    """Make a verified temp file the final file: fsync, atomic rename, fsync the dir.

    (Cheap: the download started writing the file back while it ran.)
    """
    fsync_file(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return os.stat(target)


def can_write(directory: Path) -> bool:
    """The directory (or its nearest existing ancestor) accepts new files."""
    p = Path(directory)
    while not p.exists():
        if p == p.parent:
            return False
        p = p.parent
    return os.access(p, os.W_OK | os.X_OK)
