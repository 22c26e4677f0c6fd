"""One readiness model that every entrypoint reads.

The :class:`~comfy_worker.worker.Worker` owns the state and answers
:meth:`~comfy_worker.worker.Worker.readiness` with a :class:`Readiness`; the HTTP API's
``/health``, the RunPod adapter and the Vast model log all read that value (nobody parses
a composed string).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from comfy_worker.comfy.process import State
from comfy_worker.errors import WorkerError


class Phase(enum.Enum):
    STARTING = "starting"
    """Start-up is under way (models and/or ComfyUI)."""
    READY = "ready"
    """Jobs run now."""
    RECOVERING = "recovering"
    """Was ready; ComfyUI died and is being restarted (jobs wait for it)."""
    FAILED = "failed"
    """Start-up failed, or ComfyUI cannot be restarted: no job will run."""
    STOPPED = "stopped"


@dataclass(frozen=True)
class Readiness:
    phase: Phase
    reason: str
    """What a person reads: ``ready``, ``syncing models``, ``start-up failed: ...``."""
    error: WorkerError | None = None
    """For FAILED: the error that stopped the worker."""
    sync: Mapping[str, Any] | None = None
    """The background model sync (files and bytes done/total), when one runs."""
    comfyui: Mapping[str, Any] | None = None
    """The running ComfyUI: its version and the features the worker uses."""

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def accepts_jobs(self) -> bool:
        """Jobs may be queued: ready, or recovering (they wait for the new ComfyUI)."""
        return self.phase in (Phase.READY, Phase.RECOVERING)

    def following(self, comfy: State, *, alive: bool, last_error: str | None) -> Readiness:
        """After start-up the worker follows ComfyUI's supervisor (pure): a ready worker
        whose ComfyUI is restarting or down is RECOVERING, one whose ComfyUI stopped is
        STOPPED."""
        if not self.ready or (comfy is State.READY and alive):
            return self
        if comfy is State.STOPPED:
            return replace(self, phase=Phase.STOPPED, reason="stopped")
        if comfy is State.STARTING:
            return replace(self, phase=Phase.RECOVERING, reason="restarting ComfyUI")
        return replace(self, phase=Phase.RECOVERING,
                       reason=f"ComfyUI is down: {last_error or 'exited'}")

    @classmethod
    def failed(cls, error: WorkerError) -> Readiness:
        return cls(Phase.FAILED, "start-up failed: " + " ".join(str(error).split()), error)

    def to_json(self) -> dict[str, Any]:
        out = {"ready": self.ready, "phase": self.phase.value, "reason": self.reason}
        if self.sync is not None:
            out["sync"] = dict(self.sync)
        if self.comfyui is not None:
            out["comfyui"] = dict(self.comfyui)
        return out
