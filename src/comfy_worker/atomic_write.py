"""Write a small text file so that readers see the old content or the new, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` to a unique temp file beside ``path``, then rename it over ``path``.

    The temp name is unique per call (``mkstemp``), so concurrent writers in one process
    or several never share one; it is removed if anything fails. ``fsync=False`` skips
    the flush to disk for records that are cheap to recompute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
