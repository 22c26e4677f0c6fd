"""Which ComfyUI runs, and what it offers (pure).

The worker reads ComfyUI's version from ``/system_stats`` (``system.comfyui_version``)
when it starts, refuses one older than :data:`MIN_VERSION` (the oldest the tests run
against), and probes what newer releases offer, so each feature has a fallback:

- ``cancel_by_id``: ``POST /api/jobs/{id}/cancel`` (v0.33.0 has it, 0.3.75 not) stops one
  prompt atomically: interrupted only if it still runs, dequeued if it waits. Without
  it, the worker deletes the prompt from the queue (``POST /queue {"delete": [id]}``)
  and interrupts it by id (``POST /interrupt {"prompt_id": id}``), which 0.3.75 has.
- ``job_status``: ``GET /api/jobs/{id}`` says whether a prompt still runs (the same
  releases); without it, ``GET /queue`` is searched for the id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MIN_VERSION = (0, 3, 75)
"""The oldest ComfyUI the worker supports (tested in CI: the compat subset)."""

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def parse_version(text: object) -> tuple[int, int, int] | None:
    """``"0.33.0"`` (or ``"v0.3.75-rc1"``) → ``(0, 33, 0)``; None when unreadable."""
    if not isinstance(text, str):
        return None
    m = _VERSION.match(text.strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in version)


def reported_version(system_stats: Any) -> str | None:
    """The version string ``/system_stats`` reports (``system.comfyui_version``)."""
    system = system_stats.get("system") if isinstance(system_stats, dict) else None
    value = system.get("comfyui_version") if isinstance(system, dict) else None
    return value if isinstance(value, str) else None


def unsupported_reason(reported: str | None) -> str | None:
    """Why this ComfyUI cannot serve (older than :data:`MIN_VERSION`), or None. A version
    that cannot be read is let through (a fork or a development tree; logged)."""
    version = parse_version(reported)
    if version is None or version >= MIN_VERSION:
        return None
    return (f"ComfyUI {reported} is older than {version_text(MIN_VERSION)}, the oldest "
            "version this worker supports")


@dataclass(frozen=True)
class Features:
    """What the running ComfyUI offers (read once per process)."""

    version: str | None = None
    """As ``/system_stats`` reports it (None: not reported)."""
    cancel_by_id: bool = False
    """``POST /api/jobs/{id}/cancel``."""

    @property
    def job_status(self) -> bool:
        """``GET /api/jobs/{id}`` (came with the per-job cancel route)."""
        return self.cancel_by_id

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "cancel_by_id": self.cancel_by_id}
