"""``comfy-worker run WORKFLOW.json [--images ...] --out DIR``: one job, locally.

Syncs models and boots ComfyUI (concurrently), runs the workflow, writes its images and
videos into ``--out`` and exits 0; on failure prints the error and its details and
exits 1. ``WORKFLOW`` is a workflow (API or the editor's UI format), a job input
(``{"workflow": ..., "images": [...]}``), a RunPod request (``{"input": {...}}``), or a
PNG/WEBP that ComfyUI saved (its embedded prompt, else its workflow).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfy_worker.commands.workflow import read_workflow_file
from comfy_worker.config import Settings
from comfy_worker.errors import JobInputInvalid, WorkerError
from comfy_worker.job import JobResult
from comfy_worker.job.events import JobEvent, NodeProgress
from comfy_worker.job.request import job_input_of

log = logging.getLogger(__name__)


def build_job_input(document: Any, images: list[Path], timeout: float | None) -> dict[str, Any]:
    """The job input for a file given to ``run`` plus ``--images``/``--timeout`` (pure
    except for reading the image files)."""
    if isinstance(document, dict):
        document = job_input_of(document, where="the workflow file")
    if isinstance(document, Mapping) and "workflow" in document:
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


def _log_progress(update: JobEvent) -> None:
    if not isinstance(update, NodeProgress):
        log.info("%s", json.dumps(update.to_json()))
        return
    step = f" {update.step:g}/{update.max:g}" if update.max and update.step is not None else ""
    log.info("progress %5.1f%%  node %s (%s)%s", update.percent, update.node,
             update.class_type, step)


def write_outputs(result: JobResult, out: Path) -> list[str]:
    """Write base64 outputs into ``out``; return what to print, one line per output."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in (*result.images, *result.videos):
        if item.type == "base64":
            path = out / Path(item.filename).name
            path.write_bytes(base64.b64decode(item.data))
            lines.append(str(path))
        else:
            lines.append(f"{item.filename}: {item.data}")
    return lines


def report_failure(err: WorkerError) -> None:
    print(f"comfy-worker: job failed [{err.reference}]: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    for detail in err.details:
        print(f"  {json.dumps(detail)}", file=sys.stderr)


def main(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.worker import Worker

    document = read_workflow_file(Path(args.workflow))
    job_input = build_job_input(document, list(args.images or []), args.timeout)

    with Worker(settings) as worker:
        try:
            result = worker.run_job(job_input, job_id="local", progress=_log_progress)
        except WorkerError as err:
            report_failure(err)
            return 1
    for line in write_outputs(result, Path(args.out)):
        print(line)
    print(f"done in {result.timings.get('total_ms', 0) / 1000:.2f} s "
          f"({len(result.images)} image(s), {len(result.videos)} video(s))", file=sys.stderr)
    return 0
