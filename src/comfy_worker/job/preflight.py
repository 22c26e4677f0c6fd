"""Before a prompt is queued: what the workflow needs that this worker lacks (pure).

Every unknown node type and every model a loader names that is neither locked nor
present is reported at once, so a user fixes them in one go instead of one per attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from comfy_worker.errors import WorkflowInvalid
from comfy_worker.lockfile import MODEL_EXTENSIONS
from comfy_worker.sync.folder_markers import loader_folders, without_markers

JOB_MARKER_INPUT = "comfy_worker_job"


@dataclass(frozen=True)
class Problem:
    """One thing that stops a workflow from running here."""

    node_id: str
    class_type: str
    kind: str
    """``missing_node`` or ``missing_model``."""
    message: str
    input_name: str | None = None
    value: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.node_id, "class_type": self.class_type,
                               "type": self.kind, "message": self.message}
        if self.input_name is not None:
            out["input_name"] = self.input_name
            out["value"] = self.value
        return out


def combo_options(spec: object) -> list[str] | None:
    """The options of a COMBO input spec from ``/object_info``, else ``None``.

    Two spellings: ``[[opt, ...], {...}]`` (classic nodes) and
    ``["COMBO", {"options": [...]}]`` (v3 nodes).
    """
    if not isinstance(spec, list) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list):
        return [str(o) for o in head]
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return [str(o) for o in options] if isinstance(options, list) else []
    return None


def looks_like_model_file(value: object) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)


@dataclass(frozen=True)
class Available:
    """Models a job may use that ComfyUI may not list yet (locked, or brought by the job),
    by models folder."""

    by_folder: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, paths: Iterable[str]) -> Available:
        """From model paths (``folder/sub/x.safetensors``)."""
        by_folder: dict[str, set[str]] = {}
        for p in paths:
            if "/" in p:
                folder, name = p.split("/", 1)
                by_folder.setdefault(folder, set()).add(name)
        return cls({f: frozenset(n) for f, n in by_folder.items()})

    def has(self, name: str, folders: frozenset[str]) -> bool:
        """``name`` is available in one of ``folders`` (any folder when none is known)."""
        pool = folders or self.by_folder.keys()
        return any(name in self.by_folder.get(f, ()) for f in pool)

    def __or__(self, other: Available) -> Available:
        folders = set(self.by_folder) | set(other.by_folder)
        return Available({f: self.by_folder.get(f, frozenset())
                          | other.by_folder.get(f, frozenset()) for f in folders})


def node_input_specs(info: Mapping[str, Any]) -> dict[str, Any]:
    """A node definition's required and optional input specs, by input name."""
    spec: dict[str, Any] = {}
    inputs = info.get("input") or {}
    for group in ("required", "optional"):
        part = inputs.get(group)
        if isinstance(part, dict):
            spec.update(part)
    return spec


def model_problem(node_id: str, class_type: str, input_name: str, value: object,
                  options: list[str], available: Available) -> Problem | None:
    """A problem when ``value`` of a COMBO input names a model that is neither present
    (in ComfyUI's options) nor available. A loader input is one whose options carry
    folder markers (then any value counts, even one without a model extension); without
    markers, a value that looks like a model file."""
    folders = loader_folders(options)
    if not folders and not looks_like_model_file(value):
        return None
    name = str(value).replace("\\", "/")
    present = without_markers(options)
    if value in present or name in present or available.has(name, folders):
        return None
    where = f" in {', '.join(sorted(folders))}" if folders else ""
    return Problem(node_id, class_type, "missing_model",
                   f'model "{value}" (input "{input_name}") is not in the lock and not '
                   f"present{where}", input_name=input_name, value=str(value))


def find_preflight_problems(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    available_models: Available,
) -> list[Problem]:
    """Every unknown ``class_type`` and every model a loader names that is neither locked
    nor present, all at once (see :func:`model_problem`)."""
    problems: list[Problem] = []
    for node_id, node in workflow.items():
        class_type = str(node.get("class_type"))
        info = object_info.get(class_type)
        if info is None:
            problems.append(Problem(str(node_id), class_type, "missing_node",
                                    f'node type "{class_type}" is not installed in this '
                                    "ComfyUI"))
            continue
        specs = node_input_specs(info)
        for input_name, value in (node.get("inputs") or {}).items():
            options = combo_options(specs.get(input_name))
            if options is None or isinstance(value, list):  # not a COMBO, or a link
                continue
            problem = model_problem(str(node_id), class_type, input_name, value, options,
                                    available_models)
            if problem is not None:
                problems.append(problem)
    return problems


def preflight_error(problems: list[Problem]) -> WorkflowInvalid:
    nodes = sorted({p.class_type for p in problems if p.kind == "missing_node"})
    models = sorted({str(p.value) for p in problems if p.kind == "missing_model"})
    parts = []
    if models:
        parts.append(f"{len(models)} missing model(s): {', '.join(models)}")
    if nodes:
        parts.append(f"{len(nodes)} unknown node type(s): {', '.join(nodes)}")
    hints = []
    if models:
        hints.append("add the models to models.lock.json (`comfy-worker lock add`)")
    if nodes:
        hints.append("install the custom nodes that provide the node types in the image")
    return WorkflowInvalid("workflow cannot run: " + "; ".join(parts),
                           hint=" and ".join(hints), details=[p.to_json() for p in problems])


def mark_output_nodes(workflow: Mapping[str, Any], object_info: Mapping[str, Any],
                      marker: str) -> dict[str, Any]:
    """A copy of ``workflow`` whose output nodes carry an extra ``comfy_worker_job`` input.

    ComfyUI caches node results between prompts; an unchanged SaveImage would be served
    from the cache, pointing at the previous job's files (which cleanup removed). The
    extra input changes only the output nodes' cache keys, so they run (and write fresh
    files) while everything upstream is still cached. ComfyUI ignores inputs a node does
    not declare.
    """
    marked: dict[str, Any] = dict(workflow)
    for node_id, node in workflow.items():
        info = object_info.get(node.get("class_type"))
        if isinstance(info, dict) and info.get("output_node"):
            marked[node_id] = {**node, "inputs": {**(node.get("inputs") or {}),
                                                  JOB_MARKER_INPUT: marker}}
    return marked
