"""``comfy-worker sync``: make every locked model present and verified."""

from __future__ import annotations

import argparse
import json
import sys

from comfy_worker.config import Settings
from comfy_worker.sync import sync_models


def main(args: argparse.Namespace, settings: Settings) -> int:
    report = sync_models(settings)
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
