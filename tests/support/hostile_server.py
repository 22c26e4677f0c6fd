"""A misbehaving HTTP server on a loopback address, for the tests of a worker that
strangers can call (issue 16): every way a URL a job gives can go wrong.

Each path serves one :class:`Route`: a plain file (with or without ``Content-Length``,
``Range`` support, HEAD), or a server that refuses HEAD (403/405/501), never ends, stalls,
drips one byte at a time, sends more than it declares, redirects (in loops, across
schemes, to another address), or answers like a presigned S3 URL (HEAD is not signed:
403; a GET needs the signature in the query string and honours ``Range``). Every
request is logged and every body byte counted, so tests can assert what the worker
asked for and how much it took.

Usage::

    with HostileServer() as srv:                      # 127.0.0.1, a free port
        url = srv.add("m.safetensors", Route(data=b"...", head=405, length=False))
        ...
        srv.sent("m.safetensors"), srv.requests("m.safetensors")
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_BLOCK = 64 * 1024


@dataclass
class Route:
    """How one path answers."""

    data: bytes = b""
    status: int = 200
    head: int | None = None
    """Answer HEAD with this status (e.g. 403, 405, 501) instead of the file's headers."""
    length: bool = True
    """Send ``Content-Length`` (else the body ends when the connection closes)."""
    ranges: bool = True
    """Honour ``Range`` with 206 and ``Content-Range``."""
    endless: bool = False
    """After ``data``, send pseudo-random bytes until the client goes away."""
    extra: int = 0
    """Send this many bytes after ``data`` (and declare them in ``Content-Length``)."""
    drip: float | None = None
    """Seconds between single body bytes."""
    stall_after: int | None = None
    """Go silent (connection open) after this many body bytes, for ``stall_seconds``."""
    stall_seconds: float = 60.0
    silent: float | None = None
    """Accept the request, then say nothing for this long before answering (a stalled
    HEAD or GET)."""
    redirect: str | None = None
    """Answer 302 with this ``Location`` (absolute, or relative to the server)."""
    signature: str | None = None
    """Presigned style: a GET must carry ``?X-Amz-Signature=<this>`` (else 403); HEAD is
    always 403 (the signature covers GET only)."""


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    query: str
    range: str | None
    authorization: bool
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HostileServer:
    """A threaded HTTP/1.1 server on ``host`` (any loopback address); see the module."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._hits: list[tuple[str, Hit]] = []
        self._sent: dict[str, int] = {}
        self.stopping = threading.Event()
        owner = self

        class Handler(_Handler):
            server_owner = owner

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("HostileHTTPServer", (_Server,), {"address_family": family})
        self._httpd: _Server | None = server_cls((host, 0), Handler)
        self.host = host
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"hostile-{host}")

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def add(self, name: str, route: Route) -> str:
        """Serve ``route`` at ``/name``; returns its URL (with the signature, if any)."""
        with self._lock:
            self._routes[name] = route
        url = f"{self.base}/{name}"
        if route.signature is not None:
            url += f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={route.signature}"
        return url

    def route(self, name: str) -> Route:
        return self._routes[name]

    def requests(self, name: str | None = None, method: str | None = None) -> list[Hit]:
        with self._lock:
            hits = list(self._hits)
        return [h for n, h in hits if (name is None or n == name)
                and (method is None or h.method == method)]

    def sent(self, name: str) -> int:
        """Body bytes written for ``name`` (what the client may have received)."""
        with self._lock:
            return self._sent.get(name, 0)

    def _record(self, name: str, hit: Hit) -> None:
        with self._lock:
            self._hits.append((name, hit))

    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self._sent[name] = self._sent.get(name, 0) + n


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", header or "")
    if m is None:
        return None
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    server_owner: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        owner = self.server_owner
        parts = urlsplit(self.path)
        name = parts.path.lstrip("/")
        owner._record(name, Hit(self.command, parts.path, parts.query,
                                self.headers.get("Range"),
                                "Authorization" in self.headers))
        route = owner._routes.get(name)
        if route is None:
            self._plain(404, b"not here\n", head)
            return
        if route.silent is not None:
            owner.stopping.wait(route.silent)
        if route.redirect is not None:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.signature is not None:
            given = parse_qs(parts.query).get("X-Amz-Signature", [""])[0]
            if head or given != route.signature:
                self._plain(403, b"SignatureDoesNotMatch\n", head)
                return
        if head and route.head is not None:
            self._plain(route.head, b"", head=True)
            return
        if route.status >= 400:
            self._plain(route.status, b"error\n", head)
            return
        self._file(name, route, head)

    def _plain(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(self, name: str, route: Route, head: bool) -> None:
        data = route.data + bytes(route.extra)
        size = len(data)
        rng = _range(self.headers.get("Range"), size) if route.ranges and not route.endless \
            else None
        status, start, end = 200, 0, size - 1
        if rng is not None and rng[0] < size:
            status, (start, end) = 206, rng
        self.send_response(status)
        if route.ranges and not route.endless:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if route.length and not route.endless:
            self.send_header("Content-Length", str(end - start + 1))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        body = data[start:end + 1]
        try:
            self._send(name, route, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if not route.length or route.endless:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, name: str, route: Route, body: bytes) -> None:
        owner = self.server_owner
        sent = 0
        while sent < len(body) or route.endless:
            if owner.stopping.is_set():
                return
            if route.stall_after is not None and sent >= route.stall_after:
                owner.stopping.wait(route.stall_seconds)
                route = dataclasses.replace(route, stall_after=None)
            if route.drip is not None:
                n = 1
            elif route.stall_after is not None:
                n = min(_BLOCK, route.stall_after - sent)
            else:
                n = _BLOCK
            block = body[sent:sent + n] if sent < len(body) else bytes(range(256)) * (n // 256 + 1)
            block = block[:n]
            self.wfile.write(block)
            self.wfile.flush()
            owner._count(name, len(block))
            sent += len(block)
            if route.drip is not None:
                owner.stopping.wait(route.drip)
