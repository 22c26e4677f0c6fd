"""The Comfy API v2's assets: uploaded inputs and job outputs, on disk under the work dir.

Bytes live once per content, as ``ROOT/blobs/<blake3 hex>`` (written to ``ROOT/tmp`` and
hashed as they arrive, then renamed); an :class:`Asset` is a record (a UUID, its hash,
type, ``file_path`` label, retention) over one blob, held in memory. Uploading bytes the
store already has returns the upload record it has (``created_new`` false, retention
extended); a job's outputs get records of their own. The store owns ``ROOT``: it is
emptied when the store opens (records are in memory, so files left by an earlier process
are nobody's) and when it closes.

Bounded: at most ``max_bytes`` of blobs and ``max_assets`` records. An asset expires
``ttl`` seconds after its last upload or use; to make room, expired records go first,
then the least recently used, never a blob that a queued or running job holds
(:class:`Pin`). What cannot fit even then is refused (:class:`AssetStoreFull`) before
anything is evicted (:func:`plan_eviction`, pure). No name from a request is ever a path
here: blobs are named by their hash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from comfy_worker.config import env_name
from comfy_worker.entrypoints.api_v2 import wire
from comfy_worker.errors import (
    AssetStoreFull,
    BlobNotFound,
    HashMismatch,
    OutputUnavailable,
    RequestTooLarge,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_ASSETS = 10_000
SWEEP_INTERVAL_S = 60.0
CHUNK = 1 << 20


@dataclass
class Asset:
    id: str
    hash: str | None
    """``blake3:<hex>``; None for an output delivered to S3 (bytes never seen here)."""
    size: int
    content_type: str
    file_path: str | None
    created: float
    expires: float
    last_used: float
    job_id: str | None = None
    """The job that produced it (outputs)."""
    remote_url: str | None = None
    """An output uploaded to S3: its presigned URL (``/content`` redirects there)."""
    upload: bool = False
    """Made by an upload or from-hash: what re-uploading the same bytes returns."""

    def to_json(self, base_url: str, *, created_new: bool | None = None) -> dict[str, Any]:
        """The contract's ``Asset``: ``url`` is absolute (the SDK requires it)."""
        out: dict[str, Any] = {
            "id": self.id, "hash": self.hash, "size_bytes": self.size,
            "content_type": self.content_type, "file_path": self.file_path,
            "created_at": wire.iso(self.created),
            "url": self.remote_url or f"{base_url}{wire.PREFIX}/assets/{self.id}/content",
            "url_expires_at": wire.iso(self.expires), "expires_at": wire.iso(self.expires),
            "job_id": self.job_id}
        if created_new is not None:
            out["created_new"] = created_new
        return out


# --- eviction (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvictionPlan:
    drop: tuple[str, ...]
    """Asset ids to remove, in order."""
    fits: bool


def plan_eviction(assets: Sequence[Asset], blob_sizes: Mapping[str, int],
                  pinned: Iterable[str], *, now: float, need_bytes: int, cap_bytes: int,
                  need_count: int = 0, cap_count: int = DEFAULT_MAX_ASSETS) -> EvictionPlan:
    """Which records to drop so ``need_bytes`` more blob bytes (and ``need_count`` more
    records) fit under the caps: every expired record first, then least recently used.
    A blob's bytes free up only once no remaining record and no pin holds it. When even
    dropping everything evictable does not make room, ``fits`` is False and nothing
    (but the expired) is to be dropped."""
    pinned = set(pinned)
    holders: dict[str, int] = {}
    for a in assets:
        if a.hash is not None:
            holders[a.hash] = holders.get(a.hash, 0) + 1
    used = sum(blob_sizes.values())
    count = len(assets)
    expired = [a for a in assets if a.expires <= now]
    live = sorted((a for a in assets if a.expires > now), key=lambda a: a.last_used)
    drop: list[str] = []

    def remove(a: Asset) -> None:
        nonlocal used, count
        drop.append(a.id)
        count -= 1
        if a.hash is not None:
            holders[a.hash] -= 1
            if holders[a.hash] == 0 and a.hash not in pinned:
                used -= blob_sizes.get(a.hash, 0)

    def fits() -> bool:
        return used + need_bytes <= cap_bytes and count + need_count <= cap_count

    for a in expired:
        remove(a)
    always = len(drop)
    for a in live:
        if fits():
            break
        remove(a)
    if fits():
        return EvictionPlan(tuple(drop), True)
    return EvictionPlan(tuple(drop[:always]), False)


