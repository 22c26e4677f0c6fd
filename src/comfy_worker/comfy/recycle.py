"""When to give a long-lived worker a fresh ComfyUI: after N jobs, or when its memory
grew past a limit (leaky custom nodes). Decided between jobs, never during one."""

from __future__ import annotations

import os
from pathlib import Path

from comfy_worker.config import env_name


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
