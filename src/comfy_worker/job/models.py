"""Which locked models a workflow uses (pure).

A job waits only for its own models: every string input that names a locked file
relative to its folder (``sd_xl_turbo_1.0_fp16.safetensors``, ``flux/x.safetensors``)
picks that entry; a name locked in two folders picks both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from comfy_worker.errors import (
    GatedModel,
    JobInputInvalid,
    ModelHashMismatch,
    ModelNotFound,
    ModelSizeMismatch,
    ModelSourceInvalid,
    WorkerError,
)
from comfy_worker.lockfile import LockEntry, Lockfile


def name_in_folder(path: str) -> str:
    """``checkpoints/flux/x.safetensors`` → ``flux/x.safetensors``."""
    return path.split("/", 1)[1] if "/" in path else path


def string_inputs(workflow: Mapping[str, Any]) -> Iterable[str]:
    """Every string input value of every node, with Windows separators made ``/``."""
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if isinstance(inputs, Mapping):
            for value in inputs.values():
                if isinstance(value, str):
                    yield value.replace("\\", "/")


def needed_entries(workflow: Mapping[str, Any], entries: Sequence[LockEntry]
                   ) -> tuple[LockEntry, ...]:
    """The entries whose name (path minus its folder) a string input names, in lock
    order."""
    by_name: dict[str, list[LockEntry]] = {}
    for entry in entries:
        by_name.setdefault(name_in_folder(entry.path), []).append(entry)
    wanted: dict[str, LockEntry] = {}
    for value in string_inputs(workflow):
        for entry in by_name.get(value, ()):
            wanted[entry.path] = entry
    return tuple(e for e in entries if e.path in wanted)


def request_models(models: Sequence[LockEntry], lock: Lockfile) -> tuple[LockEntry, ...]:
    """The job's own models that are not simply locked ones.

    An entry whose path the lock pins with the same sha256 and size is the locked file
    (fetched as such, from the lock's source); one that pins it with another sha256 or
    size is refused, naming both: a job must not replace a locked file under its name,
    nor make the worker doubt (re-verify, re-download) one.
    """
    brought: list[LockEntry] = []
    for i, entry in enumerate(models):
        locked = lock.entry(entry.path)
        if locked is None:
            brought.append(entry)
        elif locked.sha256 != entry.sha256:
            raise JobInputInvalid(
                f'models[{i}] ("{entry.path}"): the lock pins this path to sha256 '
                f"{locked.sha256} ({locked.source.describe()}), the job to {entry.sha256}",
                hint="use another path for the job's own file (e.g. a sub-folder), or drop "
                "the entry to use the locked file")
        elif locked.size != entry.size:
            raise JobInputInvalid(
                f'models[{i}] ("{entry.path}"): field "size": the lock pins this path to '
                f"{locked.size} bytes (sha256 {locked.sha256}), the job to {entry.size}",
                hint="drop the entry to use the locked file, or give the locked file's "
                "size")
    return tuple(brought)


def brought_model_error(error: WorkerError) -> WorkerError:
    """The error a job gets when a model it brought cannot be had.

    A source that has no such file, refuses access, serves other bytes or another size
    than the job's entry pins, or cannot be followed (a redirect loop, a redirect to
    another scheme) is the job's own mistake: a 422 that names the entry (its first cause
    in ``details``, with its own hint) and says what to fix, not the 502 of a failing
    locked source, which tells a client to retry. A URL the policy refuses is already the
    caller's 422 (``url-not-allowed``). Other errors (5xx, network, disk) stay as they
    are.
    """
    if not isinstance(error, ModelHashMismatch | ModelSizeMismatch | ModelNotFound
                      | GatedModel | ModelSourceInvalid):
        return error
    return JobInputInvalid(
        f'field "models": {error.message}',
        hint="fix the job's models entry: a source this worker can read, pinned to the "
        "sha256 and size of the bytes it serves",
        details=[{"reference": error.reference, "hint": error.hint}, *error.details])
