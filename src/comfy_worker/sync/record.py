"""Verification records: a small sidecar per verified file, so it is hashed only once.

A record (``.NAME.verified``, JSON) holds the size, ``mtime_ns``, inode and sha256 the
file had when it was fully hashed. While the file's size and mtime still match, the
file is trusted without reading a byte. Roots we cannot write (a read-only volume)
keep their records under the local models root instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from comfy_worker.atomic_write import write_text_atomic
from comfy_worker.sync.paths import record_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    verified_at: float = 0.0

    @classmethod
    def of(cls, st: os.stat_result, sha256: str) -> Record:
        return cls(sha256=sha256, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                   verified_at=time.time())


def still_valid(record: Record | None, st: os.stat_result, sha256: str, size: int) -> bool:
    """The file is unchanged since it was verified against ``sha256`` (pure).

    Size and mtime (ns) decide; the inode is kept for diagnosis only, because network
    and FUSE volumes may number inodes afresh on every mount, which would make every
    cold start re-hash the whole volume.
    """
    return (record is not None and record.sha256 == sha256 and record.size == size
            and st.st_size == size and record.mtime_ns == st.st_mtime_ns)


def seen_before(record: Record | None, sha256: str, size: int) -> bool:
    """A full hash once proved this path holds ``sha256`` (size/mtime may have moved)."""
    return record is not None and record.sha256 == sha256 and record.size == size


def fallback_record_path(target: Path, state_dir: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.abspath(target))).hexdigest()[:32]
    return state_dir / "records" / f"{key}.json"


def _read(path: Path) -> Record | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Record(sha256=str(raw["sha256"]), size=int(raw["size"]),
                      mtime_ns=int(raw["mtime_ns"]), inode=int(raw["inode"]),
                      verified_at=float(raw.get("verified_at", 0.0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring unreadable record %s: %s", path, exc)
        return None


def read_record(target: Path, state_dir: Path | None = None) -> Record | None:
    """The record beside ``target``, else the one kept for it under ``state_dir``."""
    rec = _read(record_path(target))
    if rec is None and state_dir is not None:
        rec = _read(fallback_record_path(target, state_dir))
    return rec


def _write_json(path: Path, data: dict[str, object]) -> None:
    write_text_atomic(path, json.dumps(data), fsync=False)


def write_record(target: Path, record: Record, state_dir: Path | None = None) -> None:
    """Best effort: beside the file, else under ``state_dir``; never fails a sync."""
    data = asdict(record)
    try:
        _write_json(record_path(target), data)
        return
    except OSError as exc:
        if state_dir is None:
            log.debug("cannot write a record for %s: %s", target, exc)
            return
    try:
        path = fallback_record_path(target, state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, data)
    except OSError as exc:
        log.debug("cannot write a record for %s: %s", target, exc)


def remove_record(target: Path, state_dir: Path | None = None) -> None:
    """Forget ``target``'s record, beside it and under ``state_dir`` (best effort)."""
    paths = [record_path(target)]
    if state_dir is not None:
        paths.append(fallback_record_path(target, state_dir))
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
