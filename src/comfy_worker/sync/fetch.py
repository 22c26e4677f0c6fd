"""Getting bytes: locate a source (huggingface_hub metadata or a HEAD), then download.

Hugging Face sources: ``hf_hub_url`` + ``get_hf_file_metadata`` (``HF_ENDPOINT``,
``HF_TOKEN``) give the final location (the CDN URL the Hub redirects to), the size and
the LFS sha256. The bytes come from a :class:`~comfy_worker.sync.download.Download` of
that location: several byte ranges at once, sha256 computed as they land. URL sources
take the same path after a HEAD. A server that refuses HEAD (403/405/501: a presigned
URL is signed for GET only) or names no length is asked for ``Range: bytes=0-0`` first:
its ``Content-Range`` gives the size. A server without range support is streamed in one
GET; no download ever writes more than the entry's size.

A **job's** source (``job=True``: a model the job brings) is a stranger's: its URL is
fetched under the URL policy (:mod:`comfy_worker.net`: public addresses only, checked on
every connection and redirect hop), a Hugging Face source of a job without the
operator's ``HF_TOKEN`` (with the entry's own token, if it gives one), and its errors
name no hash or size the source serves. Locked sources (the operator's lock,
``HF_ENDPOINT``) are trusted.

Failures become the errors in :mod:`comfy_worker.errors`; transient ones (5xx, 429,
cut or stalled connections, timeouts) become :class:`Transient` so the caller can retry.
Anything else (a bug) propagates as it is. Every URL in a message is redacted.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from comfy_worker.config import Secret, Settings, env_name
from comfy_worker.errors import (
    DiskFull,
    GatedModel,
    ModelNotFound,
    ModelSizeMismatch,
    ModelSourceInvalid,
    SyncError,
    UrlNotAllowed,
)
from comfy_worker.lockfile import HfSource, Source, UrlSource
from comfy_worker.net.policy import UrlPolicy, url_not_allowed
from comfy_worker.net.redact import redact_text
from comfy_worker.sync.download import (
    Cancelled,
    Download,
    Gate,
    SizeExceeded,
    Transient,
    Tuning,
    is_transient_network_error,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
HEAD_REFUSED = (403, 405, 501)
"""HEAD answers after which a ranged GET asks for the size (a presigned URL is signed for
GET only: HEAD gets 403)."""
_CONTENT_RANGE_TOTAL = re.compile(r"bytes (?:\d+-\d+|\*)/(\d+)")


@dataclass(frozen=True)
class Remote:
    """Where one file's bytes are, after redirects."""

    url: str
    headers: dict[str, str] = field(repr=False)
    size: int | None
    ranges: bool
    sha256: str | None = None
    commit: str | None = None
    policy: UrlPolicy | None = None
    """The URL policy every connection for the bytes obeys (a job's URL), or None."""


# --- decisions (pure) ---------------------------------------------------------------


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def headers_for(url: str, hub_headers: dict[str, str], endpoint: str) -> dict[str, str]:
    """Headers for ``url``: the token only goes to the Hub's own origin, never a CDN."""
    if origin(url) == origin(endpoint):
        return dict(hub_headers)
    return {k: v for k, v in hub_headers.items() if k.lower() != "authorization"}


