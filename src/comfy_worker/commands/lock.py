"""``comfy-worker lock add``, ``lock from-workflow`` and ``lock verify``."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.errors import LockfileError
from comfy_worker.job.request import job_input_of
from comfy_worker.lockfile import (
    Lockfile,
    allowed_folders,
    load_lock,
    validate_model_path,
    write_lock,
)
from comfy_worker.sync.check import verify_file
from comfy_worker.sync.paths import state_dir

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


def lock_from_workflow(args: argparse.Namespace, settings: Settings) -> int:
    """Add every model FILE declares to the lock (resolved like ``lock add``), written
    atomically at the end; list the model names nobody declares. Exit 1 when some need
    a source."""
    from comfy_worker.commands.workflow import read_workflow_file
    from comfy_worker.resolve import Declared, resolve
    from comfy_worker.workflow.lock_plan import plan_lock

    lock_file = Path(args.lock) if args.lock else settings.lock_path
    lock = load_lock(lock_file) if lock_file.exists() else Lockfile()
    doc = _ui_document(read_workflow_file(Path(args.file)))
    plan = plan_lock(doc, lock)
    grown = replace(lock, extra_folders=(*lock.extra_folders, *plan.new_folders))
    added = []
    for i, wanted in enumerate(plan.to_resolve, 1):
        log.info("[%d/%d] resolving %s (%s)", i, len(plan.to_resolve), wanted.path,
                 wanted.source)
        declared = Declared(wanted.sha256, f"node {wanted.sha256_node or '(workflow)'}") \
            if wanted.sha256 else None
        entry = resolve(wanted.source, wanted.path, settings, declared=declared)
        grown = grown.with_entry(entry)
        added.append(entry)
    if added and not args.dry_run:
        write_lock(grown, lock_file)
    _report(args, lock_file, added, plan)
    return 1 if plan.needs_source else 0


def _ui_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The workflow itself from a job input or RunPod request wrapped around it."""
    inner = job_input_of(doc, where="the workflow file")
    workflow = inner.get("workflow")
    return workflow if isinstance(workflow, dict) else inner


def _report(args: argparse.Namespace, lock_file: Path, added: list[Any], plan: Any) -> None:
    if args.json:
        print(json.dumps({"lock": str(lock_file), "written": bool(added) and not args.dry_run,
                          "added": [e.to_json() for e in added],
                          "already_locked": list(plan.already_locked),
                          "extra_folders": list(plan.new_folders),
                          "needs_source": [u.to_json() for u in plan.needs_source]},
                         indent=2))
        return
    verb = "would lock" if args.dry_run else "locked"
    for entry in added:
        print(f"{verb} {entry.path}: {entry.source.describe()} sha256 {entry.sha256} "
              f"{entry.size} bytes")
    for path in plan.already_locked:
        print(f"already locked {path}")
    for folder in plan.new_folders:
        print(f"extra folder {folder}")
    for item in plan.needs_source:
        print(f"needs a source: {item.name} (node {item.node_id}); pin it with "
              f"`comfy-worker lock add SOURCE --path FOLDER/{item.name}`")
    where = "" if args.dry_run or not added else f" -> {lock_file}"
    print(f"{len(added)} added, {len(plan.already_locked)} already locked, "
          f"{len(plan.needs_source)} need a source{where}")


def lock_verify(args: argparse.Namespace, settings: Settings) -> int:
    lock = load_lock(Path(args.lock) if args.lock else settings.lock_path)
    root = Path(args.dir)
    records = state_dir(settings)
    results: list[dict[str, Any]] = []
    for entry in lock.models:
        verdict = verify_file(root / entry.path, entry, fast=args.fast, state_dir=records)
        results.append({"path": entry.path, "ok": verdict.ok, "check": verdict.detail})
    bad = [r for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"dir": str(root), "ok": not bad, "files": results}, indent=2))
    else:
        for r in results:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['path']}: {r['check']}")
        print(f"{len(results) - len(bad)} of {len(results)} files match the lock")
    return 1 if bad else 0
