"""``lock add``: turn a source string into a locked entry (commit, size, sha256).

``hf://owner/repo[@revision]/path/in/repo`` is resolved with huggingface_hub's file
metadata: a branch or tag becomes the commit in ``X-Repo-Commit``; size and sha256 come
from the LFS metadata (``X-Linked-Size``, ``X-Linked-Etag``) without a download. A file
stored without LFS, or an ``https://`` URL, is downloaded once (streamed) to hash it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from urllib.parse import urlsplit

import requests

from comfy_worker.config import Settings
from comfy_worker.errors import SourceError
from comfy_worker.lockfile import HfSource, LockEntry, Source, UrlSource
from comfy_worker.sync import fetch

log = logging.getLogger(__name__)

_HF = re.compile(r"^hf://(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/@]+/[^/@]+)"
                 r"(?:@(?P<rev>[^/]+))?/(?P<file>.+)$")


def parse_source(text: str) -> HfSource | UrlSource:
    """``hf://owner/repo[@revision]/path`` or an http(s) URL (pure).

    The Hugging Face form may name a branch or tag (default ``main``): an unpinned
    :class:`HfSource` that :func:`resolve` pins.
    """
    text = text.strip()
    if text.startswith("hf://"):
        m = _HF.match(text)
        if not m or ".." in m.group("file").split("/"):
            raise SourceError(
                f"source {text!r} is not hf://owner/repo[@revision]/path/in/repo",
                hint="e.g. hf://stabilityai/sdxl-vae@main/sdxl_vae.safetensors")
        kind = {"datasets": "dataset", "spaces": "space"}.get(m.group("type") or "", "model")
        return HfSource(repo=m.group("repo"), revision=m.group("rev") or "main",
                        file=m.group("file"), repo_type=kind)
    parts = urlsplit(text)
    if parts.scheme in ("https", "http") and parts.netloc:
        return UrlSource(url=text)
    raise SourceError(f"source {text!r} is neither hf://owner/repo/path nor an https:// URL",
                      hint="pass hf://owner/repo[@revision]/path/in/repo or https://host/file")


def _hash_download(remote: fetch.Remote, *, path: str, source: Source,
                   settings: Settings) -> tuple[str, int]:
    """Stream the file once and hash it (nothing is written to disk)."""
    h = hashlib.sha256()
    size = 0
    try:
        with requests.get(remote.url, headers=remote.headers, stream=True,
                          timeout=(10, 60)) as r:
            if r.status_code >= 400:
                err = fetch.http_error(r.status_code, path=path, source=source,
                                       settings=settings)
                raise (SourceError(str(err)) if isinstance(err, fetch.Transient) else err)
            for block in r.iter_content(chunk_size=1024 * 1024):
                h.update(block)
                size += len(block)
    except requests.RequestException as exc:
        raise SourceError(f"{source.describe()}: download failed: {exc}",
                          hint="check the URL and your connection, then retry") from None
    if remote.size is not None and size != remote.size:
        raise SourceError(f"{source.describe()}: got {size} of {remote.size} bytes",
                          hint="the connection was cut; retry")
    return h.hexdigest(), size


def resolve(text: str, path: str, settings: Settings) -> LockEntry:
    """Resolve ``text`` into a :class:`LockEntry` for ``path`` (network I/O)."""
    parsed = parse_source(text)
    try:
        if isinstance(parsed, HfSource):
            remote = fetch.hf_metadata(parsed, settings, path=path)
            commit = remote.commit or ""
            if not re.fullmatch(r"[0-9a-f]{40}", commit):
                raise SourceError(
                    f"{text}: the Hub answered no commit for revision {parsed.revision!r} "
                    f"(X-Repo-Commit: {remote.commit!r})",
                    hint=f"check HF_ENDPOINT ({settings.hf_endpoint}) or pin a commit")
            source = parsed.at(commit)
            if remote.sha256 is not None and remote.size is not None:
                log.info("%s: LFS metadata: sha256 %s, %d bytes", text, remote.sha256,
                         remote.size)
                return LockEntry(path=path, source=source, sha256=remote.sha256,
                                 size=remote.size)
            log.info("%s: no LFS sha256 in the metadata: downloading once to hash it", text)
            pinned = remote if parsed.pinned else fetch.hf_metadata(source, settings, path=path)
            sha, size = _hash_download(pinned, path=path, source=source, settings=settings)
            return LockEntry(path=path, source=source, sha256=sha, size=size)
        remote = fetch.url_metadata(parsed.url, settings, path=path, source=parsed)
        log.info("%s: downloading once to hash it", parsed.url)
        sha, size = _hash_download(remote, path=path, source=parsed, settings=settings)
        return LockEntry(path=path, source=parsed, sha256=sha, size=size)
    except fetch.Transient as exc:
        raise SourceError(f"{text}: {exc}", hint="the source is failing; retry later") from None
