"""``lock add``: turn a source string into a locked entry (commit, size, sha256).

``hf://owner/repo[@revision]/path/in/repo`` is resolved with huggingface_hub's file
metadata: a branch or tag becomes the commit in ``X-Repo-Commit``; size and sha256 come
from the LFS metadata (``X-Linked-Size``, ``X-Linked-Etag``) without a download. A file
stored without LFS, or an ``https://`` URL, is downloaded once (streamed) to hash it.

``lock from-workflow`` may pass the SHA256 a workflow declares for the file: a source whose
sha256 is known (the Hub's LFS metadata, a hashing download) must agree with it, else
:class:`~comfy_worker.errors.DeclaredHashMismatch` names both; where only a download
would tell (a non-LFS file, a URL) and the size is known, the declared one is used and
no download is made (``sync`` verifies the bytes against it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from comfy_worker.config import Settings, env_name
from comfy_worker.errors import DeclaredHashMismatch, SourceError
from comfy_worker.lockfile import HfSource, LockEntry, UrlSource
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


@dataclass(frozen=True)
class Declared:
    """A SHA256 a workflow declares for a file, and where (for messages)."""

    sha256: str
    """Lower-case hex."""
    where: str
    """E.g. ``node 12``."""


def _checked(entry: LockEntry, declared: Declared | None, text: str) -> LockEntry:
    if declared is not None and entry.sha256 != declared.sha256:
        raise DeclaredHashMismatch(
            f"{entry.path}: {text} has sha256 {entry.sha256}, but the workflow declares "
            f"{declared.sha256} ({declared.where})",
            hint="the declaration or the source is wrong: fix the workflow's hash, or "
            "point it at the file it names")
    return entry


def resolve(text: str, path: str, settings: Settings, *,
            declared: Declared | None = None) -> LockEntry:
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
                    hint=f"check {env_name('hf_endpoint')} ({settings.hf_endpoint}) or pin a "
                    "commit")
            source = parsed.at(commit)
            if remote.sha256 is not None and remote.size is not None:
                log.info("%s: LFS metadata: sha256 %s, %d bytes", text, remote.sha256,
                         remote.size)
                return _checked(LockEntry(path=path, source=source, sha256=remote.sha256,
                                          size=remote.size), declared, text)
            if declared is not None and remote.size is not None:
                log.info("%s: no LFS sha256 in the metadata: using the declared sha256 %s",
                         text, declared.sha256)
                return LockEntry(path=path, source=source, sha256=declared.sha256,
                                 size=remote.size)
            log.info("%s: no LFS sha256 in the metadata: downloading once to hash it", text)
            pinned = remote if parsed.pinned else fetch.hf_metadata(source, settings, path=path)
            streamed = fetch.stream(pinned, settings, path=path, source=source)
            return _checked(LockEntry(path=path, source=source, sha256=streamed.sha256,
                                      size=streamed.size), declared, text)
        remote = fetch.url_metadata(parsed.url, settings, path=path, source=parsed)
        if declared is not None and remote.size is not None:
            log.info("%s: using the declared sha256 %s (%d bytes)", parsed.url,
                     declared.sha256, remote.size)
            return LockEntry(path=path, source=parsed, sha256=declared.sha256,
                             size=remote.size)
        log.info("%s: downloading once to hash it", parsed.url)
        streamed = fetch.stream(remote, settings, path=path, source=parsed)
        return _checked(LockEntry(path=path, source=parsed, sha256=streamed.sha256,
                                  size=streamed.size), declared, text)
    except fetch.Transient as exc:
        raise SourceError(f"{text}: {exc}", hint="the source is failing; retry later") from None