# --- writing one blob -------------------------------------------------------------------


class BlobWriter:
    """A temp file in the store, hashed (blake3) as bytes are written, at most ``limit``
    bytes (:class:`RequestTooLarge` past it)."""

    def __init__(self, directory: Path, limit: int) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hasher = blake3.blake3()
        self.size = 0
        self.limit = limit

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise RequestTooLarge(
                f"the asset is over {self.limit} bytes",
                hint=f"upload a smaller file, or raise {env_name('assets_max_bytes')} and "
                f"{env_name('max_request_bytes')}",
                details=[{"limit_bytes": self.limit}])
        self._hasher.update(data)
        self._file.write(data)

    def finish(self) -> str:
        """Flush and close; the content's ``blake3:<hex>``."""
        self._file.close()
        return "blake3:" + self._hasher.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


# --- the store ----------------------------------------------------------------------------


@dataclass
class Pin:
    """Blobs a queued or running job holds (its input assets): never evicted or removed
    until :meth:`release`, even if their records are deleted."""

    store: AssetStore
    hashes: tuple[str, ...]
    _released: bool = field(default=False, repr=False)

    def read(self, digest: str) -> bytes:
        assert digest in self.hashes
        return self.store.blob_path(digest).read_bytes()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.store.unpin(self.hashes)


def check_expected_hash(expected: str | None, digest: str, size: int) -> None:
    """An upload's ``expected_hash``, when it gave one, is the hash of what arrived."""
    if expected is not None and expected != digest:
        raise HashMismatch(
            f"the uploaded bytes hash to {digest}, not to the expected_hash {expected}",
            hint="send the file again (it changed or was cut on the way), or fix "
            "expected_hash",
            details=[{"expected_hash": expected, "actual_hash": digest, "size_bytes": size}])


