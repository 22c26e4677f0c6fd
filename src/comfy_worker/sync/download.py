"""One file's download: byte ranges over parallel connections, sha256 as the bytes land.

A :class:`Download` splits the file into ranges (parts) and runs up to ``connections``
threads. Each thread takes the lowest part nobody holds, GETs it with a ``Range``
header, and ``pwrite``s each block at its offset. A part's bytes are written strictly
in order, so every part has a written prefix that never changes again: a cut or
stalled connection or a yield resumes the part from that prefix's end (a new
``Range`` request), never rewriting a byte.

The hash follows the file, not the network: the calling thread hashes the contiguous
written prefix of the file (all parts before the first unfinished one, plus that one's
written prefix) as it grows, reading it back from the page cache while it is still
there. When the last byte is written only the last few blocks remain to hash, so the
sha256 adds no tail to the download. Since the hash covers the bytes in the file, not
the bytes received, a write that never landed cannot pass.

Why not hf_transfer (0.1.9): its progress callback reports only a byte count per
finished chunk, in completion order, without the chunk's offset; a failed chunk is
downloaded and written again from its start, over bytes already written; and a failed
write (ENOSPC) can be dropped silently. Nothing outside it can tell which bytes of the
file are final, so a hash cannot follow it soundly. Python threads do the same job at
the same speed here: socket reads, ``pwrite`` and ``hashlib`` all release the GIL.

While the hash advances, :class:`Writeback` asks the kernel to start writing the hashed
prefix to disk (``sync_file_range``), so the fsync before the rename finds little left.

Bandwidth can be shared by priority (for a scheduler of downloads): all downloads of a
sync draw connection slots from one :class:`Gate`; waiting downloads get slots highest
priority first, and while a download of higher priority runs (or waits for a slot), a
lower one gives its slots up at the next block and takes none until it is done. Raising
a running download's :attr:`~Download.priority` takes effect at its next block, with no
byte fetched again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import heapq
import itertools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.net.policy import UrlPolicy
from comfy_worker.sync.plan import backoff_seconds

log = logging.getLogger(__name__)

MIB = 1024 * 1024
BLOCK = MIB
"""Bytes per read and write: few enough calls at 300 MB/s, a short wait to yield."""
_HASH_BUFFER = 4 * MIB


class Transient(Exception):
    """A failure worth retrying (5xx, 429, cut connection, timeout, stall)."""


class Cancelled(Exception):
    """The download was cancelled (another file failed, or an interrupt)."""


class SizeExceeded(Exception):
    """The server sent more than the download's size (a byte past it arrived, and was
    not written)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"more than {size} bytes")
        self.size = size


