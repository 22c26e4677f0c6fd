"""Checking a file against its lock entry: full sha256, or size + safetensors header."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_BUFFER = 1024 * 1024  # measured: as fast as 8 MiB or mmap, kinder to caches


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, read in large blocks (hashlib releases the GIL on them)."""
    h = hashlib.sha256()
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def safetensors_header_ok(path: Path, size: int) -> tuple[bool, str]:
    """Size plus the structure of a ``.safetensors`` header, without reading tensors.

    The header must parse (via the ``safetensors`` package), every tensor's data
    offsets must lie inside the data section, and the last one must end exactly at
    the end of the file. Returns (ok, reason).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return False, f"cannot stat: {exc.strerror}"
    if st.st_size != size:
        return False, f"size {st.st_size} != {size}"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return False, "shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 1024 * 1024 or 8 + n > size:
                return False, f"header length {n} does not fit the file"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return False, f"unreadable header: {exc}"
    if not isinstance(header, dict):
        return False, "header is not a JSON object"
    ok, reason = header_structure_ok(header, size - 8 - n)
    if not ok:
        return False, reason
    # The package's own parser must accept it too, where its numpy binding is installed.
    try:
        import numpy  # noqa: F401  (safe_open needs it)
    except ImportError:
        return True, "size + safetensors header"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError
        return False, f"safetensors rejects it: {exc}"
    return True, "size + safetensors header"


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
                "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
                "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def header_structure_ok(header: object, data_len: int) -> tuple[bool, str]:
    """Tensors tile the data section exactly and each fits its dtype and shape (pure)."""
    if not isinstance(header, dict):
        return False, "header is not a JSON object"
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            return False, f"tensor {name!r}: bad data_offsets {offsets!r}"
        assert isinstance(info, dict)
        shape, dtype = info.get("shape"), info.get("dtype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            return False, f"tensor {name!r}: bad shape {shape!r}"
        width = _DTYPE_BYTES.get(str(dtype))
        if width is not None:
            count = 1
            for d in shape:
                count *= d
            if count * width != offsets[1] - offsets[0]:
                return False, (f"tensor {name!r}: {dtype}{shape} needs {count * width} bytes, "
                               f"offsets give {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1]))
    pos = 0
    for start, end in sorted(spans):
        if start != pos:
            return False, f"data section has a gap or overlap at byte {pos}"
        pos = end
    if pos != data_len:
        return False, f"tensors end at {pos}, data section is {data_len} bytes"
    return True, "ok"
