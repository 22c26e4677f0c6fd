"""Following one prompt: ComfyUI's events → the prompt's state (pure).

:class:`PromptTracker` folds websocket events (:mod:`comfy_worker.comfy.events`) into
what a job needs to know: which node runs, how far it is (a :class:`NodeProgress` to
report), whether the prompt finished, failed or was interrupted; and, given the clock,
the cancel flag and whether ComfyUI is alive, what the runner does next
(:meth:`PromptTracker.state`). No I/O: the runner's transport loop feeds it, and unit
tests drive it with scripted event sequences.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_worker.comfy import events as ev
from comfy_worker.job.events import NodeProgress

WS_POLL_S = 0.25
"""Longest wait for one event: cancel and liveness are checked at least this often."""


class State(enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"
    """ComfyUI is done with the prompt (success, node error or external interrupt)."""
    CANCELLED = "cancelled"
    """The job was cancelled: the runner interrupts ComfyUI."""
    TIMED_OUT = "timed_out"
    """The job's deadline passed: the runner interrupts ComfyUI."""
    DIED = "died"
    """ComfyUI is gone (exited, or restarted by its supervisor)."""


def node_progress(*, node: str | None, class_type: str | None, step: float | None,
                  max_steps: float | None, nodes_done: int, nodes_total: int) -> NodeProgress:
    fraction = 0.0
    if step is not None and max_steps:
        fraction = min(max(step / max_steps, 0.0), 1.0)
    total = max(nodes_total, 1)
    percent = round(min(100.0, 100.0 * (min(nodes_done, total) + fraction) / total), 1)
    return NodeProgress(node, class_type, step, max_steps, percent, nodes_done, nodes_total)


@dataclass
class PromptTracker:
    prompt_id: str
    workflow: Mapping[str, Any]
    deadline: float
    """Clock time (monotonic) at which the job times out."""
    current: str | None = None
    done: set[str] = field(default_factory=set)
    error: ev.ExecutionError | None = None
    interrupted: bool = False
    finished: bool = False

    # --- events --------------------------------------------------------------------

    def feed(self, event: ev.Event | None) -> NodeProgress | None:
        """Fold one event (``None``: nothing arrived); returns progress to report."""
        if event is None or event.prompt_id != self.prompt_id or self.finished:
            return None
        if isinstance(event, ev.Executing):
            if event.node is None:  # the prompt left ComfyUI's queue; history is written
                self.finished = True
                return None
            if self.current is not None:
                self.done.add(self.current)
            self.current = event.node
            return self._progress(self.current, None, None)
        if isinstance(event, ev.ExecutionCached):
            self.done.update(event.nodes)
        elif isinstance(event, ev.ProgressState):
            self.done.update(finished_nodes(event.nodes, self.workflow))
        elif isinstance(event, ev.Progress):
            return self._progress(event.node or self.current, event.value, event.max)
        elif isinstance(event, ev.ExecutionError):
            self.error = event
        elif isinstance(event, ev.ExecutionInterrupted):
            self.interrupted = True
        return None

    def finish_from_history(self) -> None:
        """The websocket missed the end, but ``/history`` has the prompt: it is done."""
        self.finished = True

    def _progress(self, node: str | None, step: float | None,
                  max_steps: float | None) -> NodeProgress:
        class_type = (self.workflow.get(node) or {}).get("class_type") if node else None
        return node_progress(node=node, class_type=class_type, step=step,
                             max_steps=max_steps, nodes_done=len(self.done),
                             nodes_total=len(self.workflow))

    # --- decisions -------------------------------------------------------------------

    def state(self, *, now: float, cancelled: bool, alive: bool) -> State:
        """What the runner does next. A finished prompt wins over everything; then a
        cancel, the deadline, and ComfyUI's death, in that order."""
        if self.finished:
            return State.FINISHED
        if cancelled:
            return State.CANCELLED
        if now >= self.deadline:
            return State.TIMED_OUT
        if not alive:
            return State.DIED
        return State.RUNNING

    def wait_time(self, now: float) -> float:
        """How long the next wait for an event may be."""
        return max(0.0, min(WS_POLL_S, self.deadline - now))

    @property
    def current_class_type(self) -> str | None:
        if self.current is None:
            return None
        return (self.workflow.get(self.current) or {}).get("class_type")


def finished_nodes(nodes: Mapping[str, Any], workflow: Mapping[str, Any]) -> set[str]:
    """The workflow's nodes a ``progress_state`` event reports finished. Newer ComfyUI
    sends every active node's state with each update, so nodes that finish without an
    ``executing`` of the next one (parallel or async nodes, the last one) count as done
    at once; a node expanded at run time counts through the node it is shown as."""
    done: set[str] = set()
    for key, info in nodes.items():
        if not isinstance(info, Mapping) or info.get("state") != "finished":
            continue
        node = str(info.get("display_node_id") or key)
        if node in workflow:
            done.add(node)
    return done


def is_prompt_end(event: ev.Event | None, prompt_id: str) -> bool:
    """ComfyUI sent ``executing(node=None)`` for the prompt: it left the queue
    (``execution_interrupted`` comes a moment earlier, while it still runs)."""
    return (isinstance(event, ev.Executing) and event.node is None
            and event.prompt_id == prompt_id)


def in_queue(queue: Mapping[str, Any], prompt_id: str) -> bool:
    """The prompt is running or pending in ``GET /queue``'s answer."""
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True
    return False
