"""When to give a long-lived worker a fresh ComfyUI: after N jobs, or when its memory
grew past a limit (leaky custom nodes). Decided between jobs, never during one."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from comfy_worker.comfy.process import State
from comfy_worker.config import Settings, env_name
from comfy_worker.errors import WorkerError

log = logging.getLogger(__name__)


def restart_reason(*, jobs_done: int, rss_bytes: int | None, after_jobs: int,
                   max_rss: int) -> str | None:
    """Why ComfyUI should be restarted now, or None (pure). ``after_jobs``/``max_rss``
    of 0 turn that rule off."""
    if after_jobs and jobs_done >= after_jobs:
        return f"{jobs_done} job(s) since it started ({env_name('restart_after_jobs')}=" \
               f"{after_jobs})"
    if max_rss and rss_bytes is not None and rss_bytes > max_rss:
        return (f"its memory (RSS {rss_bytes / 2**20:.0f} MiB) is over "
                f"{env_name('max_comfy_rss')}={max_rss} bytes ({max_rss / 2**20:.0f} MiB)")
    return None


def parse_vm_rss(status_text: str) -> int | None:
    """Resident memory in bytes from the text of ``/proc/PID/status`` (pure)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def process_rss(pid: int) -> int | None:
    """A process's resident memory in bytes (Linux), or None when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return parse_vm_rss(text) if os.name == "posix" else None


class Supervised(Protocol):
    """What the recycle rule needs of :class:`~comfy_worker.comfy.process.ComfyProcess`."""

    @property
    def state(self) -> State: ...

    @property
    def generation(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    def restart(self, reason: str) -> None: ...


class Recycler:
    """Counts the jobs run on each ComfyUI process and, after a job, restarts it when
    :func:`restart_reason` says so (the next job waits for the new one)."""

    def __init__(self, comfy: Supervised, settings: Settings,
                 rss: Callable[[int], int | None] = process_rss) -> None:
        self._comfy = comfy
        self.settings = settings
        """Its rules: ``restart_after_jobs``, ``max_comfy_rss`` (read after each job)."""
        self._rss = rss
        self._generation = comfy.generation
        self.jobs_done = 0
        """Jobs run on the current process."""

    def forget_jobs(self) -> None:
        """Jobs so far do not count (start-up's own warm-up job)."""
        self.jobs_done = 0

    def job_done(self) -> str | None:
        """A job ended: restart ComfyUI if a rule says so; the reason, or None."""
        comfy = self._comfy
        if comfy.state is not State.READY:
            return None
        if comfy.generation != self._generation:  # restarted meanwhile (a crash)
            self._generation, self.jobs_done = comfy.generation, 0
        self.jobs_done += 1
        pid, s = comfy.pid, self.settings
        rss = self._rss(pid) if s.max_comfy_rss and pid is not None else None
        reason = restart_reason(jobs_done=self.jobs_done, rss_bytes=rss,
                                after_jobs=s.restart_after_jobs, max_rss=s.max_comfy_rss)
        if reason is None:
            return None
        try:
            comfy.restart(reason)
        except WorkerError as exc:  # it stopped or died meanwhile: nothing to do
            log.debug("no restart: %s", exc.message)
            return None
        return reason
