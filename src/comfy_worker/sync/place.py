"""Putting a verified file under its final name, and one downloader per file.

A download goes to ``.NAME.<random>.incomplete`` beside the target; only after its
sha256 matched is it fsynced and renamed over the final name (``os.replace`` is atomic
on one filesystem). A per-file ``flock`` on ``.NAME.lock`` makes concurrent syncs on one
volume download each file once: the others wait, then find it verified.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from comfy_worker.sync.paths import lock_path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(target: Path, *, on_wait: str | None = None) -> Iterator[float]:
    """Hold an exclusive lock for ``target`` (blocking). Yields the seconds waited."""
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    t0 = time.monotonic()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if on_wait:
                log.info("%s", on_wait)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.monotonic() - t0
    finally:
        os.close(fd)  # closing releases the lock; the lock file stays (reused next time)


@contextlib.contextmanager
def file_lock_nowait(target: Path) -> Iterator[bool]:
    """Try ``target``'s lock without waiting: yields True holding it, False when another
    holder (a download, a verification) has it."""
    lock = lock_path(target)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
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
