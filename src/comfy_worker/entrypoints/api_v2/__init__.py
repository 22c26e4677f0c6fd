"""The Comfy API v2 (``/api/v2``) on ``comfy-worker serve``, so comfy-sdk code written for
Comfy Cloud runs unchanged against this worker (``COMFY_BASE_URL``).

It shares the worker's job queue with ``/generate``: every v2 job runs through the same
Worker and job pipeline (models on demand, preflight, timeouts, recycling). Modules:
``wire`` (the contract's shapes, codes and checks; pure), ``assets`` (the asset store
under the work dir), ``upload`` (multipart uploads), ``jobs`` (the v2 job registry over
the queue), ``events`` (SSE), ``routes`` (the HTTP handlers). README's "Comfy API v2"
says what works, what is ours beyond the contract, and what is not supported.
"""

from __future__ import annotations

from pathlib import Path

from comfy_worker.config import Settings
from comfy_worker.entrypoints.api_v2.assets import AssetStore
from comfy_worker.entrypoints.api_v2.jobs import Service
from comfy_worker.entrypoints.api_v2.routes import V2Api, mount
from comfy_worker.job.request import JobLimits

ASSETS_DIR = "api-v2-assets"
"""The store's folder under the worker's work dir (emptied when the store opens)."""


def v2_api(service: Service, settings: Settings, work_dir: Path) -> V2Api:
    """The v2 surface of ``service``, its assets under ``work_dir``."""
    store = AssetStore(Path(work_dir) / ASSETS_DIR, max_bytes=settings.assets_max_bytes,
                       ttl=settings.asset_ttl)
    return V2Api(service, store, ttl=settings.asset_ttl,
                 max_request_bytes=settings.max_request_bytes,
                 max_timeout=JobLimits.of(settings).max_timeout)


__all__ = ["ASSETS_DIR", "V2Api", "mount", "v2_api"]
