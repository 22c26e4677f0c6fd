"""``GET /api/v2/jobs/{id}/events``: a job's live Server-Sent Events, the contract's way.

Events, each ``event: NAME`` with one line of JSON ``data`` and no ``id`` (the stream is
live, not a log to resume): ``status`` (``{status, queue_position}``) on connect and at
every change, ``progress`` (the contract's ``Progress`` snapshot, complete each time:
models being fetched, read, then the prompt's nodes and steps) at most every
``progress_s``, then, when the job ends, one ``output`` per output and the terminal
``status`` last, after which the stream closes. A ``: keepalive`` comment goes out after
``keepalive_s`` without a byte (the SDK gives up after 45 s of silence). The stream reads
the same state ``GET /api/v2/jobs/{id}`` answers from (polling stays the source of
truth), every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from comfy_worker.entrypoints.api_v2.jobs import Snapshot, V2Job, V2Jobs, output_json

KEEPALIVE_S = 15.0
POLL_S = 0.2
PROGRESS_S = 0.5


def frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


KEEPALIVE = b": keepalive\n\n"


def status_data(snap: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {"status": snap.status}
    if snap.queue_position is not None:
        out["queue_position"] = snap.queue_position
    return out


async def job_events(jobs: V2Jobs, job: V2Job, *, base_url: str,
                     closing: Callable[[], bool], keepalive_s: float = KEEPALIVE_S,
                     poll_s: float = POLL_S, progress_s: float = PROGRESS_S,
                     clock: Callable[[], float] = time.monotonic) -> AsyncIterator[bytes]:
    sent_status: tuple[str, int | None] | None = None
    sent_progress: dict[str, Any] | None = None
    progress_at, last_write = float("-inf"), clock()
    while True:
        snap = jobs.snapshot(job)
        if snap.terminal:
            if job.final is not None:
                for out in job.final.outputs:
                    yield frame("output", output_json(out, base_url))
            yield frame("status", status_data(snap))
            return
        now = clock()
        if (snap.status, snap.queue_position) != sent_status:
            sent_status = (snap.status, snap.queue_position)
            yield frame("status", status_data(snap))
            last_write = now
        if snap.progress is not None and snap.progress != sent_progress and \
                now - progress_at >= progress_s:
            sent_progress, progress_at = snap.progress, now
            yield frame("progress", snap.progress)
            last_write = now
        if now - last_write >= keepalive_s:
            yield KEEPALIVE
            last_write = now
        if closing():
            return
        await asyncio.sleep(poll_s)
