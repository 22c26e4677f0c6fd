"""A slow volume for tests and benchmarks: a read-only FUSE passthrough with latency.

Network volumes (RunPod's ``/runpod-volume``, ``/workspace``) pay a round trip for every
read request, so small sequential reads crawl while large parallel reads reach the
link's bandwidth, and pages already in the page cache cost nothing. This module mounts a
directory so that it behaves the same way::

    with slow_volume(backing, mountpoint, latency_s=0.005) as volume:
        (mountpoint / "model.safetensors").read_bytes()   # read requests, each slow
        volume.stats()                                      # SlowFsStats(reads=..., ...)

* Every ``read`` request the kernel sends sleeps ``latency_s`` before it is served
  (metadata calls are not delayed: the kernel caches attributes anyway). The daemon is
  multi-threaded, so requests in flight at the same time overlap their latency, as on a
  network volume.
* Mounted with ``kernel_cache``: the kernel keeps a file's pages across opens (FUSE's
  default drops them at every ``open``), as NFS and network-volume clients do for files
  that did not change. ``max_read`` and ``max_readahead`` are raised to what the kernel
  will take; libfuse 2 does not negotiate FUSE_MAX_PAGES, so one request carries at most
  128 KiB however large the read.
* Read-only: write files into ``backing_dir`` directly; they appear under the mount.
* The daemon runs in its own process. It cannot share the test's process: touching an
  mmap page holds the GIL while the kernel waits for the FUSE daemon, and a daemon in
  the same interpreter would then wait for that GIL forever.

Needs ``/dev/fuse``, ``libfuse.so.2`` (Debian ``libfuse2``), ``fusepy`` (the ``test``
extra) and, unless running as root, ``fusermount`` (Debian ``fuse``).
:func:`fuse_unavailable` says what is missing; ``scripts/test.sh`` installs them.

Page-cache helpers for cold-cache tests: :func:`drop_caches` (the whole machine; root)
and :func:`evict_file` (``posix_fadvise(DONTNEED)`` on one file, which leaves the rest of
the machine alone).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 10.0
CACHE_MODES = ("kernel_cache", "auto_cache", "none")
MAX_READ_BYTES = 1 << 20
"""Asked for; the kernel caps a request at its own limit (128 KiB with libfuse 2)."""


@dataclass(frozen=True)
class SlowFsStats:
    """What the kernel asked the volume for since mount (or the last ``reset_stats``)."""

    reads: int
    """Read requests served (each paid ``latency_s``)."""
    read_bytes: int
    largest_read: int
    """The largest single request, in bytes."""
    opens: int
    max_in_flight: int
    """The most read requests served at the same time."""
    files_read: tuple[str, ...] = ()
    """Paths (relative to the mountpoint, sorted) that read requests asked for."""


def _fusermount() -> str | None:
    return shutil.which("fusermount") or shutil.which("fusermount3")


def _unmount(mountpoint: Path | str, *, lazy: bool) -> subprocess.CompletedProcess[str]:
    tool = _fusermount()
    if tool is not None:
        cmd = [tool, "-u", *(["-z"] if lazy else []), str(mountpoint)]
    else:  # root without the fuse package: libfuse mounted with mount(2) itself
        cmd = ["umount", *(["-l"] if lazy else []), str(mountpoint)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def fuse_unavailable() -> str | None:
    """Why a slow volume cannot be mounted here, or None when it can."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if os.geteuid() != 0 and _fusermount() is None:
        return "no fusermount (apt-get install fuse) and not root"
    try:
        import fuse  # noqa: F401  (fusepy; loads libfuse.so.2 on import)
    except ImportError:
        return "fusepy is not installed (pip install -e '.[test]')"
    except OSError as exc:  # fusepy raises EnvironmentError when libfuse is missing
        return f"libfuse2 cannot be loaded ({exc}; apt-get install libfuse2)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    return None


