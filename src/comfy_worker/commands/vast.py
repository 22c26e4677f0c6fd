"""``comfy-worker vast``: serve as a Vast.ai serverless worker (docs/serving.md).

The local HTTP API on 127.0.0.1 is the model server; Vast's PyWorker runs from its own
virtualenv (scripts/install_vast_pyworker.sh) and proxies ``/generate/sync`` to it.
"""

from __future__ import annotations

import argparse

from comfy_worker.config import Settings
from comfy_worker.entrypoints.vast import run_vast


def main(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.worker import Worker

    return run_vast(Worker(settings), settings)
