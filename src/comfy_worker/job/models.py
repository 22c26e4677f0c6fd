"""Which locked models a workflow uses (pure).

A job waits only for its own models: every string input that names a locked file
relative to its folder (``sd_xl_turbo_1.0_fp16.safetensors``, ``flux/x.safetensors``)
picks that entry; a name locked in two folders picks both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from comfy_worker.lockfile import LockEntry


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
