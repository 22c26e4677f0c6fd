"""Read model files ahead into the page cache with large parallel reads.

A model file used in place on a network volume is read by ComfyUI with small
sequential reads (safetensors mmap page faults, ``torch.load``). A network filesystem
pays a round trip per request, so that first load runs at a fraction of the volume's
bandwidth. :func:`read_ahead` reads the files a job will load with many large reads in
flight at once, before the prompt is queued, so that ComfyUI's own loads hit the page
cache::

    report = read_ahead(paths, budget_bytes=memory_budget_now(0.5))

Decisions are pure and tested alone: :func:`plan_reads` (what to read within the budget)
and :func:`memory_budget` (how much memory may be filled). The edges are thin:
:func:`resident_bytes` / :func:`missing_blocks` ask the kernel what is cached
(``mincore(2)``), :func:`read_ahead` reads.

Rules:

* Files already in the page cache are not read again; of a partly cached file only the
  blocks (``block_bytes``, aligned) that are not wholly cached are read. A block is the
  unit of residency, budget and reading, so the rule is exact and needs no merging.
* A file is planned whole (all its missing blocks) or not at all, in the given order: a
  file whose missing bytes would exceed what is left of the budget is skipped (and
  reported), smaller files after it may still fit. The budget counts bytes read, which
  is what the read-ahead adds to the page cache.
* Read-ahead is an optimisation: a file that cannot be read is logged and reported,
  never raised. It reads nothing but the files it is given.
* It never costs much more than the loads it saves: it first reads a little
  (:data:`PROBE_BYTES`) alone and checks that a fresh ``open`` still sees those pages
  cached. On a filesystem that drops a file's cache at ``open`` (FUSE without
  ``kernel_cache``/``auto_cache``, ``direct_io`` mounts) every byte would be read twice,
  so read-ahead stops there and says so.
* ``posix_fadvise(POSIX_FADV_WILLNEED)`` is not used: on FUSE it queues a few
  readahead-window requests and returns, and a later pass still faults in the whole
  file (measured on ``tests/support/slowfs.py``, see ``benchmarks/volume_readahead_module.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_PARALLEL = 16
DEFAULT_BLOCK_BYTES = 16 * MiB
CHUNK_BYTES = 4 * MiB
"""One ``pread`` inside a block. Measured on a 5 ms FUSE volume: as fast as reading a
block in one call, and it bounds each thread's buffer and the time to notice a cancel."""
MINCORE_WINDOW_BYTES = 1 << 30
"""``mincore`` maps a file this much at a time, so huge files use bounded address space."""
PROBE_BYTES = 256 * 1024
"""Read alone first, to check that the filesystem keeps the page cache across opens."""
PROGRESS_LOG_INTERVAL_S = 5.0

PAGE_SIZE = mmap.PAGESIZE


# --- what is cached ---------------------------------------------------------------------


class _Libc:
    """``mmap``/``mincore``/``munmap`` through ctypes; ``ok`` is False where unavailable."""

    def __init__(self) -> None:
        self.ok = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self.mmap = libc.mmap
            self.mincore = libc.mincore
            self.munmap = libc.munmap
        except (OSError, AttributeError) as exc:
            log.debug("mincore unavailable (%s): page-cache residency reads as 0", exc)
            return
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_int64]
        self.mincore.restype = ctypes.c_int
        self.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.munmap.restype = ctypes.c_int
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.ok = True


_LIBC = _Libc()
_MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(b & 1 for b in range(256))


