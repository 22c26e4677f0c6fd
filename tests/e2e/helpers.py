"""Small real artefacts for the end-to-end tests: PNG files, a Compact upscaler, workflows."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from support.waiting import wait_for

from comfy_worker.comfy.launch import free_port

CLI = [sys.executable, "-m", "comfy_worker.cli"]
"""The worker's command line, run from this interpreter (its venv has the package)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A real RGB PNG of one colour (no PIL in the test environment)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = b"\x00" + bytes(rgb) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    assert data[:8] == PNG_SIGNATURE, f"not a PNG: {data[:8]!r}"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def compact_upscaler(nf: int = 8, num_conv: int = 2, scale: int = 2, seed: int = 0) -> bytes:
    """A random-weight SRVGGNetCompact as .safetensors (spandrel detects "Compact").

    Keys ``body.{i}.weight/bias``: conv 3→nf, PReLU, num_conv x (conv nf→nf, PReLU),
    conv nf→3·scale².
    """
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    i = 0

    def conv(cin: int, cout: int) -> None:
        nonlocal i
        tensors[f"body.{i}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * 0.1
                                       ).astype(np.float32)
        tensors[f"body.{i}.bias"] = np.zeros(cout, dtype=np.float32)
        i += 1

    def prelu(n: int) -> None:
        nonlocal i
        tensors[f"body.{i}.weight"] = np.full(n, 0.25, dtype=np.float32)
        i += 1

    conv(3, nf)
    prelu(nf)
    for _ in range(num_conv):
        conv(nf, nf)
        prelu(nf)
    conv(nf, 3 * scale * scale)
    return save(tensors)


def empty_image_workflow(width: int = 64, height: int = 64, batch: int = 1,
                         prefix: str = "e2e") -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": batch,
                         "color": 0x3366CC}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                   "filename_prefix": prefix}},
    }


def upscale_workflow(model_name: str, width: int, height: int, batch: int = 1,
                     prefix: str = "up", color: int = 0x808080) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": batch,
                         "color": color}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "3": {"class_type": "ImageUpscaleWithModel",
              "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0],
                                                   "filename_prefix": prefix}},
    }


_slow_colors = itertools.count(0x101010, 0x010101)


def slow_upscale_workflow(model_name: str, prefix: str) -> dict[str, Any]:
    """A job that runs long enough to be timed out, cancelled or killed mid-way.

    Four 2048² images through the x2 upscaler in 512-pixel tiles (one progress step per
    tile): ~9 s on an idle 2-core machine, longer under load. Each call fills the images
    with a new colour: ComfyUI caches node outputs across prompts, and a repeat of an
    upscale that once completed would finish at once, with no progress to cancel.
    """
    return upscale_workflow(model_name, 2048, 2048, batch=4, prefix=prefix,
                            color=next(_slow_colors))


def ui_upscale_workflow(model_name: str, width: int, height: int, prefix: str = "ui",
                        color: int = 0x808080) -> dict[str, Any]:
    """:func:`upscale_workflow` in the editor's "Save" format (UI format), as a user saves
    it: widget values by position, links by id, the image routed through a Reroute, a
    MarkdownNote beside it, and the loader declaring its model (``properties.models``)."""
    def node(node_id: int, type_name: str, inputs: list[dict[str, Any]],
             outputs: list[dict[str, Any]], widgets: list[Any] | None = None,
             **properties: Any) -> dict[str, Any]:
        found: dict[str, Any] = {
            "id": node_id, "type": type_name, "pos": [100 * node_id, 100], "size": [270, 80],
            "flags": {}, "order": node_id, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": type_name, **properties}}
        if widgets is not None:
            found["widgets_values"] = widgets
        return found

    return {
        "id": "8a4b6d2e-1f3c-4e5a-9b7d-0c2e4f6a8b1d", "revision": 0,
        "last_node_id": 6, "last_link_id": 4,
        "nodes": [
            node(1, "EmptyImage", [], [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                 [width, height, 1, color]),
            node(5, "Reroute", [{"name": "", "type": "*", "link": 1}],
                 [{"name": "", "type": "IMAGE", "links": [2]}], None,
                 showOutputText=False, horizontal=False),
            node(2, "UpscaleModelLoader", [],
                 [{"name": "UPSCALE_MODEL", "type": "UPSCALE_MODEL", "links": [3]}],
                 [model_name], models=[{"name": model_name, "directory": "upscale_models",
                                        "url": f"https://huggingface.co/e2e/compact-upscaler/"
                                               f"resolve/main/{model_name}"}]),
            node(3, "ImageUpscaleWithModel",
                 [{"name": "upscale_model", "type": "UPSCALE_MODEL", "link": 3},
                  {"name": "image", "type": "IMAGE", "link": 2}],
                 [{"name": "IMAGE", "type": "IMAGE", "links": [4]}], []),
            node(4, "SaveImage", [{"name": "images", "type": "IMAGE", "link": 4}], [],
                 [prefix]),
            node(6, "MarkdownNote", [], [], ["Upscales a flat image with the locked model."]),
        ],
        "links": [[1, 1, 0, 5, 0, "*"], [2, 5, 0, 3, 1, "IMAGE"],
                  [3, 2, 0, 3, 0, "UPSCALE_MODEL"], [4, 3, 0, 4, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "version": 0.4,
    }


def sparse_safetensors(path: Path, size: int, tag: str) -> Path:
    """A valid ``.safetensors`` file of exactly ``size`` bytes, written sparse: a header
    naming one U8 tensor of zeros (``tag`` in its metadata, so files differ), the rest a
    hole. Hundreds of MB cost no disk and no time; a server streams them with sendfile."""
    data = size - 8
    while True:  # the header's length sets the tensor's, whose digits are in the header
        header = json.dumps({"__metadata__": {"tag": tag},
                             "zeros": {"dtype": "U8", "shape": [data],
                                       "data_offsets": [0, data]}}).encode()
        header += b" " * (-len(header) % 8)
        if size - 8 - len(header) == data:
            break
        data = size - 8 - len(header)
    assert data > 0, f"size {size} leaves no room for the tensor"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(size)
    return path


def stop_process(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """SIGTERM a server the test started, SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serving(env: Mapping[str, str], log_path: Path, *, verbose: bool = True,
            health: str = "/health", interval: float = 0.1,
            seen: Callable[[requests.Response], None] | None = None
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``comfy-worker [-v] serve`` on a free loopback port with ``env``, its output in
    ``log_path``: yields its URL and process once ``health`` answers 200 (every answer
    handed to ``seen`` first; the test fails with the log's tail if the process dies or
    240 s pass), and stops it afterwards."""
    port = free_port()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([*CLI, *(["-v"] if verbose else []), "serve", "--host",
                                 "127.0.0.1", "--port", str(port)], env=dict(env),
                                stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                answer = requests.get(f"{url}{health}", timeout=5)
            except requests.ConnectionError:
                return False
            if seen is not None:
                seen(answer)
            return answer.status_code == 200

        wait_for(ready, 240, f"{health} to answer 200", interval=interval)
        yield url, proc
    finally:
        stop_process(proc)
