"""Helpers for the container tests: a tiny real upscale model, its lock, a PNG reader.

Nothing here talks to Docker; conftest.py does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def skip_unless_ci(reason: str) -> None:
    """Skip for a missing prerequisite, but fail under CI=true: once a Docker daemon is
    reachable there, every container test must run."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and a Docker daemon is reachable, but {reason}", pytrace=False)
    pytest.skip(reason)


def _pip_config(key: str) -> str | None:
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                          capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def cpu_torch_wheel_dir() -> Path | None:
    """A directory holding a CPU torch wheel for the image's Python 3.11, if this machine
    has one (COMFY_WORKER_TEST_WHEELS, else pip's find-links)."""
    candidates = [os.environ.get("COMFY_WORKER_TEST_WHEELS"), os.environ.get("PIP_FIND_LINKS"),
                  _pip_config("global.find-links")]
    for raw in candidates:
        for part in (raw or "").split():
            d = Path(part.removeprefix("file://"))
            if d.is_dir() and any(d.glob("torch-*+cpu-cp311-*.whl")):
                return d
    return None


def host_ca_bundle() -> Path | None:
    """The CA bundle pip trusts here (a TLS-intercepting proxy's CA is in it)."""
    for raw in (os.environ.get("COMFY_WORKER_TEST_CA"), os.environ.get("PIP_CERT"),
                _pip_config("global.cert")):
        if raw and Path(raw).is_file():
            return Path(raw)
    return None


def comfyui_source() -> Path | None:
    """A ComfyUI source tree on this machine (COMFYUI_DIR, else ./.comfyui/ComfyUI)."""
    src = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")
    return src if (src / "main.py").is_file() else None


def compact_upscaler(*, nf: int = 8, num_conv: int = 2, scale: int = 2, seed: int = 0) -> bytes:
    """A random-weight SRVGGNetCompact ("Compact", as spandrel detects it) in safetensors.

    Keys ``body.{i}.weight`` / ``body.{i}.bias``: conv 3→nf, PReLU [nf], ``num_conv`` x
    (conv nf→nf, PReLU [nf]), last conv nf→3·scale². nf=8, 2 convs, x2 is ~10 KB.
    """
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def conv(index: int, c_out: int, c_in: int) -> None:
        tensors[f"body.{index}.weight"] = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(
            np.float32
        )
        tensors[f"body.{index}.bias"] = np.zeros(c_out, dtype=np.float32)

    def prelu(index: int) -> None:
        tensors[f"body.{index}.weight"] = np.full(nf, 0.25, dtype=np.float32)

    conv(0, nf, 3)
    prelu(1)
    for k in range(num_conv):
        conv(2 + 2 * k, nf, nf)
        prelu(3 + 2 * k)
    conv(2 + 2 * num_conv, 3 * scale * scale, nf)
    return save(tensors)


@dataclass(frozen=True)
class LockedModel:
    lock_path: Path  # the lock file, on the host
    model_path: Path  # the model file, on the host
    lock_entry_path: str  # e.g. "upscale_models/tiny-compact-x2.safetensors"


def write_volume_with_locked_model(volume: Path, *, name: str = "tiny-compact-x2.safetensors",
                                   url: str = "https://models.invalid/tiny-compact-x2.safetensors"
                                   ) -> LockedModel:
    """``volume/models/upscale_models/NAME`` plus ``volume/models.lock.json`` pinning it.

    The lock's source URL does not resolve: the file must be found on the volume.
    """
    data = compact_upscaler()
    entry_path = f"upscale_models/{name}"
    model_path = volume / "models" / entry_path
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(data)
    lock = {
        "version": 1,
        "models": [
            {
                "path": entry_path,
                "source": {"type": "url", "url": url},
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        ],
    }
    lock_path = volume / "models.lock.json"
    lock_path.write_text(json.dumps(lock, indent=2) + "\n")
    return LockedModel(lock_path=lock_path, model_path=model_path, lock_entry_path=entry_path)


def upscale_workflow(model_name: str, *, width: int, height: int) -> dict[str, Any]:
    """EmptyImage → ImageUpscaleWithModel(UpscaleModelLoader) → SaveImage (API format)."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "3": {"class_type": "ImageUpscaleWithModel",
              "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage",
              "inputs": {"images": ["3", 0], "filename_prefix": "container-test"}},
    }


@dataclass(frozen=True)
class DecodedPng:
    width: int
    height: int
    channels: int
    pixels: np.ndarray  # uint8, shape (height, width, channels)


def decode_png(data: bytes) -> DecodedPng:
    """Decode an 8-bit, non-interlaced RGB/RGBA/grey PNG, checking every chunk's CRC."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    pos = len(PNG_SIGNATURE)
    idat = b""
    header: tuple[int, ...] | None = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"bad CRC in {kind!r} chunk")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, color_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type)
    if depth != 8 or channels is None or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, color type {color_type}, "
                         f"interlace {interlace}")
    raw = zlib.decompress(idat)
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"IDAT holds {len(raw)} bytes, expected {height * (stride + 1)}")
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        row_start = y * (stride + 1)
        kind = raw[row_start]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=row_start + 1).astype(
            np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        for x in range(stride):
            a = cur[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                raise ValueError(f"bad filter type {kind} in row {y}")
            cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    pixels = out.astype(np.uint8).reshape(height, width, channels)
    return DecodedPng(width=width, height=height, channels=channels, pixels=pixels)


def first_png(output: dict[str, Any]) -> bytes:
    """The first image of a job output ``{"images": [{"type": "base64", "data": ...}]}``."""
    images = output.get("images")
    if not images:
        raise AssertionError(f"job output has no images: {str(output)[:500]}")
    image = images[0]
    if image.get("type") != "base64":
        raise AssertionError(f"image type is {image.get('type')!r}, expected 'base64'")
    data = image["data"]
    if data.startswith("data:"):
        data = data.split(",", 1)[1]
    return base64.b64decode(data)