def chunk_size_for(size: int, connections: int) -> int:
    """Byte range per request: about 8 per connection, 1 to 8 MiB each.

    Smaller ranges shorten the tail at the end of a file, where fewer ranges than
    connections are left (measured: 4 MiB ranges reach 0.96-0.98 of a capped link
    where 16 MiB reach 0.81-0.90); larger ones save requests on big files.
    """
    per = -(-size // (max(1, connections) * 8))
    return max(MIB, min(8 * MIB, per))


def space_shortfall(free: int, needed: int) -> int:
    """Bytes missing to store ``needed`` bytes with ``free`` available (0 when it fits)."""
    return max(0, needed - free)


def job_policy(settings: Settings) -> UrlPolicy:
    """The URL policy for a job's URLs (``COMFY_WORKER_URL_ALLOW``'s exceptions)."""
    return UrlPolicy.of(settings.url_allow)


def http_error(status: int, *, path: str, source: Source, settings: Settings,
               job: bool = False) -> SyncError | Transient:
    """The error for an HTTP status answered for a file (never shows a token)."""
    what = source.describe()
    if status in (401, 403) and job:
        if isinstance(source, HfSource):
            given = "its own token has no access" if source.token else "it gives no token"
            return GatedModel(
                f'"{path}": {what} answered {status}: the model is gated or private, and '
                f"{given} (a job's models are fetched without the worker's "
                f"{env_name('hf_token')})",
                hint='give a read token of an account with access as "token" in the '
                "entry's source, or use a public model")
        return GatedModel(f'"{path}": {what} answered {status}: the server requires '
                          "authorization",
                          hint="give a URL that needs no login (a presigned URL works)")
    if status in (401, 403):
        if isinstance(source, HfSource):
            token_state = (f"{env_name('hf_token')} is set but has no access to this repo"
                           if settings.hf_token else f"{env_name('hf_token')} is not set")
            return GatedModel(
                f'"{path}": {what} answered {status}: the model is gated or private '
                f"({token_state})",
                hint=f"accept the model's terms on the Hub page of {source.repo}, then set "
                f"{env_name('hf_token')} to a token of an account with access (a read token is "
                "enough)",
            )
        return GatedModel(
            f'"{path}": {what} answered {status}: the server requires authorization',
            hint="use a URL that needs no login, or host the file on Hugging Face and "
            f"lock it as hf://owner/repo/file with {env_name('hf_token')} set",
        )
    if status == 404:
        hint = ("check repo, revision and file in the lock (`comfy-worker lock add` "
                "re-pins it); the commit may have been deleted")
        if job:
            hint = "check the source of the job's models entry"
        elif isinstance(source, UrlSource):
            hint = "the URL no longer serves the file; pin another source with `lock add`"
        return ModelNotFound(f'"{path}": {what} answered 404 (not found)', hint=hint)
    if status == 429 or status >= 500:
        return Transient(f"{what} answered {status}")
    return SyncError(f'"{path}": {what} answered HTTP {status}',
                     hint="check the source of the job's models entry" if job
                     else "check the source in the lock")


def _hub_transient_types() -> tuple[type[BaseException], ...]:
    """Network failures of huggingface_hub's HTTP client (httpx2 in huggingface_hub 2,
    httpx in 1) that are worth retrying: timeouts, connection errors, a server that
    closed the connection, a failing proxy."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += [mod.TimeoutException, mod.NetworkError, mod.RemoteProtocolError,
                  mod.ProxyError]
    return tuple(found)


def network_error(exc: BaseException, *, path: str, source: Source, job: bool = False
                  ) -> Transient | SyncError | UrlNotAllowed:
    """The error for a failed request: Transient when retrying can help;
    :class:`UrlNotAllowed` for a job's URL the policy refuses; ModelSourceInvalid for a
    source that cannot be followed (redirect loop, other scheme, a bad URL); else a
    SyncError naming the file (a TLS failure). URLs in it are redacted."""
    import requests

    from comfy_worker.net.http import AddressRefused, RedirectRefused, UrlRefused

    if isinstance(exc, AddressRefused):
        return url_not_allowed(f'models entry "{path}": source.url', _url_of(source),
                               exc.refusal, host=exc.host)
    if isinstance(exc, UrlRefused):
        return url_not_allowed(f'models entry "{path}": source.url'
                               + (" (redirected)" if exc.redirected else ""), exc.url,
                               exc.refusal)
    fix = ("give a URL that answers with the file itself (http or https, at most 10 "
           "redirects)" if job else "check the source in the lock")
    if isinstance(exc, RedirectRefused):
        return ModelSourceInvalid(f'"{path}": {source.describe()} cannot be fetched: '
                                  f"{exc.describe()}", hint=fix)
    what = f"{source.describe()}: {type(exc).__name__}: {redact_text(str(exc))}"
    if isinstance(exc, requests.TooManyRedirects | requests.exceptions.InvalidSchema
                  | requests.exceptions.MissingSchema | requests.exceptions.InvalidURL):
        return ModelSourceInvalid(f'"{path}": {what}', hint=fix)
    if is_transient_network_error(exc):
        return Transient(what)
    return SyncError(f'"{path}": {what}',
                     hint="check the source, the network's proxy and TLS settings "
                     "(REQUESTS_CA_BUNDLE), and the system clock")


def _url_of(source: Source) -> str:
    return source.url if isinstance(source, UrlSource) else source.describe()


# --- locating ---------------------------------------------------------------------


def hub_headers(settings: Settings, token: Secret | bool | None = True) -> dict[str, str]:
    """Headers for the Hub: with the operator's ``HF_TOKEN`` (``token=True``), another
    token, or none (``None``/``False``)."""
    from huggingface_hub.utils import build_hf_headers

    if token is True:
        token = settings.hf_token
    value = token.reveal() if isinstance(token, Secret) and token else False
    return dict(build_hf_headers(token=value, library_name="comfy-worker"))


def _hf_token(source: HfSource, settings: Settings, job: bool) -> Secret | None:
    """A job's Hugging Face source never uses the operator's token; it may bring its own."""
    return source.token if job else settings.hf_token


def hf_metadata(source: HfSource, settings: Settings, *, path: str, job: bool = False
                ) -> Remote:
    """HEAD the file on the Hub (following its redirects to the CDN location).

    ``source`` may be unpinned (a branch, for ``lock add``); ``Remote.commit`` then
    names the commit the branch points at.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(source.repo, source.file,
                     repo_type=None if source.repo_type == "model" else source.repo_type,
                     revision=source.revision, endpoint=settings.hf_endpoint)
    token = _hf_token(source, settings, job)
    try:
        meta = get_hf_file_metadata(url, token=token.reveal() if token else False,
                                    endpoint=settings.hf_endpoint,
                                    timeout=settings.stall_timeout)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        err = http_error(status, path=path, source=source, settings=settings, job=job)
        raise err from None
    except _hub_transient_types() as exc:
        raise Transient(f"{source.describe()}: {type(exc).__name__}: "
                        f"{redact_text(str(exc))}") from None
    location = meta.location or url
    etag = meta.etag or ""
    sha = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
    return Remote(url=location, headers=headers_for(location, hub_headers(settings, token),
                                                     settings.hf_endpoint),
                  size=meta.size, ranges=True, sha256=sha, commit=meta.commit_hash)


def url_metadata(url: str, settings: Settings, *, path: str, source: Source,
                 job: bool = False) -> Remote:
    """HEAD a plain URL, following redirects hop by hop: final URL, size, range support.
    A HEAD refused (:data:`HEAD_REFUSED`) or without a length is followed by a ranged
    GET of the first byte, whose ``Content-Range`` names the size. A job's URL is
    fetched under the URL policy, with no header of the operator's."""
    import requests  # here, not at the top: a warm start never needs it

    from comfy_worker.net.http import AddressRefused, RedirectRefused, UrlRefused, open_url
    from comfy_worker.net.http import session as http_session

    policy = job_policy(settings) if job else None
    headers = {} if job else headers_for(url, hub_headers(settings), settings.hf_endpoint)
    timeout = (settings.stall_timeout, settings.stall_timeout)
    http = http_session(policy)
    try:
        r = open_url(http, "HEAD", url, headers=headers, timeout=timeout, policy=policy)
        r.close()
        length = r.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        if r.status_code in HEAD_REFUSED or (r.status_code < 300 and size is None):
            return _probe(http, url, headers, settings, path=path, source=source, job=job,
                          policy=policy)
        if r.status_code >= 400:
            raise http_error(r.status_code, path=path, source=source, settings=settings,
                             job=job)
        ranges = r.headers.get("Accept-Ranges", "").lower() == "bytes"
        return _remote(r.url, headers, settings, size=size, ranges=ranges, policy=policy)
    except (requests.RequestException, AddressRefused, RedirectRefused, UrlRefused) as exc:
        raise network_error(exc, path=path, source=source, job=job) from None
    finally:
        http.close()


def _remote(final: str, headers: dict[str, str], settings: Settings, *, size: int | None,
            ranges: bool, policy: UrlPolicy | None) -> Remote:
    if policy is None:  # the Hub's token only ever goes to the Hub's origin
        headers = headers_for(final, headers, settings.hf_endpoint)
    return Remote(url=final, headers=headers, size=size, ranges=ranges, policy=policy)


def _probe(http: object, url: str, headers: dict[str, str], settings: Settings, *,
           path: str, source: Source, job: bool, policy: UrlPolicy | None) -> Remote:
    """``GET Range: bytes=0-0``: the size from ``Content-Range`` (206), or from
    ``Content-Length`` when the server ignores ranges (200; the body is not read)."""
    from comfy_worker.net.http import open_url

    timeout = (settings.stall_timeout, settings.stall_timeout)
    r = open_url(http, "GET", url,  # type: ignore[arg-type]
                 headers={**headers, "Range": "bytes=0-0", "Accept-Encoding": "identity"},
                 timeout=timeout, policy=policy)
    try:
        if r.status_code == 416:  # an empty file: nothing at byte 0
            m = _CONTENT_RANGE_TOTAL.fullmatch(r.headers.get("Content-Range", ""))
            return _remote(r.url, headers, settings, size=int(m.group(1)) if m else None,
                           ranges=False, policy=policy)
        if r.status_code >= 400:
            raise http_error(r.status_code, path=path, source=source, settings=settings,
                             job=job)
        if r.status_code == 206:
            m = _CONTENT_RANGE_TOTAL.fullmatch(r.headers.get("Content-Range", ""))
            if m is not None:
                return _remote(r.url, headers, settings, size=int(m.group(1)), ranges=True,
                               policy=policy)
        length = r.headers.get("Content-Length") if r.status_code == 200 else None
        return _remote(r.url, headers, settings,
                       size=int(length) if length and length.isdigit() else None,
                       ranges=False, policy=policy)
    finally:
        r.close()


def locate(source: Source, settings: Settings, *, path: str, job: bool = False) -> Remote:
    """Where ``source``'s bytes are (see the module doc; ``job``: a job's own model)."""
    if isinstance(source, HfSource):
        return hf_metadata(source, settings, path=path, job=job)
    return url_metadata(source.url, settings, path=path, source=source, job=job)


# --- disk space ---------------------------------------------------------------------


def existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_free_space(directory: Path, needed: int, *, what: str) -> None:
    """Fail early, naming the bytes needed, when ``needed`` bytes will not fit."""
    usage = shutil.disk_usage(existing_ancestor(directory))
    short = space_shortfall(usage.free, needed)
    if short:
        raise DiskFull(
            f"not enough disk space in {directory}: {what} needs {needed} bytes, "
            f"{usage.free} bytes are free ({short} bytes short)",
            hint="free space there, or point --models-dir / --volume at a larger disk",
        )


def disk_full_error(directory: Path, needed: int, *, path: str) -> DiskFull:
    free = shutil.disk_usage(existing_ancestor(directory)).free
    return DiskFull(
        f'disk full in {directory} while downloading "{path}": it needs {needed} bytes '
        f"({free} bytes free now)",
        hint="free space there, or point --models-dir / --volume at a larger disk",
    )


# --- downloading --------------------------------------------------------------------


class Downloads:
    """The downloads running in one sync, so a cancel can stop them all."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._lock = threading.Lock()
        self._running: set[Download] = set()
        self.cancelled = threading.Event()

    def add(self, download: Download) -> None:
        with self._lock:
            self._running.add(download)
            if self.cancelled.is_set():
                download.cancel()

    def discard(self, download: Download) -> None:
        with self._lock:
            self._running.discard(download)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            running = list(self._running)
        for download in running:
            download.cancel()


def tuning_for(settings: Settings, size: int | None) -> Tuning:
    connections = max(1, settings.connections)
    return Tuning(connections=connections,
                  chunk_size=chunk_size_for(size or 0, connections),
                  retries=max(1, settings.retries), stall_timeout=settings.stall_timeout,
                  connect_timeout=settings.stall_timeout)


def transfer(remote: Remote, dest: Path, settings: Settings, *, path: str, source: Source,
             on_bytes: Callable[[int], None], downloads: Downloads,
             priority: int = 0, size: int | None = None, job: bool = False,
             watch: Callable[[Download | None], None] | None = None) -> str:
    """Download ``remote`` into ``dest`` (which exists); return the file's sha256,
    computed while the bytes arrived. At most ``size`` bytes are written (default: the
    size the source named): a source that sends more fails as a size mismatch at
    ``size + 1`` bytes.

    ``watch`` is told the :class:`Download` before it runs (a scheduler may change its
    priority) and ``None`` once it ended.
    """
    import requests

    from comfy_worker.net.http import AddressRefused, RedirectRefused, UrlRefused

    size = remote.size if size is None else size
    if size is None:
        raise ValueError(f'"{path}": a download needs the size it may not pass')
    ranges = remote.ranges and remote.size == size
    download = Download(
        remote.url, remote.headers, dest, size=size, ranges=ranges,
        http_error=lambda status: http_error(status, path=path, source=source,
                                             settings=settings, job=job),
        describe=source.describe(), tuning=tuning_for(settings, size),
        gate=downloads.gate, priority=priority, on_bytes=on_bytes, policy=remote.policy)
    downloads.add(download)
    if watch is not None:
        watch(download)
    try:
        t0 = time.monotonic()
        sha = download.run()
        log.debug('"%s": %d bytes in %.2f s, %d bytes hashed after the last one, '
                  "%d range retries", path, download.received, time.monotonic() - t0,
                  download.tail_hashed or 0, download.range_retries)
        return sha
    except (requests.RequestException, AddressRefused, RedirectRefused, UrlRefused) as exc:
        raise network_error(exc, path=path, source=source, job=job) from None  # TLS, URL
    except SizeExceeded:
        raise ModelSizeMismatch(
            f'"{path}": {source.describe()} sent more than the {size} bytes the entry '
            "pins; the download was stopped there",
            hint="correct the entry's size and sha256, or its source" if job else
            f"re-pin it with `comfy-worker lock add SOURCE --path {path} --replace` if "
            "the change is intended") from None
    except OSError as exc:
        if isinstance(exc, SyncError):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(dest.parent, remote.size or 0, path=path) from None
        raise
    finally:
        downloads.discard(download)
        if watch is not None:
            watch(None)


@dataclass(frozen=True)
class Streamed:
    sha256: str
    size: int


def stream(remote: Remote, settings: Settings, *, path: str, source: Source,
           sink: Callable[[bytes], object] | None = None,
           on_bytes: Callable[[int], None] | None = None,
           cancelled: threading.Event | None = None) -> Streamed:
    """GET ``remote`` in one stream, sha256 on the way; each block also goes to ``sink``.

    Raises the mapped HTTP error, :class:`Transient` for a cut, stalled or refused
    connection or a short body, :class:`Cancelled` when ``cancelled`` is set.
    """
    import requests

    from comfy_worker.net.http import RedirectRefused, open_url
    from comfy_worker.net.http import session as http_session

    h = hashlib.sha256()
    got = 0
    http = http_session(None)
    try:
        with open_url(http, "GET", remote.url,
                      headers={**remote.headers, "Accept-Encoding": "identity"},
                      timeout=(settings.stall_timeout, settings.stall_timeout)) as r:
            if r.status_code >= 400:
                raise http_error(r.status_code, path=path, source=source, settings=settings)
            for block in r.iter_content(chunk_size=MIB):
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled()
                if sink is not None:
                    sink(block)
                h.update(block)
                got += len(block)
                if on_bytes is not None:
                    on_bytes(len(block))
    except (requests.RequestException, RedirectRefused) as exc:
        raise network_error(exc, path=path, source=source) from None
    finally:
        http.close()
    if remote.size is not None and got != remote.size:
        raise Transient(f"{source.describe()}: got {got} of {remote.size} bytes")
    return Streamed(h.hexdigest(), got)
