"""Typed events parsed from ComfyUI's websocket text frames.

ComfyUI sends ``{"type": T, "data": {...}}``. Only the types a job follows get a class;
anything else parses to :class:`Other`. Binary frames (previews) are not parsed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    prompt_id: str | None


@dataclass(frozen=True)
class Status(Event):
    queue_remaining: int | None = None


@dataclass(frozen=True)
class ExecutionStart(Event):
    pass


@dataclass(frozen=True)
class ExecutionCached(Event):
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executing(Event):
    """A node started; ``node is None`` means the prompt is finished (history written)."""

    node: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    node: str | None = None
    value: float = 0
    max: float = 0


@dataclass(frozen=True)
class ProgressState(Event):
    nodes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Executed(Event):
    node: str | None = None
    output: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    pass


@dataclass(frozen=True)
class ExecutionError(Event):
    node_id: str | None = None
    node_type: str | None = None
    exception_type: str = ""
    exception_message: str = ""
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutionInterrupted(Event):
    node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True)
class Other(Event):
    type: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_event(message: str | bytes) -> Event | None:
    """One websocket frame → an event; ``None`` for binary or undecodable frames."""
    if isinstance(message, bytes):
        return None
    try:
        decoded = json.loads(message)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    kind = decoded.get("type")
    data = decoded.get("data")
    if not isinstance(kind, str) or not isinstance(data, dict):
        return None
    pid = _str_or_none(data.get("prompt_id"))
    if kind == "status":
        info = (data.get("status") or {}).get("exec_info") or {}
        remaining = info.get("queue_remaining")
        return Status(pid, queue_remaining=remaining if isinstance(remaining, int) else None)
    if kind == "execution_start":
        return ExecutionStart(pid)
    if kind == "execution_cached":
        return ExecutionCached(pid, nodes=tuple(str(n) for n in data.get("nodes") or ()))
    if kind == "executing":
        return Executing(pid, node=_str_or_none(data.get("node")))
    if kind == "progress":
        return Progress(pid, node=_str_or_none(data.get("node")),
                        value=data.get("value") or 0, max=data.get("max") or 0)
    if kind == "progress_state":
        nodes = data.get("nodes")
        return ProgressState(pid, nodes=nodes if isinstance(nodes, dict) else {})
    if kind == "executed":
        output = data.get("output")
        return Executed(pid, node=_str_or_none(data.get("node")),
                        output=output if isinstance(output, dict) else {})
    if kind == "execution_success":
        return ExecutionSuccess(pid)
    if kind == "execution_error":
        tb = data.get("traceback") or ()
        return ExecutionError(
            pid,
            node_id=_str_or_none(data.get("node_id")),
            node_type=_str_or_none(data.get("node_type")),
            exception_type=str(data.get("exception_type") or ""),
            exception_message=str(data.get("exception_message") or "").strip(),
            traceback=tuple(str(line) for line in tb) if isinstance(tb, list) else (),
        )
    if kind == "execution_interrupted":
        return ExecutionInterrupted(pid, node_id=_str_or_none(data.get("node_id")),
                                    node_type=_str_or_none(data.get("node_type")))
    return Other(pid, type=kind, data=data)
