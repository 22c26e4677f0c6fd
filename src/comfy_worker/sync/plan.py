"""Decisions for one locked file, as small pure functions (no I/O here)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from comfy_worker.sync.record import Record, seen_before, still_valid


class Check(Enum):
    """What it takes to trust an existing file."""

    MISSING = "missing"
    TRUSTED = "trusted"          # record still valid: no byte read
    WRONG_SIZE = "wrong-size"    # cannot be the locked file
    HEADER = "header"            # seen before, fast mode: size + safetensors header
    HASH = "hash"                # first seen or changed: full sha256


def check_for(st: os.stat_result | None, record: Record | None, *, sha256: str, size: int,
              path: str, fast: bool) -> Check:
    if st is None:
        return Check.MISSING
    if still_valid(record, st, sha256, size):
        return Check.TRUSTED
    if st.st_size != size:
        return Check.WRONG_SIZE
    if fast and seen_before(record, sha256, size) and path.endswith(".safetensors"):
        return Check.HEADER
    return Check.HASH


def action_for(root: Path, volume_models: Path | None) -> str:
    """``volume`` for a file used in place on the volume, else ``cached``."""
    return "volume" if volume_models is not None and root == volume_models else "cached"


def download_root(roots: Sequence[Path], volume_models: Path | None, *,
                  volume_usable: bool) -> Path:
    """Missing files go into the volume when it is there and writable, else local."""
    if volume_models is not None and volume_usable:
        return volume_models
    return roots[-1]


def backoff_seconds(attempt: int, *, base: float = 0.25, cap: float = 8.0,
                    jitter: float = 0.25) -> float:
    """Exponential backoff before retry ``attempt`` (1-based), with jitter."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (1 + random.uniform(-jitter, jitter))
