"""``models.lock.json``: parse, validate, write.

Version 1::

    {"version": 1,
     "extra_folders": ["ipadapter"],            # optional: custom nodes' model folders
     "models": [
       {"path": "checkpoints/sd_xl_base_1.0.safetensors",
        "source": {"type": "huggingface", "repo": "owner/name",
                   "revision": "<40-hex commit>", "file": "path/in/repo"},
        "sha256": "<64 hex>", "size": 6938078334},
       {"path": "loras/style.safetensors",
        "source": {"type": "url", "url": "https://example.org/style.safetensors"},
        "sha256": "<64 hex>", "size": 1234}]}

Loading rejects anything that would make a sync unsafe or ambiguous, with a message
naming the entry, the field, the value and the fix.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from comfy_worker.atomic_write import write_text_atomic
from comfy_worker.config import Secret, env_name
from comfy_worker.errors import LockfileError
from comfy_worker.jsontypes import json_text, json_type_name
from comfy_worker.net.redact import redact_url

log = logging.getLogger(__name__)

LOCK_VERSION = 1

# ComfyUI's own model folders (folder_paths.py) and the ones popular custom nodes add.
KNOWN_FOLDERS: frozenset[str] = frozenset(
    {
        "checkpoints", "configs", "loras", "vae", "vae_approx", "clip", "text_encoders",
        "unet", "diffusion_models", "clip_vision", "style_models", "embeddings",
        "diffusers", "controlnet", "t2i_adapter", "gligen", "upscale_models",
        "latent_upscale_models", "hypernetworks", "photomaker", "classifiers",
        "model_patches", "audio_encoders",
        # custom nodes in wide use
        "ipadapter", "instantid", "insightface", "facerestore_models", "sams", "ultralytics",
        "animatediff_models", "animatediff_motion_lora", "LLM", "onnx", "pulid",
        "xlabs", "depthanything", "annotators", "mmdets", "grounding-dino",
    }
)

# File name endings of model files (what a loader's value that names a model ends in).
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".gguf",
                    ".onnx", ".pkl")

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_REPO_TYPES = ("model", "dataset", "space")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 200
"""Longest file or folder name in a path: 255 (the file system's) less what the worker's
own files beside it add (``.NAME.<12 hex>.incomplete``: 25 bytes), with room to spare."""
MAX_PATH_BYTES = 1024
MAX_URL_CHARS = 8192


@dataclass(frozen=True)
class HfSource:
    """A file in a Hugging Face repo at ``revision``.

    In a lock the revision is always a 40-hex commit (:attr:`pinned`; validation and
    :class:`LockEntry` insist). Before that, ``lock add`` holds a reference at a branch
    or tag, asks the Hub for its commit and pins it with :meth:`at`.
    """

    repo: str
    revision: str
    file: str
    repo_type: str = "model"
    type: str = field(default="huggingface", init=False)
    token: Secret | None = field(default=None, compare=False, repr=False)
    """A job's own Hugging Face token for this file (a job's entry only; never in a
    lock, never written, shown or logged)."""

    @property
    def pinned(self) -> bool:
        """The revision is a commit, so the bytes can never change."""
        return bool(_COMMIT.match(self.revision))

    def at(self, commit: str) -> HfSource:
        """This file at ``commit``."""
        return replace(self, revision=commit)

    def describe(self) -> str:
        return f"hf://{self.repo}@{self.revision[:12]}/{self.file}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "repo": self.repo, "revision": self.revision,
                               "file": self.file}
        if self.repo_type != "model":
            out["repo_type"] = self.repo_type
        return out


@dataclass(frozen=True)
class UrlSource:
    url: str
    type: str = field(default="url", init=False)

    def describe(self) -> str:
        """The URL as messages and logs show it: without query and credentials."""
        return redact_url(self.url)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "url": self.url}


Source = HfSource | UrlSource


@dataclass(frozen=True)
class LockEntry:
    path: str
    """POSIX path relative to a ComfyUI models root, e.g. ``loras/style.safetensors``."""
    source: Source
    sha256: str
    """Lower-case hex."""
    size: int

    def __post_init__(self) -> None:
        if isinstance(self.source, HfSource) and not self.source.pinned:
            raise LockfileError(
                f'"{self.path}": {self.source.describe()} is not pinned to a commit',
                hint="`comfy-worker lock add` resolves a branch or tag to its commit")

    @property
    def folder(self) -> str:
        return self.path.split("/", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "source": self.source.to_json(), "sha256": self.sha256,
                "size": self.size}


@dataclass(frozen=True)
class Lockfile:
    models: tuple[LockEntry, ...] = ()
    extra_folders: tuple[str, ...] = ()
    version: int = LOCK_VERSION

    @property
    def folders(self) -> frozenset[str]:
        """The models folders this lock uses or declares (``extra_folders``)."""
        return frozenset(m.folder for m in self.models) | frozenset(self.extra_folders)

    def entry(self, path: str) -> LockEntry | None:
        for m in self.models:
            if m.path == path:
                return m
        return None

    def with_entry(self, entry: LockEntry, *, replace: bool = False) -> Lockfile:
        """A new lock with ``entry`` added (or replacing the one at its path)."""
        if self.entry(entry.path) is not None and not replace:
            raise LockfileError(
                f'path "{entry.path}" is already locked',
                hint="pass --replace to re-pin it, or choose another --path",
            )
        models = [m for m in self.models if m.path != entry.path] + [entry]
        models.sort(key=lambda m: m.path)
        # Round-trip through validation so a bad entry can never be written.
        return parse_lock(
            Lockfile(tuple(models), self.extra_folders, self.version).to_json(),
            origin="lock",
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.extra_folders:
            out["extra_folders"] = list(self.extra_folders)
        out["models"] = [m.to_json() for m in self.models]
        return out


# --- validation (pure) ----------------------------------------------------------------

_MISSING: Any = object()


def _shown(value: object) -> str:
    """A JSON value as a message shows it: ``missing``, ``null``, ``"main"``, ``12``."""
    return "missing" if value is _MISSING else json_text(value)


def _typed(value: object, expected: str) -> str:
    """A value as a message shows it, naming its JSON type when that is not ``expected``:
    ``"12" (a string)`` where a number belongs, ``"main"`` where a string does."""
    kind = json_type_name(value)
    if value is _MISSING or value is None or kind == expected:
        return _shown(value)
    return f"{json_text(value)} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})"



def allowed_folders(extra_folders: Iterable[str]) -> frozenset[str]:
    """Folders a lock entry's path may start with: ComfyUI's and the lock's extras."""
    return KNOWN_FOLDERS | frozenset(extra_folders)


