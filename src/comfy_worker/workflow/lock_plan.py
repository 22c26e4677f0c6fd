"""What ``lock from-workflow`` adds to a lock: the models a workflow declares (pure).

The editor's templates declare their files on loader nodes (``properties.models``,
:mod:`comfy_worker.workflow.declared`). Each declaration becomes a lock path
``directory/name`` and a source to resolve: a Hugging Face ``resolve`` URL becomes
``hf://[datasets/]OWNER/REPO@REV/PATH`` (pinned to its commit by ``lock add``'s resolver,
with the Hub's sha256 and size, no download); any other URL stays a URL (hashed by one
streamed download). A declared ``hash`` with ``hash_type`` SHA256 travels with the entry:
the resolver checks the source against it (or, for a URL, uses it instead of hashing a
download). The same file declared twice collapses; one path declared with two different
sources or two different hashes is an error. Model names the workflow's nodes use that
nobody declares are listed as needing a source.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from comfy_worker.errors import LockfileError
from comfy_worker.lockfile import (
    KNOWN_FOLDERS,
    MODEL_EXTENSIONS,
    Lockfile,
    validate_model_path,
)
from comfy_worker.workflow.declared import DeclaredModel, declared_models, hf_resolve_parts


@dataclass(frozen=True)
class Wanted:
    """One lock entry to resolve: where it goes and where it comes from."""

    path: str
    source: str
    """``hf://...`` or the URL, what the resolver of ``lock add`` takes."""
    url: str
    """The URL as declared."""
    nodes: tuple[str, ...]
    """The nodes that declare it."""
    sha256: str | None = None
    """The SHA256 a node declares for it (lower-case hex), if any."""
    sha256_node: str = ""
    """The node that declares ``sha256``."""


@dataclass(frozen=True)
class Unsourced:
    """A model name a node uses that no declaration gives a source for."""

    name: str
    node_id: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "node_id": self.node_id}


@dataclass(frozen=True)
class LockPlan:
    to_resolve: tuple[Wanted, ...]
    already_locked: tuple[str, ...]
    new_folders: tuple[str, ...]
    """Folders outside ComfyUI's standard ones, to add to the lock's ``extra_folders``."""
    needs_source: tuple[Unsourced, ...]


def source_for(url: str) -> str:
    """The resolver's source text for a declared URL (pure)."""
    hf = hf_resolve_parts(url)
    if hf is None:
        return url.strip()
    kind = {"dataset": "datasets/", "space": "spaces/"}.get(hf.repo_type, "")
    return f"hf://{kind}{hf.repo}@{hf.revision}/{hf.path}"


log = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def declared_sha256(model: DeclaredModel) -> str | None:
    """The SHA256 ``model`` declares (lower-case), None when it declares none or a hash of
    another kind. Raises :class:`LockfileError` for a SHA256 that is not 64 hex digits."""
    if model.hash is None:
        return None
    kind = (model.hash_type or "").strip().replace("-", "").lower()
    if kind != "sha256":
        log.info("node %s: declared %s hash of %s is not used (only SHA256 is)",
                 model.node_id or "(workflow)", model.hash_type or "an untyped", model.name)
        return None
    digest = model.hash.strip()
    if not _SHA256.fullmatch(digest):
        raise LockfileError(
            f'node {model.node_id or "(workflow)"}: declared model "{model.name}" has '
            f'hash_type {model.hash_type} but hash "{model.hash[:80]}" is not 64 hex digits',
            hint="fix or remove the declaration's hash in the workflow, then run it again")
    return digest.lower()