class AssetStore:
    def __init__(self, root: Path, *, max_bytes: int, ttl: float,
                 max_assets: int = DEFAULT_MAX_ASSETS,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.max_assets = max_assets
        self._clock = clock
        self._lock = threading.Lock()
        self._assets: dict[str, Asset] = {}
        self._uploads: dict[str, str] = {}
        """hash → the upload record over it (what re-uploading those bytes returns)."""
        self._blobs: dict[str, int] = {}
        """hash → size of each blob on disk."""
        self._pins: dict[str, int] = {}
        self._next_sweep = 0.0
        _empty_dir(self.root)
        (self.root / "blobs").mkdir(parents=True)
        (self.root / "tmp").mkdir()

    # --- reading ------------------------------------------------------------------------

    def get(self, asset_id: str) -> Asset | None:
        with self._lock:
            self._sweep_if_due()
            asset = self._assets.get(asset_id)
            return asset if asset is not None and asset.expires > self._clock() else None

    def has_hash(self, digest: str) -> bool:
        with self._lock:
            return digest in self._blobs

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.split(":", 1)[1]

    def content(self, asset_id: str) -> tuple[Asset, Path | None] | None:
        """The asset and its file (None for a remote one); None when unknown. Counts as a
        use. :class:`OutputUnavailable` when its bytes are gone from disk."""
        with self._lock:
            asset = self._assets.get(asset_id)
            if asset is None or asset.expires <= self._clock():
                return None
            asset.last_used = self._clock()
        if asset.remote_url is not None or asset.hash is None:
            return asset, None
        path = self.blob_path(asset.hash)
        if not path.is_file():
            raise OutputUnavailable(f"the bytes of asset {asset_id} are no longer on disk",
                                    hint="upload the file again, or run the job again")
        return asset, path

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {"assets": len(self._assets), "bytes": sum(self._blobs.values()),
                    "max_bytes": self.max_bytes}

    # --- adding ---------------------------------------------------------------------------

    def writer(self) -> BlobWriter:
        return BlobWriter(self.root / "tmp", self.max_bytes)

    def add_upload(self, writer: BlobWriter, *, content_type: str, file_path: str,
                   expected_hash: str | None) -> tuple[Asset, bool]:
        """An uploaded file (the writer holds its bytes) as an asset: ``(asset,
        created_new)``; the upload record already over those bytes when there is one."""
        try:
            digest = writer.finish()
            check_expected_hash(expected_hash, digest, writer.size)
            with self._lock:
                existing = self._uploads.get(digest)
                if existing is not None and existing in self._assets:
                    return self._refresh(self._assets[existing]), False
                asset = self._publish(writer, digest, content_type=content_type,
                                      file_path=file_path, job_id=None, upload=True)
            log.info("asset %s: %s, %d bytes (%s)", asset.id, digest, asset.size,
                     content_type)
            return asset, True
        finally:
            writer.discard()

    def add_bytes(self, data: bytes, *, content_type: str, file_path: str,
                  job_id: str | None) -> Asset:
        """A job's output as an asset of its own."""
        writer = self.writer()
        try:
            for start in range(0, len(data), CHUNK):
                writer.write(memoryview(data)[start:start + CHUNK])
            digest = writer.finish()
            with self._lock:
                return self._publish(writer, digest, content_type=content_type,
                                     file_path=file_path, job_id=job_id, upload=False)
        finally:
            writer.discard()

    def add_remote(self, url: str, *, content_type: str, file_path: str,
                   job_id: str | None) -> Asset:
        """An output delivered to S3: a record whose content redirects to ``url``."""
        now = self._clock()
        asset = Asset(wire.new_id(), None, 0, content_type, file_path, now, now + self.ttl,
                      now, job_id=job_id, remote_url=url)
        with self._lock:
            self._make_room(0, 1)
            self._assets[asset.id] = asset
        return asset

    def from_hash(self, digest: str, *, file_path: str | None) -> Asset:
        """The upload record over bytes this store has (minted when only outputs hold
        them); :class:`BlobNotFound` otherwise."""
        with self._lock:
            self._sweep_if_due()
            existing = self._uploads.get(digest)
            if existing is not None and existing in self._assets:
                return self._refresh(self._assets[existing])
            size = self._blobs.get(digest)
            if size is None:
                raise BlobNotFound(f"no bytes with hash {digest} on this worker",
                                   hint="upload the file (POST /api/v2/assets)")
            self._make_room(0, 1)
            now = self._clock()
            asset = Asset(wire.new_id(), digest, size, wire.parse_content_type(
                None, file_path), file_path, now, now + self.ttl, now, upload=True)
            self._assets[asset.id] = asset
            self._uploads[digest] = asset.id
            return asset

    def _refresh(self, asset: Asset) -> Asset:
        """Re-referenced: retention extended, never shortened."""
        now = self._clock()
        asset.last_used = now
        asset.expires = max(asset.expires, now + self.ttl)
        return asset

    def _publish(self, writer: BlobWriter, digest: str, *, content_type: str,
                 file_path: str, job_id: str | None, upload: bool) -> Asset:
        """Under the lock: room made, the blob in place (unless those bytes are there
        already), a new record over it."""
        self._sweep_if_due()
        new_blob = digest not in self._blobs
        self._make_room(writer.size if new_blob else 0, 1)
        if new_blob:
            os.replace(writer.path, self.blob_path(digest))
            self._blobs[digest] = writer.size
        now = self._clock()
        asset = Asset(wire.new_id(), digest, writer.size, content_type, file_path, now,
                      now + self.ttl, now, job_id=job_id, upload=upload)
        self._assets[asset.id] = asset
        if upload:
            self._uploads[digest] = asset.id
        return asset

    # --- room and removal -------------------------------------------------------------------

    def _make_room(self, need_bytes: int, need_count: int) -> None:
        if need_bytes > self.max_bytes:
            raise RequestTooLarge(
                f"{need_bytes} bytes do not fit in the asset store at all "
                f"({env_name('assets_max_bytes')}={self.max_bytes})",
                hint=f"send a smaller file, or raise {env_name('assets_max_bytes')}")
        plan = plan_eviction(list(self._assets.values()), self._blobs, self._pins,
                             now=self._clock(), need_bytes=need_bytes,
                             cap_bytes=self.max_bytes, need_count=need_count,
                             cap_count=self.max_assets)
        for asset_id in plan.drop:
            self._remove(asset_id)
        if plan.drop:
            log.info("asset store: evicted %d asset(s) to make room", len(plan.drop))
        if not plan.fits:
            raise AssetStoreFull(
                f"the asset store is full: {sum(self._blobs.values())} of {self.max_bytes} "
                f"bytes and {len(self._assets)} of {self.max_assets} assets, held by "
                "queued or running jobs", hint="retry once those jobs are done, delete "
                f"assets you no longer need, or raise {env_name('assets_max_bytes')}",
                details=[{"need_bytes": need_bytes}])

    def delete(self, asset_id: str) -> bool:
        with self._lock:
            if asset_id not in self._assets:
                return False
            self._remove(asset_id)
            return True

    def _remove(self, asset_id: str) -> None:
        asset = self._assets.pop(asset_id)
        if asset.hash is None:
            return
        if self._uploads.get(asset.hash) == asset_id:
            del self._uploads[asset.hash]
        self._drop_blob_if_free(asset.hash)

    def _drop_blob_if_free(self, digest: str) -> None:
        if digest not in self._blobs or self._pins.get(digest) or any(
                a.hash == digest for a in self._assets.values()):
            return
        del self._blobs[digest]
        self.blob_path(digest).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove expired assets now; how many."""
        with self._lock:
            return self._sweep()

    def _sweep_if_due(self) -> None:
        if self._clock() >= self._next_sweep:
            self._sweep()

    def _sweep(self) -> int:
        now = self._clock()
        self._next_sweep = now + SWEEP_INTERVAL_S
        expired = [a.id for a in self._assets.values() if a.expires <= now]
        for asset_id in expired:
            self._remove(asset_id)
        if expired:
            log.info("asset store: %d asset(s) expired", len(expired))
        return len(expired)

    # --- pins -----------------------------------------------------------------------------

    def pin(self, asset_ids: Iterable[str]) -> tuple[Pin, dict[str, Asset]]:
        """Hold the blobs of these assets for a job (each use extends its retention);
        the assets found, by id (the caller reports the missing ones)."""
        found: dict[str, Asset] = {}
        with self._lock:
            self._sweep_if_due()
            for asset_id in dict.fromkeys(asset_ids):
                asset = self._assets.get(asset_id)
                if asset is not None and asset.hash is not None and \
                        asset.hash in self._blobs:
                    found[asset_id] = self._refresh(asset)
            hashes = tuple(dict.fromkeys(a.hash for a in found.values() if a.hash))
            for digest in hashes:
                self._pins[digest] = self._pins.get(digest, 0) + 1
        return Pin(self, hashes), found

    def unpin(self, hashes: Iterable[str]) -> None:
        with self._lock:
            for digest in hashes:
                left = self._pins.get(digest, 0) - 1
                if left > 0:
                    self._pins[digest] = left
                else:
                    self._pins.pop(digest, None)
                    self._drop_blob_if_free(digest)

    def close(self) -> None:
        with self._lock:
            for table in (self._assets, self._uploads, self._blobs, self._pins):
                table.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _empty_dir(root: Path) -> None:
    """``root`` gone, without following a symlink out of it."""
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
