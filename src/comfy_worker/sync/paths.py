"""Where models live: model roots, sidecar names, ComfyUI's ``extra_model_paths.yaml``."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from comfy_worker.atomic_write import write_text_atomic
from comfy_worker.config import Settings, env_name
from comfy_worker.errors import SyncError
from comfy_worker.lockfile import KNOWN_FOLDERS, Lockfile
from comfy_worker.sync.folder_markers import write_markers

STATE_DIR = ".comfy-worker"
"""Our own files inside the local models root (the yaml, records for read-only roots)."""


def model_roots(settings: Settings) -> list[Path]:
    """Model roots ComfyUI should search, highest priority first (pure).

    ``[settings.volume / "models"]`` when a volume is set, then ``settings.models_dir``.
    """
    roots: list[Path] = []
    if settings.volume is not None:
        roots.append(Path(os.path.abspath(settings.volume / "models")))
    local = Path(os.path.abspath(settings.models_dir))
    if local not in roots:
        roots.append(local)
    return roots


def state_dir(settings: Settings) -> Path:
    """The worker's own files (verification records, ComfyUI's yaml):
    ``MODELS_DIR/.comfy-worker``."""
    return Path(os.path.abspath(settings.models_dir)) / STATE_DIR


def extra_model_paths_location(settings: Settings) -> Path:
    """Where ``sync`` writes the yaml: ``MODELS_DIR/.comfy-worker/extra_model_paths.yaml``."""
    return state_dir(settings) / "extra_model_paths.yaml"


def temp_path(target: Path) -> Path:
    """A unique temporary name beside ``target``: ``.NAME.<random>.incomplete``."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.incomplete")


def lock_path(target: Path) -> Path:
    """The per-file lock beside ``target``: ``.NAME.lock``."""
    return target.with_name(f".{target.name}.lock")


def record_path(target: Path) -> Path:
    """The verification record beside ``target``: ``.NAME.verified``."""
    return target.with_name(f".{target.name}.verified")


def used_path(target: Path) -> Path:
    """The sidecar that makes ``target`` a request-cache file: ``.NAME.used`` (its mtime
    is the file's last use; see :mod:`comfy_worker.sync.cache`)."""
    return target.with_name(f".{target.name}.used")


def yaml_document(roots: Sequence[Path], folders: Iterable[str]) -> dict[str, dict[str, object]]:
    """The ``extra_model_paths.yaml`` content (pure): one section per root."""
    names = sorted(set(folders) | KNOWN_FOLDERS)
    doc: dict[str, dict[str, object]] = {}
    for i, root in enumerate(roots):
        section: dict[str, object] = {"base_path": str(root)}
        if i == 0:
            section["is_default"] = True  # searched before ComfyUI's own models dir
        for name in names:
            section[name] = name
        doc[f"comfy_worker_{i}"] = section
    return doc


def write_extra_model_paths(roots: Sequence[Path], folders: Iterable[str], dest: Path) -> Path:
    """Write a ComfyUI ``extra_model_paths.yaml`` mapping ``folders`` under every root.

    Atomic: a reader sees the old file or the new one. Callers use
    :func:`prepare_model_paths`.
    """
    text = yaml.safe_dump(yaml_document(roots, folders), sort_keys=False)
    return write_text_atomic(Path(dest), text)


@dataclass(frozen=True)
class ModelPaths:
    """Where ComfyUI finds the models of one lock."""

    roots: tuple[Path, ...]
    """Model roots, highest priority first (see :func:`model_roots`)."""
    extra_model_paths: Path
    """The yaml for ComfyUI's ``--extra-model-paths-config``."""
    marker_root: Path | None = None
    """The root of the folder markers (:mod:`comfy_worker.sync.folder_markers`), listed
    last in the yaml; no models live there."""


def prepare_model_paths(settings: Settings, lock: Lockfile, *,
                        folder_markers: bool = False) -> ModelPaths:
    """Compute the model roots and write ComfyUI's ``extra_model_paths.yaml`` for them.

    The one writer of that yaml (at :func:`extra_model_paths_location`). Needs only the
    settings and the lock, so the worker calls it before it boots ComfyUI and hands the
    result to :func:`~comfy_worker.sync.sync_models`, which then writes nothing again.
    ``folder_markers``: also write a marker per folder under
    ``MODELS_DIR/.comfy-worker/folder-markers`` and list that root last, so ComfyUI's
    ``/object_info`` tells which loader reads which folder.
    """
    roots = model_roots(settings)
    dest = extra_model_paths_location(settings)
    folders = lock.folders | KNOWN_FOLDERS
    markers = dest.parent / "folder-markers" if folder_markers else None
    try:
        if markers is not None:
            write_markers(markers, folders)
        write_extra_model_paths([*roots, *([markers] if markers else [])], folders, dest)
    except OSError as exc:
        raise SyncError(
            f"cannot write {dest}: {exc.strerror or exc}",
            hint=f"make the models dir writable (--models-dir / {env_name('models_dir')})",
        ) from None
    return ModelPaths(roots=tuple(roots), extra_model_paths=dest, marker_root=markers)
