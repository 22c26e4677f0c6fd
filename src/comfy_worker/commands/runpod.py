"""``comfy-worker runpod``: serve as a RunPod serverless worker.

Syncs models and boots ComfyUI (concurrently), then runs ``runpod.serverless.start``.
The runpod SDK reads its own flags from the command line, so its local modes work
through this command: ``--test_input '{"input": {...}}'``, a ``test_input.json`` in the
working directory, ``--rp_serve_api --rp_api_port N``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from comfy_worker.config import Settings


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through `finally`, which stops ComfyUI cleanly.
    sys.exit(128 + signum)


def main(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.entrypoints.runpod import serve

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return serve(settings)
