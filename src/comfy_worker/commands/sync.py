"""``comfy-worker sync``: make every locked model present and verified.

SIGTERM (a container stopped, a job runner's timeout) is handled as SIGINT is: the
downloads in flight are cancelled and their temp files removed before the command exits,
with status 143 (128 + SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from types import FrameType

from comfy_worker.config import Settings
from comfy_worker.sync import sync_models

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so every download cleans up after itself."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up must not be cut
    raise Terminated()


def main(args: argparse.Namespace, settings: Settings) -> int:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = sync_models(settings)
    except Terminated:
        print("comfy-worker: terminated (SIGTERM): downloads stopped, temp files removed",
              file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2))
    else:
        counts = report.to_json()["counts"]
        parts = ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "none"
        print(f"{len(report.files)} locked files present and verified ({parts}) in "
              f"{report.seconds:.1f} s")
        print(f"ComfyUI: --extra-model-paths-config {report.extra_model_paths}")
    sys.stdout.flush()
    return 0