def is_transient_network_error(exc: BaseException) -> bool:
    """A connection error, timeout or cut stream from requests/urllib3/the socket layer:
    worth retrying. TLS failures (certificates) and malformed requests are not."""
    import http.client

    import requests
    import urllib3

    if isinstance(exc, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
        return False
    return isinstance(exc, requests.ConnectionError | requests.Timeout
                      | requests.exceptions.ChunkedEncodingError
                      | urllib3.exceptions.ProtocolError | urllib3.exceptions.TimeoutError
                      | http.client.IncompleteRead | ConnectionError | TimeoutError)


# --- sharing connections --------------------------------------------------------------


class Gate:
    """Connection slots shared by downloads, granted highest priority first.

    Every range request holds one slot. While a download of higher priority runs
    (:meth:`enter` .. :meth:`leave`) or waits for a slot, a lower one gives its slots up
    at its next block (:meth:`must_yield`) and is granted none, so a high priority
    download gets all the bandwidth within a block's time; it does not wait for that
    block: it is lent slots at once while lower ones still hold theirs. Downloads of one
    priority share the slots.
    """

    def __init__(self, slots: int) -> None:
        self._slots = max(1, slots)
        self._free = self._slots
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # heap of (-priority, arrival)
        self._seq = itertools.count()
        self._running: dict[int, int] = {}  # priority -> downloads running at it

    def _outranked(self, priority: int) -> bool:
        """A download of higher priority runs or waits (under ``_cond``)."""
        return (bool(self._waiting) and -self._waiting[0][0] > priority) or any(
            p > priority for p in self._running)

    def acquire(self, priority: int | Callable[[], int], stop: threading.Event) -> bool:
        """Wait for a slot; False (no slot) once ``stop`` is set.

        ``priority`` may be a function, read again whenever the waiter wakes, so a
        download whose priority changes while it waits is ranked anew.
        """
        current = priority if callable(priority) else (lambda: priority)
        with self._cond:
            ticket = (-current(), next(self._seq))
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    now = current()
                    if -ticket[0] != now:  # re-ranked: keep the place in arrival order
                        self._waiting.remove(ticket)
                        ticket = (-now, ticket[1])
                        heapq.heapify(self._waiting)
                        heapq.heappush(self._waiting, ticket)
                    if (self._has_slot_for(now) and self._waiting[0] == ticket
                            and not any(p > now for p in self._running)):
                        break
                    if stop.is_set():
                        return False
                    self._cond.wait(0.5)
                heapq.heappop(self._waiting)
                self._free -= 1
                return True
            finally:
                if ticket in self._waiting:  # gave up
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                self._cond.notify_all()

    def _has_slot_for(self, priority: int) -> bool:
        """A free slot; or, while lower-priority downloads hold the slots, one lent ahead
        of their yield (they give theirs back at their next block), so a job's file
        starts at once instead of after a block's time on a slow link. At most twice
        the slots are ever in use."""
        if self._free > 0:
            return True
        return self._free > -self._slots and any(p < priority for p in self._running)

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def must_yield(self, priority: int) -> bool:
        """A download of higher priority runs or waits for a slot."""
        with self._cond:
            return self._outranked(priority)

    def enter(self, priority: int) -> None:
        """A download of ``priority`` is under way: running, or about to (a scheduler
        may enter for a file a job waits for before its download starts). Lower ones
        make way until it leaves."""
        with self._cond:
            self._running[priority] = self._running.get(priority, 0) + 1
            self._cond.notify_all()

    def leave(self, priority: int) -> None:
        with self._cond:
            left = self._running.get(priority, 0) - 1
            if left > 0:
                self._running[priority] = left
            else:
                self._running.pop(priority, None)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiters re-check their stop flags now."""
        with self._cond:
            self._cond.notify_all()


# --- writeback ------------------------------------------------------------------------


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), loaded on first use; None elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


class Writeback:
    """Starts writing a file's finished prefix to disk while the download goes on.

    Each time the prefix has grown by ``step`` bytes, a thread asks the kernel to start
    writing it back (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, asynchronous;
    elsewhere, or where the filesystem refuses it, ``fdatasync``). The final fsync then
    only waits for the last ``step`` bytes. Errors are left to that fsync to report.
    """

    def __init__(self, fd: int, *, step: int = 32 * MIB) -> None:
        self.fd = fd
        self.step = step
        self._target = 0
        self._done = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def advance(self, upto: int) -> None:
        with self._cond:
            if upto - self._done >= self.step:
                self._target = upto
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        sync_file_range = _sync_file_range()
        while True:
            with self._cond:
                while self._target <= self._done and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                start, end = self._done, self._target
                self._done = end
            try:
                if sync_file_range is not None:
                    if sync_file_range(self.fd, start, end - start, _SYNC_FILE_RANGE_WRITE):
                        err = ctypes.get_errno()
                        if err in (errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP):
                            sync_file_range = None
                            os.fdatasync(self.fd)
                        else:
                            raise OSError(err, os.strerror(err))
                else:
                    os.fdatasync(self.fd)
            except OSError as exc:  # the final fsync reports it, if it matters
                log.debug("writeback stopped: %s", exc)
                return


# --- one download ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tuning:
    connections: int = 8
    """Parallel range requests (threads) for this file."""
    chunk_size: int = 8 * MIB
    """Bytes per range (part)."""
    retries: int = 3
    """Retries of a part that fails without progress (progress resets the count)."""
    stall_timeout: float = 60.0
    """Seconds a connection may deliver nothing before it is dropped and the part resumed."""
    connect_timeout: float = 10.0


class _Part:
    __slots__ = ("end", "held", "start", "written")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end  # exclusive
        self.written = 0
        self.held = False

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def done(self) -> bool:
        return self.start + self.written >= self.end


class _Yielded(Exception):
    """A worker gave its part back (pause, or a higher priority download waits)."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HashedFile:
    """The file's parts, what of each is written, and the sha256 of the written prefix
    as it grows. Every method runs under ``cond`` (the download's), but :meth:`hash`,
    which takes it itself."""

    def __init__(self, size: int, chunk: int | None, cond: threading.Condition) -> None:
        self.size = size
        if chunk:
            self.parts = [_Part(a, min(a + chunk, size)) for a in range(0, size, chunk)]
        else:
            self.parts = [_Part(0, size)]
        self._cond = cond
        self._first = 0  # index of the first unfinished part
        self.received = 0
        self.hashed = 0
        self.hashed_at_last_byte: int | None = None

    def take(self) -> _Part | None:
        """The lowest part nobody holds, or None when all are done or held."""
        for part in self.parts[self._first:]:
            if not part.held and not part.done:
                part.held = True
                return part
        return None

    def wrote(self, part: _Part, n: int) -> None:
        part.written += n
        self.received += n
        if self.received == self.size:
            self.hashed_at_last_byte = self.hashed
        self._cond.notify_all()

    def frontier(self) -> tuple[int, bool]:
        """(end of the contiguous written prefix, every part finished)."""
        while self._first < len(self.parts) and self.parts[self._first].done:
            self._first += 1
        if self._first == len(self.parts):
            last = self.parts[-1]
            return last.start + last.written, True
        part = self.parts[self._first]
        return part.start + part.written, False

    def hash(self, fd: int, writeback: Writeback, check: Callable[[], None]) -> str:
        """Hash the written prefix as it grows until the whole file is hashed;
        ``check()`` (under the lock) raises when the download failed or stopped."""
        h = hashlib.sha256()
        buf = bytearray(_HASH_BUFFER)
        view = memoryview(buf)
        while True:
            with self._cond:
                while True:
                    check()
                    upto, finished = self.frontier()
                    if upto > self.hashed or finished:
                        break
                    self._cond.wait(1.0)
            while self.hashed < upto:
                n = os.preadv(fd, [view[:min(len(buf), upto - self.hashed)]], self.hashed)
                if n <= 0:
                    raise OSError(f"shorter than the {upto} bytes written")
                h.update(view[:n])
                self.hashed += n
            writeback.advance(self.hashed)
            if finished and self.hashed >= upto:
                return h.hexdigest()


def check_range_answer(r: Any, *, ranged: bool, offset: int, part: _Part, size: int,
                       describe: str) -> None:
    """Raise :class:`Transient` unless ``r`` (not an error) answers the request for the
    rest of ``part`` from ``offset``: a 200 for a plain GET or the whole file, else a 206
    whose Content-Range is exactly the bytes asked for."""
    if not ranged:
        if r.status_code != 200:
            raise Transient(f"{describe}: answered {r.status_code} to a plain GET")
        return
    if r.status_code == 200 and offset == 0 and part.end == size:
        return  # the whole file, which is what was asked for
    if r.status_code != 206:
        raise Transient(f"{describe}: answered {r.status_code} to a range request "
                        "(expected 206)")
    m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", ""))
    if (m is None or int(m.group(1)) != offset or int(m.group(2)) != part.end - 1
            or (m.group(3) != "*" and int(m.group(3)) != size)):
        raise Transient(f"{describe}: asked for bytes {offset}-{part.end - 1} of "
                        f"{size}, got Content-Range {r.headers.get('Content-Range')!r}")


def network_error(exc: BaseException, describe: str, tuning: Tuning) -> Exception:
    """A network exception as :class:`Transient` (with what happened), or as it is."""
    import requests
    import urllib3

    if isinstance(exc, requests.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError):
        return Transient(f"{describe}: no connection within {tuning.connect_timeout:g} s")
    if isinstance(exc, requests.Timeout | urllib3.exceptions.ReadTimeoutError
                  | socket.timeout):
        return Transient(f"{describe}: no data for {tuning.stall_timeout:g} s "
                         "(stalled connection)")
    if is_transient_network_error(exc):
        return Transient(f"{describe}: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class Download:
    """One file of ``size`` bytes from one URL into ``dest`` (which exists), hashed on
    the way. Never more than ``size`` bytes are written: a server that sends more (or
    never ends) fails it with :class:`SizeExceeded` at ``size + 1`` bytes.

    ``ranges``: parts of ``tuning.chunk_size`` over up to ``tuning.connections``
    connections, each part resumed where it stopped after a cut, a stall, a 5xx or a
    pause. Otherwise one plain GET, which cannot resume: any failure fails the download
    (:class:`Transient` when the caller may retry it from scratch). ``policy``: every
    connection obeys that URL policy (a job's URL; :mod:`comfy_worker.net.http`), and
    redirects are followed hop by hop.

    ``http_error(status)`` maps an HTTP error status to the exception to raise (a
    :class:`Transient` for 5xx/429 is retried). :meth:`run` blocks and returns the
    sha256 of the file; it raises that, :class:`Transient`, :class:`Cancelled`, or an
    ``OSError`` from writing (ENOSPC: the disk is full).
    """

    def __init__(self, url: str, headers: Mapping[str, str], dest: Path, *,
                 size: int, ranges: bool, http_error: Callable[[int], Exception],
                 describe: str = "", tuning: Tuning | None = None, gate: Gate | None = None,
                 priority: int = 0, on_bytes: Callable[[int], None] | None = None,
                 policy: UrlPolicy | None = None) -> None:
        self.url = url
        self.headers = {**headers, "Accept-Encoding": "identity"}
        self.dest = Path(dest)
        self.size = size
        self.tuning = tuning or Tuning()
        self.ranged = bool(ranges and size)
        self.http_error = http_error
        self.describe = describe or url
        self.gate = gate or Gate(self.tuning.connections)
        self.policy = policy
        self._priority = priority
        self.on_bytes = on_bytes
        self._cond = threading.Condition()
        self._file = HashedFile(size, max(1, self.tuning.chunk_size) if self.ranged else None,
                                self._cond)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._responses: set[Any] = set()
        self._finished = False
        self._entered = False  # counted as running by the gate
        self.range_retries = 0
        """Range requests that failed and were resumed."""

    # --- state for a scheduler --------------------------------------------------------

    @property
    def received(self) -> int:
        """Bytes written to the file so far (each byte once)."""
        return self._file.received

    @property
    def hashed(self) -> int:
        """Bytes of the file's prefix hashed so far."""
        return self._file.hashed

    @property
    def tail_hashed(self) -> int | None:
        """Bytes hashed after the last byte was written (None until then): the wait
        the hash added to the download."""
        last = self._file.hashed_at_last_byte
        return None if last is None else self._file.hashed - last

    @property
    def priority(self) -> int:
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        """Takes effect at once: the gate ranks this download anew, and each connection
        yields (or stops yielding) at its next block; no byte is fetched again."""
        with self._cond:
            old, self._priority = self._priority, value
            if self._entered and old != value:
                self.gate.leave(old)
                self.gate.enter(value)
        self.gate.wake()

    def cancel(self) -> None:
        """Stop now: open connections are shut down; :meth:`run` raises Cancelled."""
        self._stop.set()
        with self._cond:
            responses = list(self._responses)
            self._cond.notify_all()
        for r in responses:
            _abort(r)
        self.gate.wake()

    # --- running ----------------------------------------------------------------------

    def run(self) -> str:
        """Download and hash (once per object); see the class for what it raises."""
        fd = os.open(self.dest, os.O_RDWR)
        with self._cond:
            self.gate.enter(self._priority)
            self._entered = True
        try:
            writeback = Writeback(fd)
            workers = [threading.Thread(target=self._work, args=(fd,), daemon=True,
                                        name=f"download-{i}")
                       for i in range(min(self.tuning.connections, len(self._file.parts)))]
            try:
                for t in workers:
                    t.start()
                digest = self._file.hash(fd, writeback, self._check_running)
            except BaseException as exc:
                self._fail(exc)
                raise
            finally:
                with self._cond:
                    self._finished = True  # errors of stragglers no longer matter
                writeback.close()
                self._stop.set()
                self.gate.wake()
                for t in workers:
                    if t.ident is not None:
                        t.join()
            if self._file.received != self.size:
                raise Transient(f"{self.describe}: got {self._file.received} of {self.size} "
                                "bytes")
            return digest
        finally:
            with self._cond:
                self._entered = False
                self.gate.leave(self._priority)
            os.close(fd)

    def _fail(self, exc: BaseException) -> None:
        """Record the first error and stop everything."""
        with self._cond:
            if self._finished:
                return
            if self._error is None:
                self._error = exc
            self._cond.notify_all()
        if not self._stop.is_set():
            self.cancel()

    def _check_running(self) -> None:
        """Under the lock: raise the download's error, or Cancelled once stopped."""
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise Cancelled()

    def _work(self, fd: int) -> None:
        from comfy_worker.net.http import session as http_session

        session = http_session(self.policy)
        try:
            while not self._stop.is_set():
                with self._cond:
                    part = self._file.take()
                if part is None:
                    break
                try:
                    if not self.gate.acquire(lambda: self._priority, self._stop):
                        break
                    try:
                        self._fetch_part(session, fd, part)
                    finally:
                        self.gate.release()
                except _Yielded:
                    pass
                finally:
                    with self._cond:
                        part.held = False
                        self._cond.notify_all()
        except BaseException as exc:
            self._fail(exc)
        finally:
            session.close()

    def _fetch_part(self, session: Any, fd: int, part: _Part) -> None:
        failures = 0
        while not part.done:
            before = part.written
            try:
                self._get(session, fd, part)
            except Transient as exc:
                if not self.ranged:
                    raise  # a plain GET cannot resume: the caller restarts the file
                failures = 1 if part.written > before else failures + 1
                if failures > self.tuning.retries:
                    raise Transient(f"{exc} (bytes {part.start + part.written}-"
                                    f"{(part.end or 0) - 1}, {self.tuning.retries} "
                                    "retries)") from None
                self.range_retries += 1
                delay = backoff_seconds(failures)
                log.warning("%s: %s; resuming at byte %d in %.1f s", self.describe, exc,
                            part.start + part.written, delay)
                if self._stop.wait(delay):
                    raise Cancelled() from None

    def _get(self, session: Any, fd: int, part: _Part) -> None:
        """One request for the rest of ``part``: write what arrives, in order."""
        import requests

        from comfy_worker.net.http import open_url

        offset = part.start + part.written
        headers = dict(self.headers)
        if self.ranged:
            headers["Range"] = f"bytes={offset}-{part.end - 1}"
        t = self.tuning
        try:
            r = open_url(session, "GET", self.url, headers=headers, policy=self.policy,
                         timeout=(t.connect_timeout, t.stall_timeout))
        except requests.RequestException as exc:
            raise network_error(exc, self.describe, self.tuning) from None
        with self._cond:
            self._responses.add(r)
        try:
            if self._stop.is_set():
                raise Cancelled()
            if r.status_code >= 400:
                raise self.http_error(r.status_code)
            check_range_answer(r, ranged=self.ranged, offset=offset, part=part,
                               size=self.size, describe=self.describe)
            read_part(r, part, write=lambda data: self._write(fd, part, data),
                      stop=self._stop, must_yield=lambda: self.gate.must_yield(self._priority),
                      whole_file=r.status_code == 200, describe=self.describe,
                      tuning=self.tuning, size=self.size)
            r.raw.release_conn()  # the body was read to its end: keep the connection
        finally:
            with self._cond:
                self._responses.discard(r)
            r.close()

    def _write(self, fd: int, part: _Part, data: bytes) -> None:
        view = memoryview(data)
        offset = part.start + part.written
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:
                raise OSError(f"{self.dest}: write returned {n}")
            view = view[n:]
            offset += n
        with self._cond:
            self._file.wrote(part, len(data))
        if self.on_bytes is not None:
            self.on_bytes(len(data))


def read_part(r: Any, part: _Part, *, write: Callable[[bytes], None],
              stop: threading.Event, must_yield: Callable[[], bool], whole_file: bool,
              describe: str, tuning: Tuning, size: int) -> None:
    """Read the rest of ``part`` from the response ``r`` and ``write`` it, in order,
    block by block; give the part back (:class:`_Yielded`) when ``must_yield()`` says a
    higher priority waits. ``whole_file``: the response is the whole file (200), which
    must end with its last byte: before that byte is written (so the hash cannot finish
    first), one more byte is asked for, and a body that goes on fails with
    :class:`SizeExceeded`."""
    while True:
        left = part.length - part.written
        if left <= 0:
            return
        if stop.is_set():
            raise Cancelled()
        if must_yield():
            raise _Yielded()
        try:
            data = r.raw.read(min(BLOCK, left), decode_content=False)
        except Exception as exc:
            if stop.is_set():
                raise Cancelled() from None
            if is_transient_network_error(exc):
                raise network_error(exc, describe, tuning) from None
            raise
        if not data:
            if stop.is_set():
                raise Cancelled()
            raise Transient(f"{describe}: connection closed after "
                            f"{part.start + part.written} bytes")
        if whole_file and len(data) == left and _body_goes_on(r):
            raise SizeExceeded(size)  # the file's last byte, and then some
        write(data)


def _body_goes_on(r: Any) -> bool:
    """After the file's last byte: does the body go on? (One byte is read, never
    written.)"""
    try:
        return bool(r.raw.read(1, decode_content=False))
    except Exception as exc:
        if is_transient_network_error(exc):
            return False  # cut right after the last byte: nothing more came
        raise


def _abort(response: Any) -> None:
    """Shut down a response's socket, so a thread blocked reading it wakes at once."""
    conn = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
