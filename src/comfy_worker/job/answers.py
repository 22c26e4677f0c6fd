"""ComfyUI's answers about a prompt → the errors a job reports (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy_worker.comfy import events as ev
from comfy_worker.comfy.client import PromptResponse
from comfy_worker.errors import WorkflowExecutionError, WorkflowInvalid


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _node_error_details(body: Mapping[str, Any], workflow: Mapping[str, Any]
                        ) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    for node_id, entry in _dict(body.get("node_errors")).items():
        entry = _dict(entry)
        class_type = entry.get("class_type") or _dict(workflow.get(node_id)).get("class_type")
        for err in entry.get("errors") or []:
            err = _dict(err)
            details.append({
                "node_id": str(node_id), "class_type": class_type,
                "type": err.get("type"), "message": err.get("message"),
                "details": err.get("details"),
                "input_name": _dict(err.get("extra_info")).get("input_name"),
            })
    return details


def validation_error(resp: PromptResponse, workflow: Mapping[str, Any]) -> WorkflowInvalid:
    """``POST /prompt`` rejected the workflow: one detail per node error."""
    body = _dict(resp.body)
    error = _dict(body.get("error"))
    details = _node_error_details(body, workflow)
    if not details:
        text = body if isinstance(resp.body, dict) else str(resp.body)[:500]
        details.append({"node_id": None, "class_type": None,
                        "type": error.get("type") if error else None,
                        "message": error.get("message") if error else str(text),
                        "details": error.get("details") if error else None})
    summary = "; ".join(
        (f"node {d['node_id']} ({d['class_type']}): " if d["node_id"] else "")
        + f"{d['message']}" + (f": {d['details']}" if d.get("details") else "")
        for d in details[:5]
    )
    return WorkflowInvalid(
        f"ComfyUI rejected the workflow (HTTP {resp.status}): "
        f"{summary or error.get('message')}",
        hint="fix the named node inputs; ComfyUI's own message is in details",
        details=details,
    )


def execution_error(event: ev.ExecutionError) -> WorkflowExecutionError:
    detail = {
        "node_id": event.node_id, "class_type": event.node_type,
        "type": event.exception_type, "message": event.exception_message,
        "traceback": list(event.traceback[-6:]),
    }
    return WorkflowExecutionError(
        f"node {event.node_id} ({event.node_type}) failed: {event.exception_type}: "
        f"{event.exception_message}",
        details=[detail],
    )
