"""Job inputs from outside: images given by URL, and job files named by settings (the
I/O edge of the job input).

An image URL is a stranger's: it is fetched under the URL policy (:mod:`comfy_worker.net`:
http(s) to public addresses only, checked on every connection and redirect hop), at most
``COMFY_WORKER_INPUT_URL_MAX_BYTES`` per image (enforced while streaming, whatever the
server declares), each image within ``COMFY_WORKER_INPUT_URL_TIMEOUT`` seconds in all
(connect, redirects, body: a server that drips a byte at a time cannot hold the job), and
all of them within the job's own deadline. At most :data:`FETCHES_AT_ONCE` images are
fetched at once. When the job is cancelled (its HTTP client went away) or a deadline
passes, every fetch in flight is cut at once. Errors name the image and the URL
redacted (signed URLs carry their secret in the query string).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from comfy_worker.config import env_name
from comfy_worker.errors import (
    ConfigError,
    InputFetchFailed,
    JobCancelled,
    JobTimeout,
    WorkerError,
)
from comfy_worker.job.request import InputImage
from comfy_worker.jsontypes import json_type_name
from comfy_worker.net.policy import UrlPolicy, url_not_allowed
from comfy_worker.net.redact import redact_url

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
FETCHES_AT_ONCE = 4
"""Images of one job fetched at the same time."""
_POLL = 0.05


@dataclass
class _Fetch:
    """One image being fetched: its own session (so it can be cut alone), its deadline
    once it started, and why it was cut."""

    index: int
    image: InputImage
    http: Any = None
    until: float | None = None
    cut: str | None = None
    """``timeout`` (its own), ``job-timeout`` or ``cancelled``."""
    got: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def where(self) -> str:
        return (f'images[{self.index}] ("{self.image.name}") from '
                f"{redact_url(self.image.url or '')}")

    def mark(self, why: str) -> None:
        with self.lock:
            if self.cut is None:
                self.cut = why

    def stop(self, why: str) -> None:
        with self.lock:
            if self.cut is None:
                self.cut = why
            http = self.http
        if http is not None:
            http.abort()


def fetch_url_images(images: Sequence[InputImage], *, max_bytes: int, timeout: float,
                     policy: UrlPolicy | None = None, deadline: float | None = None,
                     job_timeout: float | None = None,
                     cancel: threading.Event | None = None) -> tuple[InputImage, ...]:
    """``images`` with every URL image's bytes filled in (others unchanged).

    ``policy``: the URL policy (default: public addresses only). ``timeout``: seconds each
    image may take in all. ``deadline`` (``time.monotonic()``): when the job's own
    ``job_timeout`` runs out; past it the fetches stop with :class:`JobTimeout`.
    ``cancel``: set, the fetches stop with :class:`JobCancelled`. Raises
    :class:`InputFetchFailed` or ``UrlNotAllowed`` naming the first image that failed
    (the others are cut)."""
    fetches = [_Fetch(i, image) for i, image in enumerate(images) if image.url is not None]
    if not fetches:
        return tuple(images)
    policy = policy if policy is not None else UrlPolicy()
    pool = ThreadPoolExecutor(max_workers=min(FETCHES_AT_ONCE, len(fetches)),
                              thread_name_prefix="image-fetch")
    futures: dict[Future[InputImage], _Fetch] = {
        pool.submit(_fetch, f, max_bytes=max_bytes, timeout=timeout, policy=policy,
                    deadline=deadline): f for f in fetches}
    done: dict[int, InputImage] = {}
    try:
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=_POLL, return_when=FIRST_COMPLETED)
            for fut in finished:
                done[futures[fut].index] = fut.result()  # the first failure raises
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                raise JobCancelled(
                    f"the job was cancelled while it fetched {len(pending)} input "
                    "image(s) by URL", hint="nothing more is fetched for it")
            if deadline is not None and now >= deadline:
                missing = sorted(futures[f].index for f in pending)
                raise JobTimeout(
                    f"job timed out after {job_timeout or 0:g} s while fetching its input "
                    f"images: images[{', '.join(map(str, missing))}] not fetched",
                    hint='raise "timeout" in the job input or '
                    f"{env_name('job_timeout')}, or serve the images faster",
                    details=[{"stage": "inputs", "timeout_s": job_timeout,
                              "images": [futures[f].image.name for f in pending]}])
            for fut in pending:
                f = futures[fut]
                if f.until is not None and now >= f.until:
                    f.stop("timeout")
    except BaseException as exc:
        why = ("cancelled" if isinstance(exc, JobCancelled) else
               "job-timeout" if isinstance(exc, JobTimeout) else "failed")
        for f in fetches:  # every fetch marked first, so none still queued starts
            f.mark(why)
        for f in fetches:
            f.stop(why)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return tuple(done.get(i, image) for i, image in enumerate(images))


def _fetch(f: _Fetch, *, max_bytes: int, timeout: float, policy: UrlPolicy,
           deadline: float | None) -> InputImage:
    import requests
    import urllib3

    from comfy_worker.net.http import (
        Aborted,
        AddressRefused,
        RedirectRefused,
        UrlRefused,
        open_url,
        session,
    )

    image = f.image
    assert image.url is not None
    t0 = time.monotonic()
    until = t0 + timeout if deadline is None else min(t0 + timeout, deadline)
    http = session(policy)
    with f.lock:
        f.http, f.until = http, until
        cut = f.cut
    if cut is not None:  # cancelled before it started
        http.abort()
    where = f.where
    left = max(0.1, until - t0) + 1.0  # the supervisor cuts it at ``until``
    try:
        with open_url(http, "GET", image.url, timeout=(left, left), policy=policy,
                      headers={"User-Agent": "comfy-worker"}) as r:
            if r.status_code >= 400:
                raise InputFetchFailed(f"{where}: the server answered HTTP {r.status_code}",
                                       hint="check that the URL is reachable from the "
                                       "worker and not expired")
            data = _read_capped(r, f, where=where, max_bytes=max_bytes)
    except AddressRefused as exc:
        raise url_not_allowed(f'images[{f.index}] ("{image.name}"): field "url"', image.url,
                              exc.refusal, host=exc.host) from None
    except UrlRefused as exc:
        raise url_not_allowed(f'images[{f.index}] ("{image.name}"): field "url"'
                              + (" (redirected)" if exc.redirected else ""), exc.url,
                              exc.refusal) from None
    except RedirectRefused as exc:
        raise InputFetchFailed(f"{where}: {exc.describe()}",
                               hint="give a URL that answers with the image itself (http "
                               "or https, at most 10 redirects)") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, Aborted, OSError) as exc:
        if isinstance(exc, WorkerError):
            raise
        if time.monotonic() >= until - 0.05:  # its socket's timeout beat the supervisor
            f.stop("timeout")
        raise _cut_error(f, where, timeout) or InputFetchFailed(
            f"{where}: {type(exc).__name__}",
            hint="check the URL; the worker must be able to fetch it within "
            f"{env_name('input_url_timeout')} seconds") from None
    finally:
        http.close()
    if not data:
        raise InputFetchFailed(f"{where}: the server sent 0 bytes",
                               hint="point the URL at the image file itself")
    log.info("fetched input image %s (%d bytes, %.2f s) from %s", image.name, len(data),
             time.monotonic() - t0, redact_url(image.url))
    return replace(image, data=data)


def _cut_error(f: _Fetch, where: str, timeout: float) -> WorkerError | None:
    """The error for a fetch that was cut on purpose (its own deadline), if it was."""
    if f.cut == "timeout":
        return InputFetchFailed(
            f"{where}: not fetched within {timeout:g} s ({f.got} bytes had arrived)",
            hint="serve the image faster, or send it as base64; the worker's operator "
            f"sets the time with {env_name('input_url_timeout')}")
    if f.cut is not None:  # the job was cancelled or timed out: the caller says so
        return InputFetchFailed(f"{where}: stopped ({f.cut})")
    return None


def _read_capped(r: Any, f: _Fetch, *, where: str, max_bytes: int) -> bytes:
    declared = r.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(where, f"{int(declared)} bytes", max_bytes)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = r.raw.read1(min(CHUNK, max_bytes + 1 - total), decode_content=True)
        if not chunk:
            break
        total += len(chunk)
        f.got = total
        if total > max_bytes:
            raise _too_large(where, f"more than {max_bytes} bytes", max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(where: str, size: str, limit: int) -> InputFetchFailed:
    return InputFetchFailed(f"{where}: the image is {size}, over the {limit}-byte limit",
                            hint="send a smaller image, or raise "
                            f"{env_name('input_url_max_bytes')}")


def read_job_file(path: Path, *, setting: str) -> dict[str, Any]:
    """A job input stored as JSON (``{"workflow": ...}`` or ``{"input": {...}}``), named by
    the setting ``setting`` (COMFY_WORKER_WARMUP, COMFY_WORKER_VAST_BENCHMARK)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{setting}={path}: cannot read a JSON job input ({exc})",
                          hint='point it at a JSON file like {"workflow": {...}}') from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{setting}={path} holds a JSON {json_type_name(payload)}, not an "
                          "object", hint='use {"workflow": {...}} or {"input": {"workflow": '
                          "{...}}}")
    return payload
