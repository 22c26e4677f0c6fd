"""``comfy-worker runpod|serve|vast``: serve jobs on a platform (entrypoints/platform.py
says what each does)."""

from __future__ import annotations

import argparse

from comfy_worker.config import Settings
from comfy_worker.entrypoints.platform import platform_named


def main(args: argparse.Namespace, settings: Settings) -> int:
    platform = platform_named(args.command)
    assert platform is not None, args.command
    return platform.serve(settings)
