"""Models a UI-format workflow declares for download (pure, no network).

The editor's templates (and workflows saved from them) list the files their loaders need
on the loader node: ``node.properties.models = [{"name", "url", "directory"}, ...]``, newer
ones with the file's ``hash`` and ``hash_type`` (``"SHA256"``); the editor offers to
download them when they are missing. A document may also carry a
top-level ``models`` list. :func:`declared_models` collects them all, subgraph definitions
included; :func:`hf_resolve_parts` splits a Hugging Face download URL into repository,
revision and file path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_REPO_TYPES = {"datasets": "dataset", "spaces": "space"}


@dataclass(frozen=True)
class DeclaredModel:
    """One ``properties.models`` entry.

    ``node_id``: the node's id for a top-level node, ``"<subgraph id>:<node id>"`` for a
    node inside a subgraph definition, ``""`` for the document's own ``models`` list.
    """

    name: str
    url: str
    directory: str
    node_id: str
    hash: str | None = None
    """The declared ``hash``, as written (None when absent or not a string)."""
    hash_type: str | None = None
    """The declared ``hash_type``, e.g. ``"SHA256"``."""


@dataclass(frozen=True)
class HfUrl:
    repo: str           # "OWNER/NAME" (or a legacy "NAME")
    revision: str       # branch, tag or commit, decoded
    path: str           # file path inside the repository, decoded
    repo_type: str      # "model" | "dataset" | "space"


def declared_models(ui: Mapping[str, Any]) -> list[DeclaredModel]:
    """Every model entry declared on any node (subgraph definitions included), in document
    order; the same file declared on two nodes appears twice. Malformed entries (not an
    object, or a name/url/directory that is not a string) are skipped."""
    found: list[DeclaredModel] = []
    if not isinstance(ui, Mapping):
        return found
    for node_id, entry in _entries(ui):
        if not isinstance(entry, Mapping):
            log.debug("node %s: skipping model entry %r (not an object)", node_id, entry)
            continue
        name, url, directory = entry.get("name"), entry.get("url"), entry.get("directory")
        if not (isinstance(name, str) and isinstance(url, str) and isinstance(directory, str)):
            log.debug("node %s: skipping model entry %r (name/url/directory not strings)",
                      node_id, entry)
            continue
        digest, kind = entry.get("hash"), entry.get("hash_type")
        found.append(DeclaredModel(name=name, url=url, directory=directory, node_id=node_id,
                                   hash=digest if isinstance(digest, str) else None,
                                   hash_type=kind if isinstance(kind, str) else None))
    return found


def _entries(ui: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    yield from _node_entries(ui.get("nodes"), "")
    definitions = ui.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    for sub in subgraphs if isinstance(subgraphs, list) else []:
        if isinstance(sub, Mapping):
            yield from _node_entries(sub.get("nodes"), f"{sub.get('id')}:")
    models = ui.get("models")
    for entry in models if isinstance(models, list) else []:
        yield "", entry


def _node_entries(nodes: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, Mapping):
            continue
        props = node.get("properties")
        models = props.get("models") if isinstance(props, Mapping) else None
        if not isinstance(models, list):
            continue
        node_id = prefix + _id_text(node.get("id"))
        for entry in models:
            yield node_id, entry


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def hf_resolve_parts(url: str) -> HfUrl | None:
    """``https://huggingface.co/[datasets/|spaces/]OWNER/REPO/resolve/REV/PATH[?...]`` →
    its parts (percent-encoding decoded), else None. ``/blob/`` (the file's web page) is
    read as the same file."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or (parts.hostname or "").lower() not in HF_HOSTS:
        return None
    segments = [s for s in parts.path.split("/") if s]
    repo_type = "model"
    if segments and segments[0] in _REPO_TYPES:
        repo_type = _REPO_TYPES[segments[0]]
        segments = segments[1:]
    for at in (2, 1):           # OWNER/NAME/resolve/... or legacy NAME/resolve/...
        if len(segments) > at + 2 and segments[at] in ("resolve", "blob"):
            repo = "/".join(unquote(s) for s in segments[:at])
            revision = unquote(segments[at + 1])
            path = "/".join(unquote(s) for s in segments[at + 2:])
            if not path or ".." in path.split("/"):
                return None
            return HfUrl(repo=repo, revision=revision, path=path, repo_type=repo_type)
    return None
