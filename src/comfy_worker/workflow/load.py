"""Any workflow a user sends → the API prompt ComfyUI runs (pure).

Accepted: the API format (``{"id": {"class_type", "inputs"}}``), the editor's UI format
(``{"nodes", "links", ...}``, converted as the editor would), or either as a JSON string.
UI format needs the node definitions (``/object_info``); pass them, or a callable that
fetches them only when a conversion is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from comfy_worker.errors import JobInputInvalid, WorkflowConversionError
from comfy_worker.jsontypes import loads
from comfy_worker.workflow.convert import is_ui_workflow, ui_to_api
from comfy_worker.workflow.jsvalue import json_type

ObjectInfo = Mapping[str, Any]
ObjectInfoSource = ObjectInfo | Callable[[], ObjectInfo] | None


def parse_workflow_json(raw: object, *, field: str = "workflow") -> object:
    """``raw`` itself, or the document a JSON string holds."""
    if not isinstance(raw, str):
        return raw
    try:
        return loads(raw)
    except ValueError as exc:
        raise JobInputInvalid(f'field "{field}" is a string but not valid JSON: {exc}',
                              hint="send the workflow as a JSON object, or a string "
                              "holding one") from None


def api_prompt_from(raw: object, object_info: ObjectInfoSource = None, *,
                    field: str = "workflow") -> dict[str, dict[str, Any]]:
    """The API prompt for ``raw`` (API or UI format, object or JSON string).

    ``object_info`` is the backend's ``/object_info`` (or a callable returning it, called
    only for UI format). Raises :class:`~comfy_worker.errors.JobInputInvalid` for a
    malformed document and :class:`~comfy_worker.errors.WorkflowConversionError` when a UI
    workflow cannot be converted (or no node definitions were given).
    """
    doc = parse_workflow_json(raw, field=field)
    if doc is None:
        raise JobInputInvalid(f'field "{field}" is missing',
                              hint=f'send {{"{field}": {{...}}}} (API or UI format)')
    if not isinstance(doc, Mapping):
        raise JobInputInvalid(f'field "{field}" is {json_type(doc)}, expected an object',
                              hint="send the workflow JSON (API format, or the editor's "
                              "Save format)")
    if is_ui_workflow(doc):
        info = object_info() if callable(object_info) else object_info
        if info is None:
            raise WorkflowConversionError(
                f'field "{field}" is in the editor\'s UI format and converting it needs the '
                "node definitions (/object_info), which were not given",
                hint="pass --object-info (a JSON file or a running ComfyUI's /object_info "
                "URL), or export the workflow with Export (API) in the editor")
        return ui_to_api(doc, info)
    return validate_api_prompt(doc, field=field)


def validate_api_prompt(doc: Mapping[str, Any], *, field: str = "workflow"
                        ) -> dict[str, dict[str, Any]]:
    """Check an API-format prompt's shape: a non-empty object of nodes, each an object
    with a string ``class_type`` and an object ``inputs`` (missing ``inputs`` is allowed,
    as ComfyUI allows it). Returns it as a plain dict."""
    if not doc:
        raise JobInputInvalid(f'field "{field}" is an empty object',
                              hint="send at least one node")
    out: dict[str, dict[str, Any]] = {}
    for node_id, node in doc.items():
        where = f'{field}["{node_id}"]'
        if not isinstance(node, Mapping):
            raise JobInputInvalid(
                f"{where} is {json_type(node)}, expected an object",
                hint='each node is {"class_type": "...", "inputs": {...}} (API format)')
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            if "class_type" not in node:
                shown = "missing"
            elif class_type is None or class_type == "":
                shown = "null" if class_type is None else "an empty string"
            else:
                shown = f"{json_type(class_type)} {json.dumps(class_type)[:60]}"
            raise JobInputInvalid(
                f'{where}: field "class_type" is {shown}, expected a string',
                hint='each node is {"class_type": "...", "inputs": {...}} (API format)')
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise JobInputInvalid(
                f'{where}: field "inputs" is {json_type(inputs)}, expected an object',
                hint='inputs map names to values or links: {"seed": 5, "model": ["4", 0]}')
        out[str(node_id)] = dict(node)
    return out