class SlowVolume:
    """A mounted slow volume; :func:`slow_volume` makes one and unmounts it.

    The daemon is this file run as a program; it answers ``stats``, ``reset`` and
    ``latency S`` commands, one line each, on its stdin/stdout, and unmounts itself
    when its stdin closes (so a test process that dies leaves no mount behind).
    """

    def __init__(self, backing_dir: Path, mountpoint: Path, latency_s: float, *,
                 cache: str = "kernel_cache", options: Sequence[str] = ()) -> None:
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.backing_dir = backing_dir
        self.mountpoint = mountpoint
        self.cache = cache
        self.options = tuple(options)
        self._latency_s = latency_s
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def latency_s(self) -> float:
        return self._latency_s

    def set_latency(self, seconds: float) -> None:
        """Change the per-request latency of the running volume."""
        self._command(f"latency {seconds!r}")
        self._latency_s = seconds

    def stats(self) -> SlowFsStats:
        values = json.loads(self._command("stats"))
        return SlowFsStats(**{**values, "files_read": tuple(values["files_read"])})

    def reset_stats(self) -> None:
        self._command("reset")

    def _command(self, line: str) -> str:
        with self._lock:
            proc = self._process
            if proc is None or proc.stdin is None or proc.stdout is None:
                raise RuntimeError("slowfs: the volume is not mounted")
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"slowfs: the daemon exited (status {proc.poll()})")
        return answer.strip()

    def mount(self) -> None:
        self.backing_dir.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mountpoint):
            raise RuntimeError(f"slowfs: {self.mountpoint} is already a mountpoint")
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.backing_dir),
             str(self.mountpoint), "--latency", repr(self._latency_s),
             "--options", ",".join(self._mount_options())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(self.mountpoint):
            if self._process.poll() is not None:
                status = self._process.returncode
                self._process = None
                raise RuntimeError(f"slowfs: the FUSE daemon exited with status {status} "
                                   f"before {self.mountpoint} was mounted (its stderr says why)")
            if time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"slowfs: {self.mountpoint} not mounted after "
                                   f"{MOUNT_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        log.debug("slowfs: %s mounted on %s (%.1f ms per read request)", self.backing_dir,
                  self.mountpoint, self._latency_s * 1e3)

    def _mount_options(self) -> list[str]:
        opts = ["ro", f"max_read={MAX_READ_BYTES}", f"max_readahead={MAX_READ_BYTES}",
                "fsname=slowfs", "subtype=slowfs"]
        if self.cache != "none":
            opts.append(self.cache)
        return [*opts, *self.options]

    def unmount(self) -> None:
        """Unmount (lazily if something still holds a file open) and reap the daemon."""
        if os.path.ismount(self.mountpoint):
            done = _unmount(self.mountpoint, lazy=False)
            if done.returncode != 0:
                log.warning("slowfs: unmounting %s: %s; unmounting lazily",
                            self.mountpoint, done.stderr.strip())
                _unmount(self.mountpoint, lazy=True)
        proc, self._process = self._process, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def slow_volume(backing_dir: Path, mountpoint: Path, latency_s: float, *,
                cache: str = "kernel_cache", options: Sequence[str] = ()
                ) -> Iterator[SlowVolume]:
    """Mount ``backing_dir`` read-only on ``mountpoint`` (both made if missing); every
    read request costs ``latency_s`` seconds. Unmounts on exit.

    ``cache``: ``"kernel_cache"`` (pages kept across opens, like a network volume),
    ``"auto_cache"`` (kept unless the file's mtime or size changed) or ``"none"`` (FUSE's
    default: a file's pages are dropped at every open). ``options``: more ``-o`` mount
    options, e.g. ``("max_background=64",)``.
    """
    volume = SlowVolume(backing_dir, mountpoint, latency_s, cache=cache, options=options)
    volume.mount()
    try:
        yield volume
    finally:
        volume.unmount()


