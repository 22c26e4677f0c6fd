"""``comfy-worker lock add`` and ``comfy-worker lock verify``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.errors import LockfileError
from comfy_worker.lockfile import (
    Lockfile,
    allowed_folders,
    load_lock,
    validate_model_path,
    write_lock,
)
from comfy_worker.sync.check import verify_file
from comfy_worker.sync.paths import STATE_DIR

log = logging.getLogger(__name__)


def lock_add(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.resolve import resolve

    lock_file = Path(args.lock) if args.lock else settings.lock_path
    lock = load_lock(lock_file) if lock_file.exists() else Lockfile()
    path = validate_model_path(args.path, where="--path",
                               folders=allowed_folders(lock.extra_folders))
    if lock.entry(path) is not None and not args.replace:  # fail before any network I/O
        raise LockfileError(f'path "{path}" is already locked in {lock_file}',
                            hint="pass --replace to re-pin it, or choose another --path")
    entry = resolve(args.source, path, settings)
    write_lock(lock.with_entry(entry, replace=args.replace), lock_file)
    print(f"locked {entry.path}: {entry.source.describe()} sha256 {entry.sha256} "
          f"{entry.size} bytes -> {lock_file}")
    return 0


def lock_verify(args: argparse.Namespace, settings: Settings) -> int:
    lock = load_lock(Path(args.lock) if args.lock else settings.lock_path)
    root = Path(args.dir)
    state_dir = Path(os.path.abspath(settings.models_dir)) / STATE_DIR
    results: list[dict[str, Any]] = []
    for entry in lock.models:
        verdict = verify_file(root / entry.path, entry, fast=args.fast, state_dir=state_dir)
        results.append({"path": entry.path, "ok": verdict.ok, "check": verdict.detail})
    bad = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"dir": str(root), "ok": not bad, "files": results}, indent=2))
    else:
        for r in results:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['path']}: {r['check']}")
        print(f"{len(results) - len(bad)} of {len(results)} files match the lock")
    return 1 if bad else 0