def validate_model_path(path: object, *, where: str, folders: frozenset[str]) -> str:
    """The normalised relative path, or a LockfileError naming what is wrong."""
    if not isinstance(path, str) or not path.strip():
        raise LockfileError(f'{where}: field "path" is {_typed(path, "string")}',
                            hint='set "path" to FOLDER/NAME, e.g. "loras/style.safetensors"')
    shown = json_text(path, limit=120)
    if _CONTROL.search(path):
        raise LockfileError(f'{where}: field "path" {shown} contains a control character',
                            hint="use printable characters only")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise LockfileError(f'{where}: field "path" is {len(path.encode("utf-8"))} bytes '
                            f"long, over the {MAX_PATH_BYTES}-byte limit",
                            hint="use a shorter path")
    if "\\" in path:
        raise LockfileError(f'{where}: field "path" {shown} contains a backslash',
                            hint="use forward slashes")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise LockfileError(
            f'{where}: field "path" {shown} is absolute',
            hint='paths are relative to the models root, e.g. "checkpoints/model.safetensors"',
        )
    parts = path.split("/")
    if ".." in parts:
        raise LockfileError(f'{where}: field "path" {shown} contains ".."',
                            hint="paths must stay inside the models root")
    if any(p in ("", ".") for p in parts):
        raise LockfileError(f'{where}: field "path" {shown} has an empty or "." segment',
                            hint='write it as FOLDER/NAME without "//", "./" or a trailing "/"')
    if len(parts) < 2:
        raise LockfileError(
            f'{where}: field "path" {shown} names no models folder',
            hint='prefix it with its folder, e.g. "checkpoints/' + parts[0] + '"',
        )
    if parts[0] not in folders:
        raise LockfileError(
            f'{where}: field "path" {shown}: unknown models folder "{parts[0]}"',
            hint=f"use one of {', '.join(sorted(KNOWN_FOLDERS))}, or add "
            f'"{parts[0]}" to the lock\'s top-level "extra_folders" for a custom node\'s folder',
        )
    long = next((p for p in parts if len(p.encode("utf-8")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise LockfileError(
            f'{where}: field "path" has a name of {len(long.encode("utf-8"))} bytes '
            f"({json_text(long, limit=60)}), over the {MAX_NAME_BYTES}-byte limit",
            hint=f"use names of at most {MAX_NAME_BYTES} bytes (the file system allows "
            "255, and the worker's temp and record files add to the name)")
    if any(p.endswith((".incomplete", ".lock")) or p.startswith(".") for p in parts):
        raise LockfileError(f'{where}: field "path" {shown} uses a reserved name',
                            hint='names may not start with "." or end in .incomplete/.lock')
    return str(PurePosixPath(path))


def _unknown(raw: dict[str, Any], allowed: Iterable[str]) -> str | None:
    """The unknown keys of ``raw`` as a JSON array, or None."""
    unknown = sorted(set(raw) - set(allowed))
    return json_text(unknown, limit=200) if unknown else None


def _valid_url(url: object) -> bool:
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or _CONTROL.search(url) \
            or " " in url:
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("https", "http") and bool(parts.hostname)


def _parse_source(raw: object, *, where: str, job: bool = False) -> Source:
    if not isinstance(raw, dict):
        raise LockfileError(f'{where}: field "source" is {_typed(raw, "object")}, '
                            "expected an object", hint='e.g. {"type": "url", "url": "https://..."}')
    kind = raw.get("type", _MISSING)
    if kind == "huggingface":
        repo = raw.get("repo", _MISSING)
        if not isinstance(repo, str) or not _REPO.match(repo):
            raise LockfileError(f'{where}: field "source.repo" is {_typed(repo, "string")}',
                                hint='use the Hugging Face repo id, "owner/name"')
        revision = raw.get("revision", _MISSING)
        if not isinstance(revision, str) or not _COMMIT.match(revision):
            raise LockfileError(
                f'{where}: field "source.revision" is {_typed(revision, "string")}, '
                "not a 40-hex commit",
                hint="pin a commit, not a branch or tag: `comfy-worker lock add "
                f"hf://{repo}@{revision if isinstance(revision, str) else 'main'}/FILE` "
                "resolves it",
            )
        file = raw.get("file", _MISSING)
        if not isinstance(file, str) or not file or file.startswith("/") or ".." in file.split("/"):
            raise LockfileError(f'{where}: field "source.file" is {_typed(file, "string")}',
                                hint="set it to the file's path inside the repo")
        repo_type = raw.get("repo_type", "model")
        if repo_type not in _REPO_TYPES:
            raise LockfileError(f'{where}: field "source.repo_type" is '
                                f'{_typed(repo_type, "string")}',
                                hint=f"use one of {', '.join(_REPO_TYPES)}")
        token = raw.get("token")
        if token is not None and (not job or not isinstance(token, str) or not token.strip()
                                  or _CONTROL.search(token)):
            if not job:
                raise LockfileError(
                    f'{where}: field "source.token" is not allowed in a lock',
                    hint=f"remove it; the worker sends {env_name('hf_token')} for locked "
                    "files")
            raise LockfileError(f'{where}: field "source.token" is not a token',
                                hint="give a Hugging Face read token as a string, or leave "
                                "it out")
        unknown = _unknown(raw, ("type", "repo", "revision", "file", "repo_type", "token"))
        if unknown:
            raise LockfileError(f'{where}: unknown field(s) in "source": {unknown}',
                                hint="remove them")
        return HfSource(repo=repo, revision=revision, file=file, repo_type=repo_type,
                        token=Secret(token.strip()) if token else None)
    if kind == "url":
        url = raw.get("url", _MISSING)
        if not _valid_url(url):
            shown = (f"{redact_url(url)!r} (query and credentials not shown)"
                     if isinstance(url, str) else _typed(url, "string"))
            raise LockfileError(f'{where}: field "source.url" is {shown}',
                                hint="use an https:// (or http://) URL of at most "
                                f"{MAX_URL_CHARS} characters, without spaces or control "
                                "characters")
        unknown = _unknown(raw, ("type", "url"))
        if unknown:
            raise LockfileError(f'{where}: unknown field(s) in "source": {unknown}',
                                hint="remove them")
        return UrlSource(url=url)
    raise LockfileError(f'{where}: field "source.type" is {_typed(kind, "string")}',
                        hint='use "huggingface" or "url"')


def parse_lock(data: object, *, origin: str = "models.lock.json") -> Lockfile:
    """Validate decoded JSON into a :class:`Lockfile` (pure)."""
    if not isinstance(data, dict):
        raise LockfileError(f"{origin}: top level is {_typed(data, 'object')}, expected an object",
                            hint='start from {"version": 1, "models": []}')
    version = data.get("version", _MISSING)
    if version != LOCK_VERSION or isinstance(version, bool):
        raise LockfileError(f'{origin}: field "version" is {_typed(version, "number")}',
                            hint=f"this worker reads version {LOCK_VERSION}")
    unknown = _unknown(data, ("version", "models", "extra_folders"))
    if unknown:
        raise LockfileError(f"{origin}: unknown top-level field(s) {unknown}",
                            hint='allowed: "version", "models", "extra_folders"')
    extra = data.get("extra_folders", [])
    if not isinstance(extra, list) or not all(
        isinstance(f, str) and re.match(r"^[\w.-]+$", f) and f not in (".", "..") for f in extra
    ):
        raise LockfileError(f'{origin}: field "extra_folders" is {_typed(extra, "array")}',
                            hint='an array of plain folder names, e.g. ["ipadapter"]')
    folders = allowed_folders(extra)
    models = data.get("models", _MISSING)
    if not isinstance(models, list):
        raise LockfileError(f'{origin}: field "models" is {_typed(models, "array")}, '
                            "expected an array", hint='add "models": [] ')
    return Lockfile(models=parse_entries(models, where=f"{origin}: models", folders=folders),
                    extra_folders=tuple(extra))


def parse_entries(raw_entries: list[Any], *, where: str, folders: frozenset[str],
                  job: bool = False) -> tuple[LockEntry, ...]:
    """Validate a list of entries (a lock's ``models``, or a job's ``models``): each by
    :func:`parse_entry`, and no path twice (case-insensitively)."""
    entries: list[LockEntry] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_entries):
        entry = parse_entry(raw, where=f"{where}[{i}]", folders=folders, job=job)
        key = entry.path.casefold()
        if key in seen:
            raise LockfileError(
                f'{where}[{i}] ("{entry.path}"): duplicate path "{entry.path}" (also '
                f"{where.rsplit(': ', 1)[-1]}[{seen[key]}])",
                hint="each file may be listed once; remove one of them",
            )
        seen[key] = i
        entries.append(entry)
    return tuple(entries)


def parse_entry(raw: object, *, where: str, folders: frozenset[str], job: bool = False
                ) -> LockEntry:
    """One lock entry ``{"path", "source", "sha256", "size"}``, validated (pure).
    ``job``: an entry of a job's ``models``, whose huggingface source may carry the job's
    own ``token``."""
    if not isinstance(raw, dict):
        raise LockfileError(f"{where} is {_typed(raw, 'object')}, expected an object",
                            hint='each entry is {"path", "source", "sha256", "size"}')
    if isinstance(raw.get("path"), str):
        where += f" ({json_text(raw['path'], limit=120)})"
    path = validate_model_path(raw.get("path", _MISSING), where=where, folders=folders)
    source = _parse_source(raw.get("source", _MISSING), where=where, job=job)
    sha = raw.get("sha256", _MISSING)
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise LockfileError(
            f'{where}: field "sha256" is {_typed(sha, "string")}, not 64 hex characters',
            hint="use `comfy-worker lock add` to compute it, or `sha256sum FILE`",
        )
    size = raw.get("size", _MISSING)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise LockfileError(f'{where}: field "size" is {_typed(size, "number")}',
                            hint="set it to the file's size in bytes, a whole number "
                            "(`stat -c %s FILE`)")
    unknown = _unknown(raw, ("path", "source", "sha256", "size"))
    if unknown:
        raise LockfileError(f"{where}: unknown field(s) {unknown}",
                            hint='allowed: "path", "source", "sha256", "size"')
    return LockEntry(path=path, source=source, sha256=sha.lower(), size=size)


def load_lock_if_any(path: Path) -> Lockfile:
    """The lock at ``path``; an empty one (logged) when there is no file: the worker then
    syncs nothing, and ComfyUI still sees the model folders."""
    if not Path(path).exists():
        log.warning("no lock file at %s: no models are synced (ComfyUI still sees the "
                    "model folders)", path)
        return Lockfile()
    return load_lock(path)


def load_lock(path: Path) -> Lockfile:
    """Read and validate a lock file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockfileError(
            f'lock file "{path}" does not exist',
            hint=f"pass --lock FILE (or {env_name('lock_path')}), or create one with "
            "`comfy-worker lock add`",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockfileError(f"{path}: not valid JSON: {exc}",
                            hint="fix the syntax at that line and column") from None
    return parse_lock(data, origin=str(path))


def dump_lock(lock: Lockfile) -> str:
    return json.dumps(lock.to_json(), indent=2) + "\n"


def write_lock(lock: Lockfile, path: Path) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half."""
    write_text_atomic(path, dump_lock(lock))
