"""One answer to "is this file the locked one?", for ``sync`` and ``lock verify`` alike.

The cheapest check that can decide is used (see :func:`comfy_worker.sync.plan.check_for`):
a valid record reads nothing, a wrong size reads nothing, ``fast`` mode reads a
``.safetensors`` header for a file verified before, anything else is hashed in full. A
full hash that matches writes a record; a file that does not match loses its record, so
no later check can trust it by a stale one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from comfy_worker.lockfile import LockEntry
from comfy_worker.sync import verify
from comfy_worker.sync.plan import Check, check_for
from comfy_worker.sync.record import Record, read_record, remove_record, write_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one file against its lock entry."""

    ok: bool
    check: Check
    """What decided: MISSING, TRUSTED (record), WRONG_SIZE, HEADER (fast) or HASH."""
    detail: str
    """How it was trusted (``sha256``, ``record (...)``, ``size + safetensors header``)
    or why not (``missing``, ``size 11, expected 10``, ``sha256 <actual>, expected <sha>``)."""
    sha256: str | None = None
    """The hash computed, when the file was hashed."""

    @property
    def present(self) -> bool:
        return self.check is not Check.MISSING


def _stat(target: Path) -> os.stat_result | None:
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if os.path.isfile(target) else None


def look(target: Path, entry: LockEntry, *, state_dir: Path | None,
         fast: bool = False) -> tuple[Check, os.stat_result | None]:
    """What it takes to trust ``target``, from its stat and record alone (no file bytes)."""
    st = _stat(target)
    record = read_record(target, state_dir) if st is not None else None
    return check_for(st, record, sha256=entry.sha256, size=entry.size, path=entry.path,
                     fast=fast), st


def trusted(target: Path, entry: LockEntry, *, state_dir: Path | None) -> bool:
    """A valid record vouches for ``target``: no byte is read."""
    return look(target, entry, state_dir=state_dir)[0] is Check.TRUSTED


def verify_file(target: Path, entry: LockEntry, *, fast: bool,
                state_dir: Path | None) -> Verdict:
    """Check ``target`` against ``entry``; record a match, forget a mismatch.

    ``state_dir`` holds the records of files whose directory is read-only.
    """
    check, st = look(target, entry, state_dir=state_dir, fast=fast)
    if check is Check.MISSING:
        return Verdict(False, check, "missing")
    if check is Check.TRUSTED:
        return Verdict(True, check, "record (size + mtime unchanged since verified)")
    assert st is not None
    if check is Check.WRONG_SIZE:
        remove_record(target, state_dir)
        return Verdict(False, check, f"size {st.st_size}, expected {entry.size}")
    if check is Check.HEADER:
        ok, reason = verify.safetensors_header_ok(target, entry.size)
        if ok:
            return Verdict(True, check, reason)
        log.info("%s: fast check failed (%s): hashing it", target, reason)
    actual = verify.sha256_file(target)
    if actual != entry.sha256:
        remove_record(target, state_dir)
        return Verdict(False, Check.HASH, f"sha256 {actual}, expected {entry.sha256}", actual)
    # The stat from before the hash: a file changed meanwhile has another mtime, so the
    # record will not vouch for it.
    write_record(target, Record.of(st, actual), state_dir)
    return Verdict(True, Check.HASH, "sha256", actual)
