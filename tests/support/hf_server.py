"""A Hugging Face-compatible file server on 127.0.0.1, for tests and benchmarks.

It speaks the part of the Hub protocol that ``huggingface_hub`` and ``hf_transfer``
use to download a file:

* ``HEAD/GET /{repo}/resolve/{revision}/{file}`` (``/datasets/{repo}/...`` too).
  ``revision`` is a commit or a branch (``main``); ``X-Repo-Commit`` names the commit
  the branch points at. LFS files (the default) answer ``302`` to an absolute
  ``http://localhost:PORT/cdn-lfs/{sha256}`` URL (this server under another host name,
  like the Hub's CDN) with ``X-Linked-Etag: "<sha256>"`` and
  ``X-Linked-Size``, like the real Hub; other files answer ``200`` with a git-blob
  ``ETag``.
* ``GET /cdn-lfs/{sha256}``: the bytes, with ``Accept-Ranges``, ``Range`` → ``206``.
* ``HEAD/GET /files/{name}``: a plain URL (``add_url``), with or without range support.

Fault injection per file (:class:`Faults`): answer a status N times (``fail_times``,
``fail_status``), always answer a status (``status_always``), flip a byte in N
responses (``corrupt_times``, ``corrupt_at``), cut the connection after some bytes N
times (``cut_times``, ``cut_after``, ``cut_start`` for one range), go silent mid-body
(``stall_times``); hold its bytes until the test lets them go (``valve``: a
:class:`Valve`). Repos can be
gated (:meth:`HFServer.gate`): no token → 401, a token without access → 403.
Bandwidth caps per connection and in total (``per_connection_bps``, ``total_bps``)
make it usable for throughput benchmarks.
Every request is counted (:meth:`HFServer.bytes_served`, :meth:`HFServer.requests`) so
tests can assert that nothing was downloaded.

Usage::

    with HFServer() as hub:
        f = hub.add_file("acme/upscalers", "4x.safetensors", data)   # branch "main"
        f.commit, f.sha256, f.size, f.url        # url: the resolve URL at the commit
        env = {"HF_ENDPOINT": hub.endpoint}
        ...
        assert hub.bytes_served(f) == f.size

or the pytest fixture ``hf_server`` from :mod:`support` (a started server).

Requests are logged just before their last bytes go out, so a client holding a whole
response always finds it counted.

Caution: ``hf_transfer.download`` holds the GIL for the whole download, so it must not
run in the process that hosts this server (it would deadlock); a benchmark should host
the server in its own process anyway, so that it does not share the client's GIL (see
``benchmarks/sync_throughput.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

_CHUNK = 256 * 1024


@dataclass
class Faults:
    """What to do wrong when serving one file. Counters count down as faults fire."""

    fail_times: int = 0
    """Answer ``fail_status`` to this many requests (methods in ``fail_methods``)."""
    fail_status: int = 503
    fail_methods: tuple[str, ...] = ("GET",)
    status_always: int | None = None
    """Answer this status to every request for the file (HEAD and GET)."""
    corrupt_times: int = 0
    """Flip the byte at ``corrupt_at`` in this many GET responses that cover it (-1: always)."""
    corrupt_at: int | None = None
    """The offset of the flipped byte (default: ``size // 2``)."""
    cut_times: int = 0
    """Close the connection after ``cut_after`` body bytes in this many GET responses
    (longer than that, and starting at ``cut_start`` when that is set)."""
    cut_after: int = 4096
    cut_start: int | None = None
    stall_times: int = 0
    """Send ``stall_after`` body bytes, then nothing for ``stall_seconds`` (or until the
    server stops), in this many GET responses, then close the connection."""
    stall_after: int = 4096
    stall_seconds: float = 30.0
    no_length: bool = False
    """Answer without ``Content-Length`` (the body ends when the connection closes), as
    servers streaming generated content do: a client cannot learn the size up front."""


class Valve:
    """A test's hand on one file's bytes (``ServedFile.valve``): the server sends at most
    ``allowed`` body bytes of the file, over all its connections together, then each
    connection waits (sending nothing) until the test allows more. A test then drives
    downloads through a script (how far each file is at each step), not through
    wall-clock luck. ``allowed=None``: open."""

    def __init__(self, allowed: int | None = 0) -> None:
        self._cond = threading.Condition()
        self._allowed = allowed
        self.sent = 0
        """Body bytes the server let through."""
        self.waiting = 0
        """Connections held at the valve now."""

    def allow(self, n: int | None) -> None:
        """Let ``n`` more bytes through (None: open the valve)."""
        with self._cond:
            self._allowed = None if n is None or self._allowed is None else self._allowed + n
            self._cond.notify_all()

    def hold(self) -> None:
        """Let no more bytes through (until :meth:`allow`)."""
        with self._cond:
            self._allowed = self.sent

    def take(self, n: int, stopping: threading.Event) -> int:
        """Up to ``n`` bytes a connection may send now (waits while none; 0 when the
        server stops)."""
        with self._cond:
            self.waiting += 1
            try:
                while (self._allowed is not None and self.sent >= self._allowed
                       and not stopping.is_set()):
                    self._cond.notify_all()
                    self._cond.wait(0.05)
            finally:
                self.waiting -= 1
            if stopping.is_set():
                return 0
            k = n if self._allowed is None else min(n, self._allowed - self.sent)
            self.sent += k
            self._cond.notify_all()
            return k

    def wait_until(self, *, sent: int | None = None, waiting: int | None = None,
                   timeout: float = 30.0) -> None:
        """Block until ``sent`` bytes went out and ``waiting`` connections are held."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ((sent is None or self.sent >= sent)
                       and (waiting is None or self.waiting >= waiting)):
                left = deadline - time.monotonic()
                assert left > 0, (f"valve: sent {self.sent} (want {sent}), waiting "
                                  f"{self.waiting} (want {waiting})")
                self._cond.wait(min(left, 0.05))


@dataclass
class ServedFile:
    """One file the server can serve. ``url`` is where a client downloads it."""

    key: str
    size: int
    sha256: str
    url: str
    data: bytes | None = None
    source: Path | None = None
    repo: str | None = None
    path: str | None = None
    commit: str | None = None
    lfs: bool = True
    ranges: bool = True
    faults: Faults = field(default_factory=Faults)
    valve: Valve | None = None
    """When set, its body bytes go out only as the test allows (:class:`Valve`)."""

    def read(self, start: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[start:start + length]
        assert self.source is not None
        with open(self.source, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def hf_uri(self, revision: str | None = None) -> str:
        """``hf://repo@revision/path`` for ``comfy-worker lock add``."""
        return f"hf://{self.repo}@{revision or self.commit}/{self.path}"


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    key: str | None
    range: str | None
    body_bytes: int
    authorization: bool
    started: float = 0.0
    """``time.monotonic()`` when the request arrived; ``ended`` when it was answered."""
    ended: float = 0.0


class RateLimiter:
    """Paces bytes to ``bps``; shared by every thread that calls :meth:`take`."""

    def __init__(self, bps: float, *, burst_s: float = 0.05) -> None:
        self.bps = float(bps)
        self.burst_s = burst_s
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self.burst_s)
            self._next = start + nbytes / self.bps
        if start > now:
            time.sleep(start - now)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive), None for no/ignored range, "invalid" for a 416."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":
        n = int(m.group(2))
        if n == 0:
            return "invalid"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "invalid"
    return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class HFServer:
    """A threaded HTTP server on 127.0.0.1 serving Hub-style files. See the module doc."""

    def __init__(
        self,
        *,
        per_connection_bps: float | None = None,
        total_bps: float | None = None,
        redirect_lfs: bool = True,
        port: int = 0,
    ) -> None:
        self.per_connection_bps = per_connection_bps
        self.total_limiter = RateLimiter(total_bps) if total_bps else None
        self.redirect_lfs = redirect_lfs
        self._lock = threading.Lock()
        self._files: dict[str, ServedFile] = {}
        self._by_sha: dict[str, ServedFile] = {}
        self._url_files: dict[str, ServedFile] = {}
        # repo -> commit -> {path: key}; repo -> branch -> commit
        self._commits: dict[str, dict[str, dict[str, str]]] = {}
        self._branches: dict[str, dict[str, str]] = {}
        self._gates: dict[str, tuple[str, ...]] = {}
        self._log: list[RequestRecord] = []
        self._counter = 0
        self._stopping = threading.Event()
        server = self

        class Handler(_Handler):
            hub = server

        # Bound now, so ``endpoint`` and file URLs are known before ``start()``.
        self._httpd: _Server | None = _Server(("127.0.0.1", port), Handler)
        self._thread: threading.Thread | None = None
        self._started = False

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> HFServer:
        assert self._httpd is not None, "server was stopped; make a new one"
        if self._started:
            return self
        self._started = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="hf-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            if self._started:
                self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HFServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server stopped"
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """The value for ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    # --- content --------------------------------------------------------------------

    def _new_commit(self, repo: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{repo}:{self._counter}:{time.time_ns()}".encode()).hexdigest()

    def add_file(
        self,
        repo: str,
        path: str,
        data: bytes | Path,
        *,
        revision: str = "main",
        lfs: bool = True,
    ) -> ServedFile:
        """Commit ``data`` as ``path`` on branch ``revision`` of ``repo`` (a new commit).

        ``data`` may be bytes or a file on disk (streamed, never held in memory).
        Returns the file with its ``commit``, ``sha256``, ``size`` and resolve ``url``
        at that commit. Earlier commits stay downloadable.
        """
        if isinstance(data, Path):
            size, sha, blob, source = data.stat().st_size, _sha256_file(data), None, data
        else:
            size, sha, blob, source = len(data), hashlib.sha256(data).hexdigest(), data, None
        with self._lock:
            branches = self._branches.setdefault(repo, {})
            commits = self._commits.setdefault(repo, {})
            parent = commits.get(branches.get(revision, ""), {})
            commit = self._new_commit(repo)
            key = f"{repo}@{commit}/{path}"
            served = ServedFile(key=key, size=size, sha256=sha, data=blob, source=source,
                                repo=repo, path=path, commit=commit, lfs=lfs, url="")
            served.url = self.resolve_url(repo, commit, path)
            # Files unchanged since the parent commit keep their ServedFile (and faults).
            commits[commit] = {**parent, path: key}
            branches[revision] = commit
            self._files[key] = served
            if lfs:
                self._by_sha[sha] = served
        return served

    def add_url(self, name: str, data: bytes | Path, *, ranges: bool = True) -> ServedFile:
        """Serve ``data`` at ``{endpoint}/files/{name}`` (a plain URL source)."""
        if isinstance(data, Path):
            size, sha, blob, source = data.stat().st_size, _sha256_file(data), None, data
        else:
            size, sha, blob, source = len(data), hashlib.sha256(data).hexdigest(), data, None
        served = ServedFile(key=f"url:{name}", size=size, sha256=sha, data=blob, source=source,
                            lfs=False, ranges=ranges, url=f"{self.endpoint}/files/{quote(name)}")
        with self._lock:
            self._url_files[name] = served
            self._files[served.key] = served
        return served

    def gate(self, repo: str, *, allowed_tokens: tuple[str, ...] = ()) -> None:
        """Make ``repo`` gated: no token → 401, a token not in ``allowed_tokens`` → 403."""
        with self._lock:
            self._gates[repo] = tuple(allowed_tokens)

    def branch_commit(self, repo: str, branch: str = "main") -> str:
        return self._branches[repo][branch]

    @property
    def cdn_endpoint(self) -> str:
        """Where LFS redirects point: same server, another host name (``localhost``),
        so clients treat it as a CDN (no auth header, no redirect following on HEAD)."""
        return f"http://localhost:{self.port}"

    def resolve_url(self, repo: str, revision: str, path: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"

    # --- counters -------------------------------------------------------------------

    def requests(self, file: ServedFile | None = None, method: str | None = None
                 ) -> list[RequestRecord]:
        with self._lock:
            log = list(self._log)
        return [r for r in log if (file is None or r.key == file.key)
                and (method is None or r.method == method)]

    def bytes_served(self, file: ServedFile | None = None) -> int:
        """Body bytes sent by GETs (of ``file``, or of all files)."""
        return sum(r.body_bytes for r in self.requests(file, "GET"))

    def reset_counters(self) -> None:
        with self._lock:
            self._log.clear()

    # --- lookups used by the handler ------------------------------------------------

    def _lookup(self, repo: str, revision: str, path: str) -> tuple[int, str | None,
                                                                  ServedFile | None, str]:
        """(status, error code, file, commit)."""
        with self._lock:
            if repo not in self._commits:
                return 404, "RepoNotFound", None, ""
            commit = self._branches[repo].get(revision, revision)
            tree = self._commits[repo].get(commit)
            if tree is None:
                return 404, "RevisionNotFound", None, ""
            key = tree.get(path)
            if key is None:
                return 404, "EntryNotFound", None, commit
            return 200, None, self._files[key], commit

    def _record(self, rec: RequestRecord) -> int:
        with self._lock:
            self._log.append(rec)
            return len(self._log) - 1

    def _amend(self, index: int, *, body_bytes: int) -> None:
        with self._lock:
            if index < len(self._log):  # (unless reset_counters ran meanwhile)
                self._log[index] = dataclasses.replace(
                    self._log[index], body_bytes=body_bytes, ended=time.monotonic())


class _Handler(BaseHTTPRequestHandler):
    hub: HFServer
    protocol_version = "HTTP/1.1"
    server_version = "fake-hub/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        bps = self.hub.per_connection_bps
        self.conn_limiter = RateLimiter(bps) if bps else None

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # --- routing --------------------------------------------------------------------

    def _dispatch(self, *, head: bool) -> None:
        self.started = time.monotonic()
        path = unquote(urlsplit(self.path).path)
        m = re.fullmatch(r"/(?:(?:datasets|spaces)/)?([^/]+/[^/]+|[^/]+)/resolve/([^/]+)/(.+)",
                         path)
        if m:
            self._resolve(m.group(1), m.group(2), m.group(3), head=head)
            return
        m = re.fullmatch(r"/cdn-lfs/([0-9a-f]{64})", path)
        if m:
            with self.hub._lock:
                served = self.hub._by_sha.get(m.group(1))
            if served is None:
                self._error(404, None, head=head)
                return
            self._serve(served, head=head, extra={"ETag": f'"{served.sha256}"'})
            return
        m = re.fullmatch(r"/files/(.+)", path)
        if m:
            with self.hub._lock:
                served = self.hub._url_files.get(m.group(1))
            if served is None:
                self._error(404, None, head=head)
                return
            self._serve(served, head=head, extra={})
            return
        self._error(404, None, head=head)

    def _auth_status(self, repo: str) -> int | None:
        gate = self.hub._gates.get(repo)
        if gate is None:
            return None
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return 401
        return None if auth[len("Bearer "):] in gate else 403

    def _resolve(self, repo: str, revision: str, path: str, *, head: bool) -> None:
        status, code, served, commit = self.hub._lookup(repo, revision, path)
        denied = self._auth_status(repo)
        if denied is not None:
            self._error(denied, "GatedRepo", head=head, served=served)
            return
        if served is None:
            self._error(status, code, head=head, commit=commit or None)
            return
        extra = {"X-Repo-Commit": commit}
        if served.lfs:
            extra |= {"X-Linked-Etag": f'"{served.sha256}"', "X-Linked-Size": str(served.size),
                      "ETag": f'"{served.sha256}"'}
            if self.hub.redirect_lfs:
                if self._fault_status(served, head=head):
                    return
                location = f"{self.hub.cdn_endpoint}/cdn-lfs/{served.sha256}"
                self._record(served, 302, 0)
                self._send_headers(302, {**extra, "Location": location, "Content-Length": "0"})
                return
        else:
            blob = served.read(0, served.size)
            extra["ETag"] = f'"{_git_blob_sha1(blob)}"'
        self._serve(served, head=head, extra=extra)

    # --- responses ------------------------------------------------------------------

    def _record(self, served: ServedFile | None, status: int, body: int) -> int:
        """Log this request. Called *before* the response's last bytes go out, so a
        client that has the whole response always finds it counted (afterwards it would
        race the client); :meth:`_amend` corrects a body that was then cut short."""
        return self.hub._record(RequestRecord(
            method=self.command, path=self.path, status=status,
            key=served.key if served else None, range=self.headers.get("Range"),
            body_bytes=body, authorization="Authorization" in self.headers,
            started=getattr(self, "started", 0.0), ended=time.monotonic()))

    def _send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _error(self, status: int, code: str | None, *, head: bool,
               commit: str | None = None, served: ServedFile | None = None) -> None:
        body = f"{status} {code or 'error'}\n".encode()
        headers = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._record(served, status, 0)
        self._send_headers(status, headers)
        if not head:
            self.wfile.write(body)

    def _fault_status(self, served: ServedFile, *, head: bool) -> bool:
        """Answer an injected status; True when it did."""
        f = served.faults
        status = None
        with self.hub._lock:
            if f.status_always is not None:
                status = f.status_always
            elif f.fail_times > 0 and self.command in f.fail_methods:
                f.fail_times -= 1
                status = f.fail_status
        if status is None:
            return False
        self._error(status, "GatedRepo" if status in (401, 403) else None, head=head,
                    served=served)
        return True

    def _serve(self, served: ServedFile, *, head: bool, extra: dict[str, str]) -> None:
        if self._fault_status(served, head=head):
            return
        size = served.size
        rng = _parse_range(self.headers.get("Range"), size) if served.ranges else None
        headers = dict(extra)
        if served.ranges:
            headers["Accept-Ranges"] = "bytes"
        headers["Content-Type"] = "application/octet-stream"
        if rng == "invalid":
            headers["Content-Range"] = f"bytes */{size}"
            headers["Content-Length"] = "0"
            self._record(served, 416, 0)
            self._send_headers(416, headers)
            return
        if isinstance(rng, tuple):
            start, end = rng
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        else:
            start, end, status = 0, size - 1, 200
        length = end - start + 1 if size else 0
        if served.faults.no_length and status == 200:
            self.close_connection = True
        else:
            headers["Content-Length"] = str(length)
        if head or length == 0:
            self._record(served, status, 0)
            self._send_headers(status, headers)
            return
        self._send_headers(status, headers)
        self._send_body(served, status, start, length)

    def _send_body(self, served: ServedFile, status: int, start: int, length: int) -> int:
        f = served.faults
        corrupt_at = served.size // 2 if f.corrupt_at is None else f.corrupt_at
        with self.hub._lock:
            corrupt = f.corrupt_times != 0 and start <= corrupt_at < start + length
            if corrupt and f.corrupt_times > 0:
                f.corrupt_times -= 1
            cut = (f.cut_times > 0 and length > f.cut_after
                   and f.cut_start in (None, start))
            if cut:
                f.cut_times -= 1
            stall = not cut and f.stall_times > 0 and length > f.stall_after
            if stall:
                f.stall_times -= 1
        limit = f.cut_after if cut else f.stall_after if stall else length
        sent = 0
        chunk = _CHUNK
        rates = [r.bps for r in (self.conn_limiter, self.hub.total_limiter) if r]
        if rates:  # about 10 ms of the slowest cap per write: smooth, yet few syscalls
            chunk = max(8 * 1024, min(_CHUNK, int(min(rates) / 100)))
        fh = open(served.source, "rb") if served.source is not None else None  # noqa: SIM115
        logged: int | None = None
        try:
            while sent < limit:
                n = min(chunk, limit - sent)
                if served.valve is not None:
                    n = served.valve.take(n, self.hub._stopping)
                    if n == 0:
                        break
                if logged is None and sent + n == limit:  # the last write: count it first
                    logged = self._record(served, status, limit)
                for limiter in (self.conn_limiter, self.hub.total_limiter):
                    if limiter is not None:
                        limiter.take(n)
                offset = start + sent
                if fh is not None and not corrupt:
                    n = os.sendfile(self.connection.fileno(), fh.fileno(), offset, n)
                    if n == 0:
                        break
                else:
                    if fh is not None:
                        block = os.pread(fh.fileno(), n, offset)
                    else:
                        assert served.data is not None
                        block = served.data[offset:offset + n]
                    if corrupt and offset <= corrupt_at < offset + n:
                        i = corrupt_at - offset
                        block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1:]
                    self.wfile.write(block)
                sent += n
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return sent
        finally:
            if fh is not None:
                fh.close()
            if logged is None:
                self._record(served, status, sent)
            elif sent != limit:
                self.hub._amend(logged, body_bytes=sent)
        if stall:
            self.hub._stopping.wait(f.stall_seconds)
        if cut or stall:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        return sent


def iter_random_bytes(size: int, seed: int, block: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, one block at a time (for large test files)."""
    import random

    rnd = random.Random(seed)
    left = size
    while left > 0:
        n = min(block, left)
        yield rnd.randbytes(n)
        left -= n


def write_random_file(path: Path, size: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for block in iter_random_bytes(size, seed):
            fh.write(block)
    return path
