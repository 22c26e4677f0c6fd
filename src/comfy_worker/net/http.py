"""HTTP for URLs a job gave: the URL policy applied to the address each connection
actually goes to, and redirects followed one hop at a time.

:func:`session` makes a ``requests.Session`` whose connections resolve the host name
themselves, judge every address by the :class:`~comfy_worker.net.policy.UrlPolicy` and
connect only to an allowed one (TLS still verifies the host name): what was checked is
what is connected to, so DNS cannot answer a public address for a check and a private
one for the connection. Connections of a session can be cut at once from another thread
(:meth:`GuardedSession.abort`), which stops a job's fetches when it is cancelled.

:func:`open_url` follows redirects itself: each hop must stay ``http``/``https``, pass
the policy's early check, and not come back to a URL seen before; at most
:data:`MAX_REDIRECTS` hops. The ``Authorization`` header never follows a redirect to
another origin. Environment proxies and ``.netrc`` credentials are not used for a job's
URLs (a proxy would hide the address connected to; ``.netrc`` holds the operator's
credentials).

A trusted source (``policy=None``: the operator's lock, ``HF_ENDPOINT``) gets a plain
session and the same redirect handling.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from comfy_worker.net.policy import SCHEMES, Refusal, UrlPolicy

MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)


class AddressRefused(Exception):
    """The host resolved only to addresses the policy refuses (nothing was connected)."""

    def __init__(self, host: str, refusal: Refusal) -> None:
        super().__init__(f"{host}: {refusal.reason}")
        self.host = host
        self.refusal = refusal


class UrlRefused(Exception):
    """A URL (``redirected``: a redirect hop) the policy's early check refuses (scheme,
    literal address)."""

    def __init__(self, url: str, refusal: Refusal, *, redirected: bool = False) -> None:
        super().__init__(refusal.reason)
        self.url = url
        self.refusal = refusal
        self.redirected = redirected


class RedirectRefused(Exception):
    """A redirect that cannot be followed: ``kind`` is ``loop``, ``too-many`` or
    ``scheme`` (to something other than http/https); ``url`` is the hop (unredacted:
    callers redact it)."""

    def __init__(self, kind: str, url: str) -> None:
        super().__init__(kind)
        self.kind = kind
        self.url = url

    def describe(self) -> str:
        from comfy_worker.net.redact import redact_url

        if self.kind == "loop":
            return f"its redirects loop (back to {redact_url(self.url)})"
        if self.kind == "too-many":
            return f"it redirects more than {MAX_REDIRECTS} times"
        scheme = urlsplit(self.url).scheme or "no scheme"
        return f'it redirects to a "{scheme}" URL, not http or https'


class Aborted(Exception):
    """The session was aborted (the job was cancelled or ran out of time)."""


# --- guarded connections ------------------------------------------------------------


class _Sockets:
    """The sockets one session opened, so :meth:`GuardedSession.abort` can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.aborted = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self.aborted:
                sock.close()
                raise Aborted()
            self._open.add(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _GuardedConnection(HTTPConnection):
    """Connects only to an address its policy allows (set on a per-session subclass)."""

    policy: UrlPolicy | None = None
    sockets: _Sockets

    def _new_conn(self) -> socket.socket:
        if self.sockets.aborted:
            raise Aborted()
        if self.policy is None or self.policy.host_allowed(self.host):
            sock = super()._new_conn()
            self.sockets.add(sock)
            return sock
        try:
            infos = socket.getaddrinfo(self._dns_host, self.port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        refused: Refusal | None = None
        error: OSError | None = None
        for family, kind, proto, _name, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            refusal = self.policy.refusal(ip)
            if refusal is not None:
                refused = refused or refusal
                continue
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self.sockets.add(sock)
            return sock
        if error is None and refused is not None:
            raise AddressRefused(self.host, refused)
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                      f"(connect timeout={self.timeout})") from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")


class _GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    pass


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: UrlPolicy | None, sockets: _Sockets, pool: int) -> None:
        attrs: dict[str, Any] = {"policy": policy, "sockets": sockets}
        http_conn = type("GuardedHTTPConnection", (_GuardedConnection,), attrs)
        https_conn = type("GuardedHTTPSConnection", (_GuardedHTTPSConnection,), attrs)
        self._pools = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": https_conn}),
        }
        super().__init__(pool_connections=1, pool_maxsize=pool, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pools)


class _NoAuth(requests.auth.AuthBase):
    """Keeps requests from adding ``.netrc`` credentials."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class GuardedSession(requests.Session):
    """A session whose connections obey ``policy`` (None: any address) and can be cut
    at once by :meth:`abort`."""

    def __init__(self, policy: UrlPolicy | None, *, pool: int = 1) -> None:
        super().__init__()
        self.policy = policy
        self._sockets = _Sockets()
        adapter = _GuardedAdapter(policy, self._sockets, pool)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        if policy is not None:
            self.auth = _NoAuth()

    def abort(self) -> None:
        """Cut every connection now and refuse new ones: a thread reading a response
        gets an error at once."""
        self._sockets.abort()

    @property
    def aborted(self) -> bool:
        return self._sockets.aborted

    def request(self, method: str | bytes, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        if self.policy is not None:
            kwargs["proxies"] = {"http": None, "https": None, "all": None}
        return super().request(method, url, *args, **kwargs)


def session(policy: UrlPolicy | None, *, pool: int = 1) -> GuardedSession:
    return GuardedSession(policy, pool=pool)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def open_url(http: requests.Session, method: str, url: str, *,
             headers: Mapping[str, str] | None = None, timeout: Any = None,
             policy: UrlPolicy | None = None, stream: bool = True,
             max_redirects: int = MAX_REDIRECTS) -> requests.Response:
    """``method url``, redirects followed hop by hop (see the module doc): the final
    response (its ``url`` is the final URL). Raises :class:`RedirectRefused`,
    :class:`UrlRefused` (a hop the policy refuses early), :class:`AddressRefused` (from
    the connection), or what requests raises."""
    current = url
    seen = {url}
    sent = dict(headers or {})
    for hop in range(max_redirects + 1):
        if policy is not None:
            refusal = policy.check_url(current)
            if refusal is not None:
                raise UrlRefused(current, refusal, redirected=hop > 0)
        r = http.request(method, current, headers=sent, timeout=timeout, stream=stream,
                         allow_redirects=False)
        location = r.headers.get("Location")
        if r.status_code not in REDIRECTS or not location:
            return r
        r.close()
        target = urljoin(current, location.strip())
        if urlsplit(target).scheme.lower() not in SCHEMES:
            raise RedirectRefused("scheme", target)
        if target in seen:
            raise RedirectRefused("loop", target)
        seen.add(target)
        if _origin(target) != _origin(current):
            sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
        if r.status_code == 303 and method.upper() != "HEAD":
            method = "GET"
        current = target
    raise RedirectRefused("too-many", current)
