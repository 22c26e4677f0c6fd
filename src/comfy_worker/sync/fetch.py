"""Getting bytes: locate a source (huggingface_hub metadata or a HEAD), then download.

Hugging Face sources: ``hf_hub_url`` + ``get_hf_file_metadata`` (``HF_ENDPOINT``,
``HF_TOKEN``) give the final location (the CDN URL the Hub redirects to), the size and
the LFS sha256. The bytes come from a :class:`~comfy_worker.sync.download.Download` of
that location: several byte ranges at once, sha256 computed as they land. URL sources
take the same path after a HEAD; a server without range support is streamed in one GET.

Failures become the errors in :mod:`comfy_worker.errors`; transient ones (5xx, 429,
cut or stalled connections, timeouts) become :class:`Transient` so the caller can retry.
Anything else (a bug) propagates as it is.
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

from comfy_worker.config import Settings, env_name
from comfy_worker.errors import DiskFull, GatedModel, ModelNotFound, SyncError
from comfy_worker.lockfile import HfSource, Source, UrlSource
from comfy_worker.sync.download import (
    Cancelled,
    Download,
    Gate,
    Transient,
    Tuning,
    is_transient_network_error,
)

log = logging.getLogger(__name__)

_TIMEOUT = (10.0, 60.0)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Remote:
    """Where one file's bytes are, after redirects."""

    url: str
    headers: dict[str, str] = field(repr=False)
    size: int | None
    ranges: bool
    sha256: str | None = None
    commit: str | None = None


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


def http_error(status: int, *, path: str, source: Source, settings: Settings,
               url: str | None = None) -> SyncError | Transient:
    """The error for an HTTP status answered for a locked file (never shows the token)."""
    what = source.describe()
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
        if isinstance(source, UrlSource):
            hint = "the URL no longer serves the file; pin another source with `lock add`"
        return ModelNotFound(f'"{path}": {what} answered 404 (not found)', hint=hint)
    if status == 429 or status >= 500:
        return Transient(f"{what} answered {status}")
    return SyncError(f'"{path}": {what} answered HTTP {status}',
                     hint="check the source in the lock")


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


def network_error(exc: BaseException, *, path: str, source: Source) -> Transient | SyncError:
    """The error for a failed request: Transient when retrying can help, else a
    SyncError naming the file (an invalid URL, too many redirects, a TLS failure)."""
    what = f"{source.describe()}: {type(exc).__name__}: {exc}"
    if is_transient_network_error(exc):
        return Transient(what)
    return SyncError(f'"{path}": {what}',
                     hint="check the source in the lock, the network's proxy and TLS "
                     "settings (REQUESTS_CA_BUNDLE), and the system clock")


# --- locating ---------------------------------------------------------------------


def hub_headers(settings: Settings) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    token = settings.hf_token.reveal() if settings.hf_token else False
    return dict(build_hf_headers(token=token, library_name="comfy-worker"))


def hf_metadata(source: HfSource, settings: Settings, *, path: str) -> Remote:
    """HEAD the file on the Hub (following its redirects to the CDN location).

    ``source`` may be unpinned (a branch, for ``lock add``); ``Remote.commit`` then
    names the commit the branch points at.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(source.repo, source.file,
                     repo_type=None if source.repo_type == "model" else source.repo_type,
                     revision=source.revision, endpoint=settings.hf_endpoint)
    token = settings.hf_token.reveal() if settings.hf_token else False
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=settings.hf_endpoint,
                                    timeout=_TIMEOUT[0])
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        err = http_error(status, path=path, source=source, settings=settings)
        raise err from None
    except _hub_transient_types() as exc:
        raise Transient(f"{source.describe()}: {type(exc).__name__}: {exc}") from None
    location = meta.location or url
    etag = meta.etag or ""
    sha = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
    return Remote(url=location, headers=headers_for(location, hub_headers(settings),
                                                     settings.hf_endpoint),
                  size=meta.size, ranges=True, sha256=sha, commit=meta.commit_hash)


def url_metadata(url: str, settings: Settings, *, path: str, source: Source) -> Remote:
    """HEAD a plain URL, following redirects: final URL, size, range support."""
    import requests  # here, not at the top: a warm start never needs it

    headers = headers_for(url, hub_headers(settings), settings.hf_endpoint)
    try:
        r = requests.head(url, headers=headers, allow_redirects=True, timeout=_TIMEOUT)
    except requests.RequestException as exc:
        raise network_error(exc, path=path, source=source) from None
    if r.status_code in (405, 501):  # no HEAD here: a plain streamed GET will do
        return Remote(url=url, headers=headers, size=None, ranges=False)
    if r.status_code >= 400:
        raise http_error(r.status_code, path=path, source=source, settings=settings)
    length = r.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    ranges = r.headers.get("Accept-Ranges", "").lower() == "bytes"
    final = r.url
    return Remote(url=final, headers=headers_for(final, headers, settings.hf_endpoint),
                  size=size, ranges=ranges)


def locate(source: Source, settings: Settings, *, path: str) -> Remote:
    if isinstance(source, HfSource):
        return hf_metadata(source, settings, path=path)
    return url_metadata(source.url, settings, path=path, source=source)


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
                  connect_timeout=_TIMEOUT[0])


def transfer(remote: Remote, dest: Path, settings: Settings, *, path: str, source: Source,
             on_bytes: Callable[[int], None], downloads: Downloads,
             priority: int = 0,
             watch: Callable[[Download | None], None] | None = None) -> str:
    """Download ``remote`` into ``dest`` (which exists); return the file's sha256,
    computed while the bytes arrived.

    ``watch`` is told the :class:`Download` before it runs (a scheduler may change its
    priority) and ``None`` once it ended.
    """
    import requests

    download = Download(
        remote.url, remote.headers, dest, size=remote.size, ranges=remote.ranges,
        http_error=lambda status: http_error(status, path=path, source=source,
                                             settings=settings),
        describe=source.describe(), tuning=tuning_for(settings, remote.size),
        gate=downloads.gate, priority=priority, on_bytes=on_bytes)
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
    except requests.RequestException as exc:  # not a network failure: TLS, bad URL
        raise network_error(exc, path=path, source=source) from None
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

    h = hashlib.sha256()
    got = 0
    try:
        with requests.get(remote.url, headers={**remote.headers, "Accept-Encoding": "identity"},
                          stream=True, timeout=(_TIMEOUT[0], settings.stall_timeout)) as r:
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
    except requests.RequestException as exc:
        raise network_error(exc, path=path, source=source) from None
    if remote.size is not None and got != remote.size:
        raise Transient(f"{source.describe()}: got {got} of {remote.size} bytes")
    return Streamed(h.hexdigest(), got)
