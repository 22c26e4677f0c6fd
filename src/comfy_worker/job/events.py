"""What a job is doing, as it happens: every progress event type and the one callback
type (as cog's ``eventtypes.py``). A leaf module: the tracker, the model store, the
pipeline, the job queue, the platforms and the CLI all speak these.

Each event serialises itself (``to_json()``) with a ``stage``: ``models`` (waiting for
its model files), ``readahead`` (reading them into memory), ``running`` (its nodes on
ComfyUI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WaitProgress:
    """How far one claim's model files are, while a job waits for them."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    bytes_per_s: float
    waiting_for: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"stage": "models", "files_done": self.files_done,
                "files_total": self.files_total, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "bytes_per_s": round(self.bytes_per_s),
                "waiting_for": list(self.waiting_for)}


@dataclass(frozen=True)
class ReadaheadProgress:
    """A job's model files being read into memory before its prompt is queued."""

    bytes_done: int
    bytes_total: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        rate = self.bytes_done / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return {"stage": "readahead", "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "mb_per_s": round(rate, 1)}


@dataclass(frozen=True)
class NodeProgress:
    """The prompt runs: the node that runs, its step/max and an overall percent."""

    node: str | None
    class_type: str | None
    step: float | None
    max: float | None
    percent: float
    nodes_done: int
    nodes_total: int

    def to_json(self) -> dict[str, Any]:
        return {"stage": "running", "node": self.node, "class_type": self.class_type,
                "step": self.step, "max": self.max, "percent": self.percent,
                "nodes_done": self.nodes_done, "nodes_total": self.nodes_total}


JobEvent = WaitProgress | ReadaheadProgress | NodeProgress
"""Any progress update of a job."""

ProgressFn = Callable[[JobEvent], None]
"""Receives a job's progress updates (called from the job's own thread)."""