def plan_lock(doc: Mapping[str, Any], lock: Lockfile) -> LockPlan:
    """The entries ``doc`` (a UI-format workflow; an API prompt declares nothing) adds to
    ``lock``. Raises :class:`LockfileError` for a bad declared path, a path declared
    with two different sources or hashes, or a declared SHA256 the lock's entry for that
    path contradicts."""
    declared = declared_models(doc)
    wanted: dict[str, Wanted] = {}
    new_folders: set[str] = set()
    for model in declared:
        folder = model.directory.strip().strip("/")
        if folder and folder not in KNOWN_FOLDERS and folder not in lock.extra_folders:
            new_folders.add(folder)
        path = validate_model_path(
            f"{folder}/{model.name}", where=f'node {model.node_id or "(workflow)"}: declared '
            f'model "{model.name}"', folders=KNOWN_FOLDERS | set(lock.extra_folders)
            | new_folders)
        _add(wanted, path, model)
    locked = {e.path: e for e in lock.models}
    for path, want in wanted.items():
        entry = locked.get(path)
        if entry is not None and want.sha256 and entry.sha256.lower() != want.sha256:
            raise LockfileError(
                f'"{path}" is locked with sha256 {entry.sha256}, but the workflow declares '
                f"{want.sha256} (node {want.sha256_node or '(workflow)'})",
                hint="the lock pins another file at that path: remove its entry to lock "
                "the declared one, or fix the workflow's hash, then run it again")
    names = {p.split("/", 1)[1] for p in set(locked) | set(wanted)}
    unsourced = tuple(u for u in used_model_names(doc) if u.name.replace("\\", "/")
                      not in names)
    return LockPlan(to_resolve=tuple(w for p, w in wanted.items() if p not in locked),
                    already_locked=tuple(p for p in wanted if p in locked),
                    new_folders=tuple(sorted(new_folders)), needs_source=unsourced)


def _add(wanted: dict[str, Wanted], path: str, model: DeclaredModel) -> None:
    source = source_for(model.url)
    sha256 = declared_sha256(model)
    seen = wanted.get(path)
    if seen is None:
        wanted[path] = Wanted(path, source, model.url, (model.node_id,), sha256,
                              model.node_id if sha256 else "")
        return
    if seen.source != source:
        raise LockfileError(
            f'"{path}" is declared with two sources: {seen.url} (node {seen.nodes[0]}) and '
            f"{model.url} (node {model.node_id})",
            hint="make the declarations agree (one file, one source), then run it again")
    if sha256 and seen.sha256 and sha256 != seen.sha256:
        raise LockfileError(
            f'"{path}" is declared with two SHA256 hashes: {seen.sha256} (node '
            f"{seen.sha256_node}) and {sha256} (node {model.node_id})",
            hint="make the declarations agree (one file, one hash), then run it again")
    wanted[path] = Wanted(path, source, seen.url, (*seen.nodes, model.node_id),
                          seen.sha256 or sha256, seen.sha256_node or (
                              model.node_id if sha256 else ""))


def used_model_names(doc: Mapping[str, Any]) -> tuple[Unsourced, ...]:
    """Model file names a workflow's nodes use (widget values of a UI workflow, inputs of
    an API prompt) that end in a model extension, first use of each name."""
    seen: dict[str, Unsourced] = {}
    for node_id, value in _string_values(doc):
        if value.lower().endswith(MODEL_EXTENSIONS) and value not in seen:
            seen[value] = Unsourced(value, node_id)
    return tuple(seen.values())


def _string_values(doc: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    if isinstance(doc.get("nodes"), list):
        yield from _ui_values(doc.get("nodes"), "")
        definitions = doc.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else []
        for sub in subgraphs if isinstance(subgraphs, list) else []:
            if isinstance(sub, Mapping):
                yield from _ui_values(sub.get("nodes"), f"{sub.get('id')}:")
        return
    for node_id, node in doc.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in (inputs.values() if isinstance(inputs, Mapping) else ()):
            if isinstance(value, str):
                yield str(node_id), value


def _ui_values(nodes: Any, prefix: str) -> Iterator[tuple[str, str]]:
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, Mapping):
            continue
        values = node.get("widgets_values")
        if isinstance(values, Mapping):
            values = list(values.values())
        for value in values if isinstance(values, list) else ():
            if isinstance(value, str):
                yield f"{prefix}{node.get('id')}", value
