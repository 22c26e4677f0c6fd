"""The editor's link repair on load (``fixBadLinks``), as it actually behaves (pure).

Old editors sometimes saved links that the two ends disagree about. On load the editor
checks the document against its schema and, when it passes, runs ``fixBadLinks`` on the
top-level graph. Only repairs to an origin's ``outputs[].links`` are written back: a repair
an input would need trips the editor's own consistency check, which throws, and the
document is then used unchanged. Links that neither end refers to are dropped.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from comfy_worker.workflow.graph import link_from
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    element_at,
    is_number,
    loose_equals,
    property_key,
)


def _js_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if value is UNDEFINED:
        return "undefined"
    return "object"


def _strict_eq(a: Any, b: Any) -> bool:
    """``a === b`` for JSON values."""
    if _js_type(a) != _js_type(b):
        return False
    if _js_type(a) == "object":
        return a is b
    return bool(a == b)


def _looks_valid(doc: Mapping[str, Any]) -> bool:
    """A rough stand-in for the editor's zod schema check: links are only repaired
    (``fixBadLinks``) when the document passes it."""
    def is_vec2(v: Any) -> bool:
        if isinstance(v, list):
            return len(v) == 2 and all(is_number(x) for x in v)
        return isinstance(v, dict) and is_number(v.get("0")) and is_number(v.get("1"))

    def is_id(v: Any) -> bool:
        return isinstance(v, str) or (is_number(v) and float(v).is_integer())

    def is_slot(v: Any) -> bool:
        return (is_number(v) and float(v).is_integer()) or (
            isinstance(v, str) and re.match(r"^\s*[+-]?\d", v) is not None)

    def is_type(v: Any) -> bool:
        return isinstance(v, str) or is_number(v) or (
            isinstance(v, list) and all(isinstance(x, str) for x in v))

    version = doc.get("version")
    if not is_number(version):
        return False
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        return False
    for n in nodes:
        if not isinstance(n, dict) or not is_id(n.get("id")) or not isinstance(n.get("type"), str):
            return False
        if not (is_vec2(n.get("pos")) and is_vec2(n.get("size"))
                and isinstance(n.get("flags"), dict) and is_number(n.get("order"))
                and is_number(n.get("mode")) and isinstance(n.get("properties"), dict)):
            return False
        for key in ("inputs", "outputs"):
            slots = n.get(key)
            if slots is None:
                continue
            if not isinstance(slots, list):
                return False
            for slot in slots:
                if not isinstance(slot, dict) or not isinstance(slot.get("name"), str) \
                        or not is_type(slot.get("type")):
                    return False
                link = slot.get("link")
                if key == "inputs" and link is not None and not is_number(link):
                    return False
                links = slot.get("links")
                if key == "outputs" and links is not None and not (
                        isinstance(links, list) and all(is_number(x) for x in links)):
                    return False
        values = n.get("widgets_values")
        if values is not None and not isinstance(values, list | dict):
            return False
        models = n["properties"].get("models")
        if models is not None:
            if not isinstance(models, list):
                return False
            for m in models:
                if not isinstance(m, dict) or not isinstance(m.get("name"), str) \
                        or not isinstance(m.get("directory"), str) \
                        or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", str(m.get("url"))):
                    return False
    links = doc.get("links")
    if version == 1:
        state = doc.get("state")
        if not isinstance(state, dict) or not all(
                is_number(state.get(k)) for k in ("lastGroupId", "lastNodeId", "lastLinkId",
                                                   "lastRerouteId")):
            return False
        if links is None:
            return True
        if not isinstance(links, list):
            return False
        return all(isinstance(x, dict) and is_number(x.get("id")) and is_id(x.get("origin_id"))
                   and is_slot(x.get("origin_slot")) and is_id(x.get("target_id"))
                   and is_slot(x.get("target_slot")) and is_type(x.get("type"))
                   for x in links)
    if not is_id(doc.get("last_node_id")) or not is_number(doc.get("last_link_id")):
        return False
    if not isinstance(links, list):
        return False
    return all(isinstance(x, list) and len(x) == 6 and is_number(x[0]) and is_id(x[1])
               and is_slot(x[2]) and is_id(x[3]) and is_slot(x[4]) and is_type(x[5])
               for x in links)


class _PatchMismatch(Exception):
    pass


def fix_bad_links(doc: dict[str, Any]) -> dict[str, Any]:
    """The editor's ``fixBadLinks`` on the top-level graph, as it behaves when loading.

    Only patches to an origin's ``outputs[].links`` are written back; a patch an input
    would need makes the editor's own consistency check throw, and then it keeps the
    document as it was. Links neither end refers to are dropped.
    """
    if not _looks_valid(doc):
        return doc
    work = copy.deepcopy(doc)
    try:
        _fix_bad_links(work)
    except _PatchMismatch:
        return doc
    return work


def _fix_bad_links(doc: dict[str, Any]) -> None:
    nodes = [n for n in doc.get("nodes") or [] if isinstance(n, dict)]
    patches: dict[str, dict[str, Any]] = {}
    deleted: list[Any] = []

    def node_by_id(node_id: Any) -> dict[str, Any] | None:
        return next((n for n in nodes if loose_equals(n.get("id"), node_id)), None)

    def slot(node: Mapping[str, Any], key: str, index: Any) -> Any:
        items = node.get(key)
        if not isinstance(items, list):
            return None
        return element_at(items, index, wrap=False)

    def patch(node: dict[str, Any], is_output: bool, index: Any, link_id: Any,
              op: str) -> bool:
        entry = patches.setdefault(property_key(node.get("id")), {})
        key = property_key(index)
        if not is_output:
            ins = entry.setdefault("inputs", {})
            if key in ins:
                return False
            ins[key] = None if op == "REMOVE" else link_id
        else:
            outs = entry.setdefault("outputs", {})
            if key not in outs:
                current = slot(node, "outputs", index)
                links = current.get("links") if isinstance(current, dict) else None
                outs[key] = {"links": list(links or []), "changes": {}}
            rec = outs[key]
            change_key = property_key(link_id)
            if change_key in rec["changes"]:
                return False
            rec["changes"][change_key] = op
            if op == "ADD":
                if any(_strict_eq(x, link_id) for x in rec["links"]):
                    return False
                rec["links"].append(link_id)
                outputs = node.setdefault("outputs", [])
                if not isinstance(outputs, list):
                    return True
                i = _slot_index_of(index)
                if i > len(outputs) + 64:       # a sparse slot no link resolution reaches
                    return True
                while len(outputs) <= i:
                    outputs.append({})
                if not isinstance(outputs[i], dict):
                    outputs[i] = {}
                if not isinstance(outputs[i].get("links"), list):
                    outputs[i]["links"] = []
                outputs[i]["links"].append(link_id)
            else:
                pos = next((k for k, x in enumerate(rec["links"]) if _strict_eq(x, link_id)),
                           -1)
                if pos == -1:
                    return False
                del rec["links"][pos]
                current = slot(node, "outputs", index)
                if isinstance(current, dict) and isinstance(current.get("links"), list) \
                        and pos < len(current["links"]):
                    del current["links"][pos]
        return True

    def has_link(node: Mapping[str, Any], is_output: bool, index: Any, link_id: Any) -> bool:
        entry = patches.get(property_key(node.get("id")), {})
        key = property_key(index)
        if not is_output:
            current = slot(node, "inputs", index)
            actual = isinstance(current, dict) and _strict_eq(current.get("link"), link_id)
            if "inputs" in entry:
                patched = _strict_eq(entry["inputs"].get(key, UNDEFINED), link_id)
                if actual != patched:
                    raise _PatchMismatch
                return patched
            return actual
        current = slot(node, "outputs", index)
        links = current.get("links") if isinstance(current, dict) else None
        actual = isinstance(links, list) and any(_strict_eq(x, link_id) for x in links)
        rec = entry.get("outputs", {}).get(key)
        if rec is not None and rec["changes"].get(property_key(link_id)):
            patched = any(_strict_eq(x, link_id) for x in rec["links"])
            if actual != patched:
                raise _PatchMismatch
            return patched
        return actual

    def has_any_link(node: Mapping[str, Any], index: Any) -> bool:
        entry = patches.get(property_key(node.get("id")), {})
        current = slot(node, "inputs", index)
        actual = isinstance(current, dict) and current.get("link") is not None
        if "inputs" in entry:
            patched = entry["inputs"].get(property_key(index)) is not None
            if actual != patched:
                raise _PatchMismatch
            return patched
        return actual

    raw_links = doc.get("links") or []
    links = [link_from(x) for x in raw_links]
    for link in reversed(links):
        if link is None:
            continue
        origin = node_by_id(link.origin_id)
        target = node_by_id(link.target_id)
        if origin is None or target is None:
            if origin is not None and has_link(origin, True, link.origin_slot, link.id):
                patch(origin, True, link.origin_slot, link.id, "REMOVE")
            elif origin is None and target is not None \
                    and has_link(target, False, link.target_slot, link.id):
                patch(target, False, link.target_slot, link.id, "REMOVE")
            continue
        target_has = has_link(target, False, link.target_slot, link.id)
        origin_has = has_link(origin, True, link.origin_slot, link.id)
        if target_has or origin_has:
            if not origin_has:
                patch(origin, True, link.origin_slot, link.id, "ADD")
            elif not target_has and (
                    has_any_link(target, link.target_slot)
                    or not patch(target, False, link.target_slot, link.id, "ADD")):
                patch(origin, True, link.origin_slot, link.id, "REMOVE")
    for link in reversed(links):
        if link is None:
            continue
        origin = node_by_id(link.origin_id)
        target = node_by_id(link.target_id)
        if (origin is None or not has_link(origin, True, link.origin_slot, link.id)) and (
                target is None or not has_link(target, False, link.target_slot, link.id)):
            deleted.append(link.id)
    for link_id in reversed(deleted):
        pos = next((k for k, x in enumerate(raw_links)
                    if (isinstance(x, list) and x and _strict_eq(x[0], link_id))
                    or (isinstance(x, dict) and _strict_eq(x.get("id"), link_id))), -1)
        if pos != -1:
            del raw_links[pos]
    if isinstance(doc.get("links"), list):
        doc["links"] = [x for x in raw_links if x]


def _slot_index_of(index: Any) -> int:
    try:
        return max(0, int(index))
    except (TypeError, ValueError, OverflowError):
        return 0
