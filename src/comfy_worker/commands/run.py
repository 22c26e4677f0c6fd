"""``comfy-worker run WORKFLOW.json [--images ...] --out DIR``: one job, locally.

Syncs models and boots ComfyUI (concurrently), runs the workflow, writes its images and
videos into ``--out`` and exits 0; on failure prints the error and its details and
exits 1. ``WORKFLOW.json`` is an API-format workflow, a job input
(``{"workflow": ..., "images": [...]}``) or a RunPod request (``{"input": {...}}``).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.errors import JobInputInvalid

log = logging.getLogger(__name__)


def build_job_input(document: Any, images: list[Path], timeout: float | None) -> dict[str, Any]:
    """The job input for a file given to ``run`` plus ``--images``/``--timeout`` (pure
    except for reading the image files)."""
    if isinstance(document, dict) and isinstance(document.get("input"), dict):
        document = document["input"]
    if isinstance(document, dict) and "workflow" in document:
        job_input = dict(document)
    else:
        job_input = {"workflow": document}
    listed = list(job_input.get("images") or [])
    for path in images:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise JobInputInvalid(f"--images {str(path)!r}: {exc.strerror}",
                                  hint="pass existing image files") from None
        listed.append({"name": path.name, "image": base64.b64encode(data).decode("ascii")})
    if listed:
        job_input["images"] = listed
    if timeout is not None:
        job_input["timeout"] = timeout
    return job_input


def _log_progress(payload: dict[str, Any]) -> None:
    step = f" {payload['step']:g}/{payload['max']:g}" if payload.get("max") else ""
    log.info("progress %5.1f%%  node %s (%s)%s", payload["percent"], payload["node"],
             payload["class_type"], step)


def write_outputs(result: dict[str, Any], out: Path) -> list[str]:
    """Write base64 outputs into ``out``; return what to print, one line per output."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in [*result.get("images", []), *result.get("videos", [])]:
        if item.get("type") == "base64":
            path = out / Path(item["filename"]).name
            path.write_bytes(base64.b64decode(item["data"]))
            lines.append(str(path))
        else:
            lines.append(f"{item['filename']}: {item['data']}")
    return lines


def main(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.worker import Worker

    try:
        document = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobInputInvalid(f"workflow file {str(args.workflow)!r}: {exc.strerror}",
                              hint="pass an API-format workflow JSON file") from None
    except ValueError as exc:
        raise JobInputInvalid(f"workflow file {str(args.workflow)!r} is not JSON: {exc}",
                              hint="export the workflow with \"Export (API)\"") from None
    job_input = build_job_input(document, list(args.images or []), args.timeout)

    with Worker(settings) as worker:
        result = worker.run_job(job_input, job_id="local", progress=_log_progress)
    if "error" in result:
        print(f"comfy-worker: job failed: {result['error']}", file=sys.stderr)
        if result.get("hint"):
            print(f"hint: {result['hint']}", file=sys.stderr)
        for detail in result.get("details") or []:
            print(f"  {json.dumps(detail)}", file=sys.stderr)
        return 1
    for line in write_outputs(result, Path(args.out)):
        print(line)
    timings = result.get("timings") or {}
    print(f"done in {timings.get('total_ms', 0) / 1000:.2f} s "
          f"({len(result.get('images', []))} image(s), {len(result.get('videos', []))} "
          "video(s))", file=sys.stderr)
    return 0
