"""Handler overhead: what our job path adds to a tiny workflow over calling ComfyUI directly.

One ComfyUI (CPU, started by a Worker), the same EmptyImage → SaveImage workflow, in
alternating order ``--runs`` times:

* direct: websocket connected once, ``POST /prompt``, wait for ``executing`` with
  ``node: null``, ``GET /history/{id}``, ``GET /view`` per image, base64 — the least any
  client must do;
* ours: ``Worker.run_job`` (validation, preflight, queue, follow, history, /view, base64,
  cleanup of files and history).

Both make ComfyUI execute SaveImage every time (a unique extra input on the output node,
as the worker does), so both do the same ComfyUI work. Target: median added latency
≤ 30 ms. Run: ``python benchmarks/handler_overhead.py [--runs 30] [--size 64]``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import FAST_BOOT_ARGS, comfyui, median

TARGET_MS = 30.0


def workflow(size: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x224466}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                   "filename_prefix": "bench"}},
    }


def direct(client: Any, stream: Any, client_id: str, wf: dict[str, Any]) -> int:
    """The minimal direct API round trip; returns the number of images."""
    from comfy_worker.comfy import events as ev

    marked = {**wf, "2": {**wf["2"], "inputs": {**wf["2"]["inputs"],
                                                "nonce": uuid.uuid4().hex}}}
    prompt_id = client.queue_prompt(marked, client_id).prompt_id
    while True:
        event = stream.next(5.0)
        if isinstance(event, ev.Executing) and event.node is None \
                and event.prompt_id == prompt_id:
            break
    outputs = client.history(prompt_id)[prompt_id]["outputs"]
    images = [base64.b64encode(client.view(i["filename"], i["subfolder"], i["type"]))
              for out in outputs.values() for i in out.get("images", [])]
    return len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from comfy_worker.comfy.client import ComfyClient
    from comfy_worker.config import load_settings
    from comfy_worker.worker import Worker

    comfyui_dir, python = comfyui()
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    settings = load_settings({}, lock_path=work / "no-lock.json", models_dir=work / "models",
                             work_dir=work / "work", comfyui_dir=comfyui_dir,
                             comfyui_python=python, comfyui_cpu=True,
                             comfyui_extra_args=FAST_BOOT_ARGS)
    wf = workflow(args.size)
    ours_ms: list[float] = []
    direct_ms: list[float] = []
    with Worker(settings) as worker:
        client = ComfyClient(worker.comfy.base_url)
        client_id = uuid.uuid4().hex
        stream = client.events(client_id)
        stream.connect()
        for _ in range(3):  # warm-up: first-run costs on both paths
            direct(client, stream, client_id, wf)
            worker.run_job({"workflow": wf})
        for i in range(args.runs):
            order = ("direct", "ours") if i % 2 == 0 else ("ours", "direct")
            for which in order:
                t0 = time.perf_counter()
                if which == "direct":
                    n = direct(client, stream, client_id, wf)
                    direct_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    result = worker.run_job({"workflow": wf})  # raises on failure
                    ours_ms.append((time.perf_counter() - t0) * 1000)
                    n = len(result.images)
                assert n == 1, which
        stream.close()
    shutil.rmtree(work, ignore_errors=True)

    paired = [o - d for o, d in zip(ours_ms, direct_ms, strict=True)]
    added = median(ours_ms) - median(direct_ms)
    print(f"{args.runs} runs each, EmptyImage {args.size}x{args.size} -> SaveImage, "
          "alternating order")
    print(f"  direct ComfyUI API  median {median(direct_ms):7.1f} ms  "
          f"(p90 {statistics.quantiles(direct_ms, n=10)[-1]:.1f})")
    print(f"  our job path        median {median(ours_ms):7.1f} ms  "
          f"(p90 {statistics.quantiles(ours_ms, n=10)[-1]:.1f})")
    print(f"  added latency: median(ours) - median(direct) = {added:.1f} ms; "
          f"median of paired differences = {median(paired):.1f} ms")
    print(f"  target <= {TARGET_MS:g} ms: {'OK' if added <= TARGET_MS else 'OVER TARGET'}")
    return 0 if added <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
