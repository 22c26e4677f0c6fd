"""``comfy-worker serve``: the local HTTP API (docs/serving.md).

Binds ``--host``/``--port`` (env COMFY_WORKER_HOST / COMFY_WORKER_PORT, default
0.0.0.0:8000) at once, answers ``/health`` with 503 while models sync and ComfyUI
starts, and serves until SIGINT/SIGTERM. Exits 1 if start-up had failed, else 0.
"""

from __future__ import annotations

import argparse

from comfy_worker.config import Settings
from comfy_worker.entrypoints.http_api import run_server
from comfy_worker.entrypoints.job_queue import ApiService


def main(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.worker import Worker

    service = ApiService(Worker(settings))
    return run_server(service, host=settings.host, port=settings.port,
                      max_request_bytes=settings.max_request_bytes,
                      api_token=settings.api_token)