def _page_map(fd: int, offset: int, length: int) -> bytes | None:
    """One byte per page of ``[offset, offset + length)`` (page-aligned offset): 1 if the
    page is in the page cache. None where the kernel cannot tell (no mincore, a file that
    cannot be mapped, e.g. a ``direct_io`` FUSE file)."""
    if not _LIBC.ok:
        return None
    pages = bytearray()
    end = offset + length
    pos = offset
    while pos < end:
        n = min(MINCORE_WINDOW_BYTES, end - pos)
        addr = _LIBC.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, pos)
        if addr is None or addr == _MAP_FAILED:
            log.debug("mincore: cannot map fd %d at %d: %s", fd, pos,
                      os.strerror(ctypes.get_errno()))
            return None
        try:
            vec = (ctypes.c_ubyte * ((n + PAGE_SIZE - 1) // PAGE_SIZE))()
            if _LIBC.mincore(addr, n, vec) != 0:
                log.debug("mincore failed: %s", os.strerror(ctypes.get_errno()))
                return None
            pages += bytes(vec).translate(_LOW_BIT)
        finally:
            _LIBC.munmap(addr, n)
        pos += n
    return bytes(pages)


def resident_bytes(path: Path) -> int:
    """How many bytes of ``path`` are in the page cache now (0 where unknown).

    Maps the file (in windows of :data:`MINCORE_WINDOW_BYTES`) and asks ``mincore(2)``;
    reads none of it. 0 for an empty file, a missing one, or where mincore is unavailable.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        pages = _page_map(fd, 0, size)
    finally:
        os.close(fd)
    if pages is None:
        return 0
    resident = pages.count(1) * PAGE_SIZE
    if pages and pages[-1] and size % PAGE_SIZE:
        resident -= PAGE_SIZE - size % PAGE_SIZE  # the last page is partly beyond the end
    return min(resident, size)


def _missing_in(fd: int, size: int, block_bytes: int) -> tuple[int, ...]:
    pages = _page_map(fd, 0, size) if size else b""
    n_blocks = (size + block_bytes - 1) // block_bytes
    if pages is None:
        return tuple(range(n_blocks))
    per_block = block_bytes // PAGE_SIZE
    return tuple(b for b in range(n_blocks)
                 if pages.count(0, b * per_block, (b + 1) * per_block) > 0)


def missing_blocks(path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[int, ...]:
    """Indices of the ``block_bytes`` blocks of ``path`` not wholly in the page cache
    (every block where the kernel cannot tell). ``block_bytes`` is a multiple of the page
    size. Raises OSError when the file cannot be opened."""
    _check_block(block_bytes)
    fd = os.open(path, os.O_RDONLY)
    try:
        return _missing_in(fd, os.fstat(fd).st_size, block_bytes)
    finally:
        os.close(fd)


def _check_block(block_bytes: int) -> None:
    if block_bytes <= 0 or block_bytes % PAGE_SIZE:
        raise ValueError(f"block_bytes must be a positive multiple of the page size "
                         f"({PAGE_SIZE}), got {block_bytes}")


# --- what to read (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    """One file as the planner sees it: its size and which blocks are not cached."""

    path: Path
    size: int
    missing: tuple[int, ...]
    """Indices of the ``block_bytes`` blocks not wholly in the page cache, ascending."""
    block_bytes: int = DEFAULT_BLOCK_BYTES

    def block(self, index: int) -> tuple[int, int]:
        """(offset, length) of block ``index``; the last block ends at the file's end."""
        offset = index * self.block_bytes
        return offset, max(0, min(self.block_bytes, self.size - offset))

    @property
    def missing_bytes(self) -> int:
        return sum(self.block(i)[1] for i in self.missing)


@dataclass(frozen=True)
class BlockRead:
    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class ReadPlan:
    reads: tuple[BlockRead, ...]
    """In the order to issue them: file by file in the given order, offsets ascending."""
    to_read: tuple[Path, ...]
    resident: tuple[Path, ...]
    """Skipped: wholly in the page cache (or empty)."""
    over_budget: tuple[Path, ...]
    """Skipped: their missing bytes did not fit in what was left of the budget."""
    bytes: int


def plan_reads(files: Sequence[FileState], budget_bytes: int) -> ReadPlan:
    """Decide what to read: every missing block of each file, in the given (priority)
    order, as long as the total stays within ``budget_bytes``.

    A file is planned whole or not at all: one that does not fit is skipped and later,
    smaller files may still fit. Cached blocks are never planned.
    """
    reads: list[BlockRead] = []
    to_read: list[Path] = []
    resident: list[Path] = []
    over: list[Path] = []
    planned = 0
    for f in files:
        need = f.missing_bytes
        if need == 0:
            resident.append(f.path)
        elif planned + need > budget_bytes:
            over.append(f.path)
        else:
            planned += need
            to_read.append(f.path)
            reads.extend(BlockRead(f.path, *f.block(i)) for i in f.missing)
    return ReadPlan(reads=tuple(reads), to_read=tuple(to_read), resident=tuple(resident),
                    over_budget=tuple(over), bytes=planned)


# --- how much memory to fill (pure + thin) ----------------------------------------------

_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def _meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if fields[1:2] == ["kB"] else 1
            values[key.strip()] = int(fields[0]) * scale
    return values


def mem_available(meminfo_text: str) -> int:
    """Bytes of memory available without swapping, from ``/proc/meminfo``'s text:
    ``MemAvailable``, or ``MemFree + Buffers + Cached`` on kernels without it; 0 if
    neither can be read."""
    values = _meminfo(meminfo_text)
    if "MemAvailable" in values:
        return values["MemAvailable"]
    return sum(values.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))


def cgroup_headroom(limit_text: str, usage_text: str, stat_text: str) -> int | None:
    """Bytes the cgroup may still fill before the kernel reclaims its page cache:
    limit - (usage - inactive file pages). None when it has no limit.

    Takes cgroup v2's ``memory.max``, ``memory.current``, ``memory.stat`` or v1's
    ``memory.limit_in_bytes``, ``memory.usage_in_bytes``, ``memory.stat``.
    """
    limit_s = limit_text.strip()
    if not limit_s.isdigit() or int(limit_s) >= _UNLIMITED:
        return None
    usage = int(usage_text.strip()) if usage_text.strip().isdigit() else 0
    stat = {k: int(v) for k, _, v in (line.partition(" ") for line in stat_text.splitlines())
            if v.strip().isdigit()}
    inactive = stat.get("inactive_file", stat.get("total_inactive_file", 0))
    return max(0, int(limit_s) - max(0, usage - inactive))


def memory_budget(fraction: float, meminfo_text: str, *,
                  cgroup_headroom_bytes: int | None = None) -> int:
    """``fraction`` of the memory available now (``/proc/meminfo``'s text, and the
    container's cgroup headroom when it has a limit: ``/proc/meminfo`` shows the host's
    memory inside a container)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    available = mem_available(meminfo_text)
    if cgroup_headroom_bytes is not None:
        available = min(available, cgroup_headroom_bytes)
    return int(available * fraction)


def _cgroup_memory_files(proc_self_cgroup: str) -> tuple[Path, Path, Path] | None:
    """(limit, usage, stat) files of this process's memory cgroup, v2 or v1."""
    v2: Path | None = None
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        rel = rel.lstrip("/")
        if "memory" in controllers.split(","):
            for base in (Path("/sys/fs/cgroup/memory") / rel, Path("/sys/fs/cgroup/memory")):
                if (base / "memory.limit_in_bytes").is_file():
                    return (base / "memory.limit_in_bytes", base / "memory.usage_in_bytes",
                            base / "memory.stat")
        if hierarchy == "0" and controllers == "":
            v2 = Path("/sys/fs/cgroup") / rel
    for base in (v2, Path("/sys/fs/cgroup")):
        if base is not None and (base / "memory.max").is_file():
            return base / "memory.max", base / "memory.current", base / "memory.stat"
    return None


def read_ahead_in_background(files: Sequence[Path], *, memory: float,
                             cancel: threading.Event) -> threading.Thread:
    """:func:`read_ahead` of ``files`` in a thread of its own, within ``memory`` (a
    fraction of the memory available now), until done or ``cancel`` is set."""
    thread = threading.Thread(target=read_ahead, args=(list(files),), name="readahead-startup",
                              kwargs={"budget_bytes": memory_budget_now(memory),
                                      "cancel": cancel}, daemon=True)
    thread.start()
    return thread


def memory_budget_now(fraction: float) -> int:
    """:func:`memory_budget` of this machine (or container) now."""
    return memory_budget(fraction, _read("/proc/meminfo"), cgroup_headroom_bytes=_cgroup_now())


def _cgroup_now() -> int | None:
    files = _cgroup_memory_files(_read("/proc/self/cgroup"))
    if files is None:
        return None
    return cgroup_headroom(*(_read(f) for f in files))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadaheadReport:
    files_read: tuple[Path, ...]
    """Files whose every missing block was read."""
    files_resident: tuple[Path, ...]
    """Skipped: already wholly in the page cache."""
    files_over_budget: tuple[Path, ...]
    """Skipped: would have exceeded the budget."""
    files_failed: tuple[Path, ...]
    """Not read: missing, not a regular file, or a read failed (logged)."""
    bytes_read: int
    bytes_planned: int
    seconds: float
    budget_bytes: int
    cancelled: bool = False
    cache_not_kept: bool = False
    """Stopped early: a fresh open did not see the pages just read (the filesystem drops
    a file's page cache at open, so reading ahead cannot help)."""

    @property
    def cut_by_budget(self) -> bool:
        return bool(self.files_over_budget)

    def to_json(self) -> dict[str, Any]:
        return {
            "files_read": len(self.files_read), "files_resident": len(self.files_resident),
            "files_over_budget": len(self.files_over_budget),
            "files_failed": len(self.files_failed), "bytes_read": self.bytes_read,
            "bytes_planned": self.bytes_planned, "seconds": round(self.seconds, 3),
            "budget_bytes": self.budget_bytes, "cancelled": self.cancelled,
            "cache_not_kept": self.cache_not_kept,
        }


def survey(files: Sequence[Path], block_bytes: int = DEFAULT_BLOCK_BYTES
           ) -> tuple[list[FileState], list[Path]]:
    """Each distinct regular file's size and uncached blocks, in the given order, and the
    files that cannot be read (missing, not regular files). A file named twice (or
    through a link) appears once."""
    _check_block(block_bytes)
    states: list[FileState] = []
    failed: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for path in files:
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                log.warning("read-ahead: %s is not a regular file; not read", path)
                failed.append(path)
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            states.append(FileState(path, st.st_size, missing_blocks(path, block_bytes),
                                    block_bytes))
        except OSError as exc:
            log.warning("read-ahead: cannot open %s (%s); not read", path, exc.strerror)
            failed.append(path)
    return states, failed


def read_ahead(files: Sequence[Path], *, budget_bytes: int,
               parallel: int = DEFAULT_PARALLEL, block_bytes: int = DEFAULT_BLOCK_BYTES,
               on_progress: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None) -> ReadaheadReport:
    """Read ``files`` (highest priority first) into the page cache, at most
    ``budget_bytes`` of them: ``parallel`` threads each read one ``block_bytes`` block at
    a time, in :data:`CHUNK_BYTES` preads, in plan order.

    Skips what is cached already; of a partly cached file reads only the uncached blocks.
    ``on_progress(bytes_done, bytes_total)`` is called from the reading threads (one at a
    time, bytes_done increasing) after every chunk; if it raises, the error is logged and
    it is not called again. ``cancel`` stops it within one chunk's read. Never raises for
    a file it cannot read: see the report.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    if budget_bytes < 0:
        raise ValueError(f"budget_bytes must be 0 or more, got {budget_bytes}")
    t0 = time.monotonic()
    states, failed = survey(files, block_bytes)
    plan = plan_reads(states, budget_bytes)
    for path in plan.over_budget:
        log.info("read-ahead: %s skipped: its %.0f MB would exceed the budget of %.0f MB",
                 path, next(s.missing_bytes for s in states if s.path == path) / 1e6,
                 budget_bytes / 1e6)
    if not plan.reads:
        log.info("read-ahead: nothing to read (%d file(s) already in the page cache)",
                 len(plan.resident))
        return ReadaheadReport((), plan.resident, plan.over_budget, tuple(failed), 0, 0,
                               time.monotonic() - t0, budget_bytes)
    log.info("read-ahead: reading %.0f MB of %d file(s) (%d already in the page cache), "
             "%d x %d MiB reads in flight", plan.bytes / 1e6, len(plan.to_read),
             len(plan.resident), parallel, block_bytes // MiB)
    for f in states:
        if f.path in plan.to_read:
            log.info("read-ahead: %s: %.0f of %.0f MB to read", f.path, f.missing_bytes / 1e6,
                     f.size / 1e6)
    run = _Run(plan, on_progress, cancel)
    run.execute(min(parallel, len(plan.reads)))
    seconds = time.monotonic() - t0
    read_ok = tuple(p for p in plan.to_read if p not in run.failed and p in run.completed)
    report = ReadaheadReport(
        files_read=read_ok, files_resident=plan.resident, files_over_budget=plan.over_budget,
        files_failed=(*failed, *(p for p in plan.to_read if p in run.failed)),
        bytes_read=run.done, bytes_planned=plan.bytes, seconds=seconds,
        budget_bytes=budget_bytes, cancelled=run.cancelled, cache_not_kept=run.cache_not_kept)
    log.info("read-ahead: read %.0f MB of %d file(s) in %.2f s (%.0f MB/s)%s",
             run.done / 1e6, len(read_ok), seconds, run.done / 1e6 / max(seconds, 1e-9),
             " (cancelled)" if run.cancelled else
             " (stopped: the filesystem drops its page cache at open)"
             if run.cache_not_kept else "")
    return report


class _Run:
    """One read-ahead: a probe, then reading threads that take blocks in plan order."""

    def __init__(self, plan: ReadPlan, on_progress: Callable[[int, int], None] | None,
                 cancel: threading.Event | None) -> None:
        self.plan = plan
        self.on_progress = on_progress
        self.cancel = cancel or threading.Event()
        self.lock = threading.Lock()
        self.next = 0  # index of the next block in plan.reads
        self.done = 0  # bytes read
        self.fds: dict[Path, int] = {}
        self.failed: set[Path] = set()
        self.left = {p: 0 for p in plan.to_read}  # blocks still to read, per file
        for r in plan.reads:
            self.left[r.path] += 1
        self.completed: set[Path] = set()
        self.cancelled = False
        self.cache_not_kept = False
        self.t0 = time.monotonic()
        self.last_log = self.t0

    def execute(self, threads: int) -> None:
        try:
            if self._cache_kept():
                workers = [threading.Thread(target=self._work, name=f"readahead-{i}",
                                            daemon=True) for i in range(threads)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
        finally:
            for fd in self.fds.values():
                os.close(fd)
        self.cancelled = self.cancel.is_set() and self.done < self.plan.bytes

    def _cache_kept(self) -> bool:
        """Read the start of the first block alone and check that a fresh open sees it
        cached. Costs one small read; saves reading everything for nothing where the
        filesystem drops a file's page cache at open."""
        if self.cancel.is_set() or not _LIBC.ok:
            return True
        first = self.plan.reads[0]
        fd = self._fd(first.path)
        if fd is None:
            return True
        length = min(PROBE_BYTES, first.length)
        try:
            n = len(os.pread(fd, length, first.offset))
        except OSError:
            return True  # the threads will meet the error and report it
        if n == 0 or _cache_kept(first.path, first.offset, n):
            return True
        log.warning("read-ahead: %s does not keep the page cache across opens (a FUSE "
                    "mount without kernel_cache or auto_cache, or direct_io): reading "
                    "ahead cannot help there; not reading", first.path)
        self.cache_not_kept = True
        self.done = n
        return False

    def _fd(self, path: Path) -> int | None:
        """The file's shared descriptor (pread needs no position), opened once."""
        with self.lock:
            if path in self.failed:
                return None
            fd = self.fds.get(path)
            if fd is None:
                try:
                    fd = self.fds[path] = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    log.warning("read-ahead: cannot open %s (%s)", path, exc.strerror)
                    self.failed.add(path)
                    return None
            return fd

    def _take(self) -> tuple[BlockRead, int] | None:
        while True:
            with self.lock:
                if self.next >= len(self.plan.reads):
                    return None
                read = self.plan.reads[self.next]
                self.next += 1
            fd = self._fd(read.path)
            if fd is not None:
                return read, fd

    def _work(self) -> None:
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        while not self.cancel.is_set():
            taken = self._take()
            if taken is None:
                return
            read, fd = taken
            pos, end = read.offset, read.offset + read.length
            try:
                while pos < end:
                    if self.cancel.is_set():
                        return
                    n = os.preadv(fd, [view[:min(CHUNK_BYTES, end - pos)]], pos)
                    if n <= 0:
                        break  # the file shrank: nothing more to read
                    pos += n
                    self._progress(n)
            except OSError as exc:
                log.warning("read-ahead: reading %s at %d failed (%s); skipping the rest "
                            "of it", read.path, pos, exc.strerror)
                with self.lock:
                    self.failed.add(read.path)
                continue
            with self.lock:
                self.left[read.path] -= 1
                if self.left[read.path] == 0:
                    self.completed.add(read.path)

    def _progress(self, n: int) -> None:
        with self.lock:
            self.done += n
            done = self.done
            if self.on_progress is not None:
                try:
                    self.on_progress(done, self.plan.bytes)
                except Exception:
                    log.exception("read-ahead: the progress callback failed; not calling "
                                  "it again")
                    self.on_progress = None
            now = time.monotonic()
            if now - self.last_log < PROGRESS_LOG_INTERVAL_S:
                return
            self.last_log = now
        log.info("read-ahead: %.0f/%.0f MB (%.0f%%), %.0f MB/s", done / 1e6,
                 self.plan.bytes / 1e6, 100 * done / self.plan.bytes,
                 done / 1e6 / (now - self.t0))


def _cache_kept(path: Path, offset: int, length: int) -> bool:
    """Does a fresh open of ``path`` still see the bytes just read in the page cache?

    False where the file cannot be mapped: ``direct_io`` FUSE files bypass the page cache
    and refuse shared maps.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        start = offset - offset % PAGE_SIZE
        pages = _page_map(fd, start, offset + length - start)
    finally:
        os.close(fd)
    if pages is None:
        return False
    return pages.count(1) * 2 >= len(pages)
