"""The transport a job runs over: one ComfyUI process's HTTP API and websocket.

:class:`Connection` is what :class:`~comfy_worker.job.runner.JobRunner` needs; the
runner gets connections from a factory, so unit tests hand it scripted ones.
:class:`ComfyConnection` is the real one, bound to one generation of a supervised
:class:`~comfy_worker.comfy.process.ComfyProcess`: when ComfyUI restarts, the runner
asks the factory for a new connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from comfy_worker.comfy import events as ev
from comfy_worker.comfy.client import ComfyClient, EventStream, PromptResponse
from comfy_worker.comfy.process import State
from comfy_worker.errors import ComfyDied, ComfyError
from comfy_worker.job.tracker import in_queue

if TYPE_CHECKING:
    from comfy_worker.comfy.process import ComfyProcess

ACTIVE_JOB_STATES = ("pending", "in_progress")
"""``GET /api/jobs/{id}`` statuses of a prompt that has not ended."""
RECONNECT_ATTEMPTS = 20
DEATH_GRACE_S = 2.0
"""A refused connection comes a moment before ComfyUI's exit can be seen: wait this long
for the process to show it before calling ComfyUI alive."""


class Connection(Protocol):
    """One ComfyUI process as a job sees it. Transport failures raise ComfyError."""

    dirs: Mapping[str, Path]
    """ComfyUI's ``input``/``output``/``temp`` folders (cleanup removes a job's files)."""

    def current(self) -> bool:
        """Still the ComfyUI process this connection was made for."""
        ...

    def alive(self) -> bool: ...

    def gone(self) -> bool:
        """ComfyUI is dead or dying (waits briefly for a dying process to show it)."""
        ...

    def death(self) -> ComfyDied:
        """The error for a job that lost this ComfyUI (exit status, last log lines)."""
        ...

    def kill(self) -> None: ...

    def object_info(self, node_class: str | None = None) -> dict[str, Any]: ...

    def upload_image(self, name: str, data: bytes) -> str: ...

    def queue_prompt(self, prompt: dict[str, Any],
                     extra_data: Mapping[str, Any] | None = None) -> PromptResponse:
        """``POST /prompt``; ``extra_data`` (the partner-node key) goes beside the prompt
        and is never logged."""
        ...

    def next_event(self, timeout: float) -> ev.Event | None:
        """The next event, ``None`` after ``timeout``; ComfyError when the socket breaks."""
        ...

    def reconnect(self) -> bool:
        """Reopen a broken websocket: True when it is back, False when ComfyUI is gone."""
        ...

    def history(self, prompt_id: str) -> dict[str, Any]: ...

    def view(self, filename: str, subfolder: str, kind: str) -> bytes: ...

    def cancel_prompt(self, prompt_id: str) -> None:
        """Stop the prompt: interrupted if it runs, out of the queue if it waits."""
        ...

    def prompt_active(self, prompt_id: str) -> bool:
        """The prompt still runs or waits in ComfyUI's queue."""
        ...

    def delete_history(self, prompt_id: str) -> None: ...

    def close(self) -> None: ...


ConnectionFactory = Callable[[], Connection]


class ComfyConnection:
    """The real :class:`Connection`: HTTP client + websocket for one ComfyUI generation."""

    def __init__(self, comfy: ComfyProcess, client_id: str) -> None:
        self.comfy = comfy
        self.client_id = client_id
        self.generation = comfy.generation
        cfg = comfy.cfg
        self.dirs = {"input": cfg.input_dir, "output": cfg.output_dir, "temp": cfg.temp_dir}
        self._client = ComfyClient(comfy.base_url)
        self._stream: EventStream = self._client.events(client_id)

    # --- the process -------------------------------------------------------------------

    def current(self) -> bool:
        """Still the process it was made for, and that process is the READY one (not
        dead, and not being replaced by a planned restart)."""
        return self.comfy.generation == self.generation and self.comfy.state is State.READY

    def alive(self) -> bool:
        return self.current() and self.comfy.alive()

    def gone(self) -> bool:
        deadline = time.monotonic() + DEATH_GRACE_S
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def death(self) -> ComfyDied:
        return ComfyDied(
            f"ComfyUI stopped while running this job: {self.comfy.exit_reason()}",
            hint="ComfyUI is being restarted; retry the job (if it died of memory, use "
            "smaller sizes or a bigger GPU)",
            details=[{"type": "comfyui_died", "generation": self.generation,
                      "log_tail": self.comfy.log_tail(15)}],
        )

    def kill(self) -> None:
        self.comfy.kill()

    # --- HTTP ----------------------------------------------------------------------------

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return self._client.object_info(node_class)

    def upload_image(self, name: str, data: bytes) -> str:
        return self._client.upload_image(name, data)

    def queue_prompt(self, prompt: dict[str, Any],
                     extra_data: Mapping[str, Any] | None = None) -> PromptResponse:
        if not self._stream.connected:  # listen before queueing, or events are lost
            self._stream.connect()
        return self._client.queue_prompt(prompt, self.client_id, extra_data)

    def history(self, prompt_id: str) -> dict[str, Any]:
        return self._client.history(prompt_id)

    def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        return self._client.view(filename, subfolder, kind)

    def cancel_prompt(self, prompt_id: str) -> None:
        """By id where ComfyUI has the route (atomic: it interrupts the prompt only if it
        still runs); else out of the queue, then interrupted only if it is the one
        running. Either way no other prompt is touched."""
        if self.comfy.features.cancel_by_id:
            self._client.cancel(prompt_id)
        else:
            self._client.dequeue(prompt_id)
            self._client.interrupt(prompt_id)

    def prompt_active(self, prompt_id: str) -> bool:
        if self.comfy.features.job_status:
            return self._client.job_status(prompt_id) in ACTIVE_JOB_STATES
        return in_queue(self._client.queue(), prompt_id)

    def delete_history(self, prompt_id: str) -> None:
        self._client.delete_history(prompt_id)

    # --- websocket -------------------------------------------------------------------------

    def next_event(self, timeout: float) -> ev.Event | None:
        if not self._stream.connected:
            self._stream.connect()
        return self._stream.next(timeout)

    def reconnect(self) -> bool:
        for _ in range(RECONNECT_ATTEMPTS):
            if not self.alive():
                return False
            try:
                self._stream.connect(timeout=2)
                return True
            except ComfyError:
                time.sleep(0.1)
        return False

    def close(self) -> None:
        self._stream.close()
        self._client.close()


def comfy_connections(comfy: ComfyProcess, client_id: str, *,
                      ready_timeout: float) -> ConnectionFactory:
    """A factory that waits for ComfyUI to be ready (e.g. while it restarts) and
    connects to the process that is up then."""
    def connect() -> Connection:
        comfy.wait_ready(timeout=ready_timeout)
        return ComfyConnection(comfy, client_id)
    return connect
