"""Job inputs from outside: images given by URL, and job files named by settings (the
I/O edge of the job input).

http(s) only; a size cap (``COMFY_WORKER_INPUT_URL_MAX_BYTES``) enforced while
streaming, whatever the server declares; a timeout (``COMFY_WORKER_INPUT_URL_TIMEOUT``)
per connect and per read. Errors name the image and the URL without its query string
(signed URLs carry their secret there).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from comfy_worker.config import env_name
from comfy_worker.errors import ConfigError, InputFetchFailed
from comfy_worker.job.request import InputImage, redact_url
from comfy_worker.jsontypes import json_type_name

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


def fetch_url_images(images: Sequence[InputImage], *, max_bytes: int, timeout: float
                     ) -> tuple[InputImage, ...]:
    """``images`` with every URL image's bytes filled in (others unchanged)."""
    return tuple(_fetch(image, i, max_bytes=max_bytes, timeout=timeout)
                 if image.url is not None else image for i, image in enumerate(images))


def _fetch(image: InputImage, index: int, *, max_bytes: int, timeout: float) -> InputImage:
    import requests

    assert image.url is not None
    shown = redact_url(image.url)
    where = f'images[{index}] ("{image.name}") from {shown}'
    t0 = time.monotonic()
    try:
        with requests.get(image.url, stream=True, timeout=(timeout, timeout),
                          headers={"User-Agent": "comfy-worker"}) as r:
            if urlsplit(r.url).scheme.lower() not in ("http", "https"):
                raise InputFetchFailed(f"{where}: redirected away from http(s)")
            if r.status_code >= 400:
                raise InputFetchFailed(f"{where}: the server answered HTTP {r.status_code}",
                                       hint="check that the URL is reachable from the "
                                       "worker and not expired")
            data = _read_capped(r, where=where, max_bytes=max_bytes)
    except requests.RequestException as exc:
        raise InputFetchFailed(f"{where}: {type(exc).__name__}",
                               hint="check the URL; the worker must be able to reach it "
                               f"within {env_name('input_url_timeout')} seconds") from None
    if not data:
        raise InputFetchFailed(f"{where}: the server sent 0 bytes",
                               hint="point the URL at the image file itself")
    log.info("fetched input image %s (%d bytes, %.2f s) from %s", image.name, len(data),
             time.monotonic() - t0, shown)
    return replace(image, data=data)


def _read_capped(r: object, *, where: str, max_bytes: int) -> bytes:
    declared = r.headers.get("Content-Length")  # type: ignore[attr-defined]
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(where, f"{int(declared)} bytes", max_bytes)
    chunks: list[bytes] = []
    total = 0
    for chunk in r.iter_content(CHUNK):  # type: ignore[attr-defined]
        total += len(chunk)
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