def drop_caches() -> bool:
    """Drop the whole page cache (``echo 3 > /proc/sys/vm/drop_caches``).

    Affects every process on the machine; prefer :func:`evict_file` where it does.
    Returns False where it is not allowed (not root, read-only /proc).
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def evict_file(path: Path) -> None:
    """Drop one file's pages from the page cache (``posix_fadvise(DONTNEED)``, after
    writing back any dirty pages, which DONTNEED would keep).

    On a slow volume, evict the file under the mountpoint: that is the client's cache.
    The backing file's pages are the far side's cache; leaving them warm keeps the
    daemon's own reads fast, so the latency a test sees is the one it asked for.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # read-only filesystems have nothing dirty
            os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- the daemon (this file run as a program) -------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.reads = self.read_bytes = self.largest_read = self.opens = 0
        self.in_flight = self.max_in_flight = 0
        self.files_read: set[str] = set()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"reads": self.reads, "read_bytes": self.read_bytes,
                    "largest_read": self.largest_read, "opens": self.opens,
                    "max_in_flight": self.max_in_flight,
                    "files_read": sorted(self.files_read)}


class _Passthrough:
    """fusepy operations: read-only passthrough; each read sleeps ``latency_s`` first."""

    use_ns = True

    def __init__(self, root: str, latency_s: float) -> None:
        self.root = root
        self.latency_s = latency_s
        self.counters = _Counters()

    def __call__(self, op: str, *args: Any) -> Any:
        handler = getattr(self, op, None)
        if handler is None:
            raise _fuse_error(errno.ENOSYS)
        return handler(*args)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # metadata

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        st = os.lstat(self._full(path))
        return {"st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_uid": st.st_uid,
                "st_gid": st.st_gid, "st_size": st.st_size, "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                            "f_favail", "f_ffree", "f_files", "f_flag",
                                            "f_frsize", "f_namemax")}

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._full(path), amode):
            raise _fuse_error(errno.EACCES)

    # data

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise _fuse_error(errno.EROFS)
        with self.counters.lock:
            self.counters.opens += 1
        return os.open(self._full(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        c = self.counters
        with c.lock:
            c.in_flight += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        data = b""
        try:
            if self.latency_s > 0:
                time.sleep(self.latency_s)
            data = os.pread(fh, size, offset)
        finally:
            with c.lock:
                c.in_flight -= 1
                c.reads += 1
                c.read_bytes += len(data)
                c.largest_read = max(c.largest_read, size)
                c.files_read.add(path.lstrip("/"))
        return data

    def release(self, path: str, fh: int) -> None:
        os.close(fh)


def _fuse_error(code: int) -> OSError:
    from fuse import FuseOSError

    return FuseOSError(code)


def _control(ops: _Passthrough, mountpoint: str) -> None:
    """Answer the parent's commands; unmount when it goes away."""
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "stats":
            answer = json.dumps(ops.counters.snapshot())
        elif cmd == "reset":
            with ops.counters.lock:
                in_flight = ops.counters.in_flight
                ops.counters.reset()
                ops.counters.in_flight = in_flight
            answer = "ok"
        elif cmd == "latency":
            ops.latency_s = float(arg)
            answer = "ok"
        else:
            answer = f"unknown command {cmd!r}"
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    _unmount(mountpoint, lazy=True)


def _main() -> None:
    parser = argparse.ArgumentParser(description="slowfs daemon (see the module docstring)")
    parser.add_argument("backing_dir")
    parser.add_argument("mountpoint")
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--options", default="ro", help="-o mount options, comma-separated")
    args = parser.parse_args()
    from fuse import FUSE

    ops = _Passthrough(os.path.abspath(args.backing_dir), args.latency)
    threading.Thread(target=_control, args=(ops, args.mountpoint), daemon=True).start()
    options = dict(o.partition("=")[::2] for o in args.options.split(",") if o)
    FUSE(ops, args.mountpoint, foreground=True, nothreads=False,
         **{k: v or True for k, v in options.items()})


if __name__ == "__main__":
    _main()
