"""Which loader input reads which models folder, known from ``/object_info`` even when the
folders are still empty.

ComfyUI's ``/object_info`` lists a loader's files as a plain COMBO (``ckpt_name: [[files],
{}]``) with no word about the folder, and on a cold on-demand worker every folder is
empty, so a loader cannot be told from any other COMBO. The worker therefore gives
ComfyUI one extra model root holding a marker file per folder,
``FOLDER/comfy-worker-folder--FOLDER.safetensors`` (a valid, empty safetensors file):
every loader's option list then contains the marker of each folder it reads, whatever
node (core or custom) it belongs to. :func:`loader_folders` reads them back;
:func:`without_markers` hides them from anything a user sees.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

PREFIX = "comfy-worker-folder--"
SUFFIX = ".safetensors"
EMPTY_SAFETENSORS = struct.pack("<Q", 8) + b"{}" + b" " * 6
"""A header with no tensors, padded to 8 bytes: loaders that open it find nothing."""


def marker_name(folder: str) -> str:
    return f"{PREFIX}{folder}{SUFFIX}"


def folder_of_marker(option: str) -> str | None:
    """The folder a marker option names, else None (pure)."""
    name = option.replace("\\", "/").rsplit("/", 1)[-1]
    if name.startswith(PREFIX) and name.endswith(SUFFIX):
        return name[len(PREFIX):-len(SUFFIX)] or None
    return None


def loader_folders(options: Iterable[str]) -> frozenset[str]:
    """The models folders a COMBO's options come from (empty: not a loader input)."""
    return frozenset(f for o in options if (f := folder_of_marker(o)) is not None)


def without_markers(options: Iterable[str]) -> list[str]:
    return [o for o in options if folder_of_marker(o) is None]


def write_markers(root: Path, folders: Iterable[str]) -> Path:
    """Create ``root/FOLDER/<marker>`` for every folder (idempotent); returns ``root``."""
    for folder in folders:
        target = root / folder / marker_name(folder)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(EMPTY_SAFETENSORS)
    return root
