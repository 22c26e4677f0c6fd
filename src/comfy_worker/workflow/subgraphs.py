"""Subgraphs as the editor loads them (frontend 1.48.7) (pure).

- Before any subgraph is configured, node ids inside subgraph definitions that clash with
  a top-level node (or with a node of an earlier definition) are renumbered from the
  workflow's id counter, and the definitions are configured leaves first.
- A subgraph node's inputs are the subgraph's inputs; an input whose inner target is a
  widget is *promoted*: its value lives in the widget store under (subgraph node id,
  input name), starting from the inner widget's value, then the subgraph node's saved
  ``widgets_values`` in input order.
- Legacy ``properties.proxyWidgets`` (promotions saved by editors 1.3x) are migrated once
  the graph is configured: a widget already promoted takes the saved value, any other
  inner widget gets a new subgraph input linked to it, a PrimitiveNode inside the
  subgraph is replaced by a subgraph input, the rest is quarantined.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from comfy_worker.workflow.graph import (
    SUBGRAPH_INPUT_ID,
    UNASSIGNED_NODE_ID,
    Graph,
    InputSlot,
    Link,
    Node,
    OutputSlot,
    SubgraphIO,
    SubgraphNode,
    Widget,
    WidgetMarker,
    is_widget_value,
    node_id_of,
    resolve_link,
)
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    element_at,
    is_number,
    number_value,
    to_number,
    to_string,
    truthy,
)

MAX_NODE_ID = 100_000_000


# --- definitions --------------------------------------------------------------------------


def _numeric_serialized_id(value: Any) -> int | None:
    key = node_id_of(value)
    x = to_number(key)
    if math.isfinite(x) and x.is_integer() and to_string(int(x)) == key:
        return int(x)
    return None


def deduplicate_node_ids(sub_docs: list[dict[str, Any]], reserved: set[int], state: Any,
                         root_nodes: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """``deduplicateSubgraphNodeIds``: copies of the definitions (and of the top-level
    nodes, whose legacy ``proxyWidgets`` follow renumbered ids) where every inner node id
    is unique across the workflow."""
    subs = copy.deepcopy(sub_docs)
    roots = copy.deepcopy(root_nodes)
    used_ids = set(reserved)
    used_keys = {node_id_of(i) for i in reserved}
    sub_ids = {to_string(s.get("id")) for s in subs}
    remap_by_sub: dict[str, dict[str, Any]] = {}
    for sub in subs:
        remapped: dict[str, Any] = {}
        for node in sub.get("nodes") if isinstance(sub.get("nodes"), list) else []:
            if not isinstance(node, dict):
                continue
            key = node_id_of(node.get("id", UNDEFINED))
            numeric = _numeric_serialized_id(node.get("id", UNDEFINED))
            if key in used_keys:
                new = _next_free_id(used_ids, state)
                remapped[key] = new
                node["id"] = new
                used_ids.add(new)
                used_keys.add(node_id_of(new))
            else:
                used_keys.add(key)
                if numeric is not None:
                    used_ids.add(numeric)
                    if numeric > to_number(state.last_node_id):
                        state.last_node_id = numeric
        if not remapped:
            continue
        remap_by_sub[to_string(sub.get("id"))] = remapped
        for link in sub.get("links") if isinstance(sub.get("links"), list) else []:
            if not isinstance(link, dict):
                continue
            for end in ("origin_id", "target_id"):
                new = remapped.get(node_id_of(link.get(end, UNDEFINED)))
                if new is not None:
                    link[end] = new
        for widget in sub.get("widgets") if isinstance(sub.get("widgets"), list) else []:
            if isinstance(widget, dict):
                new = remapped.get(node_id_of(widget.get("id", UNDEFINED)))
                if new is not None:
                    widget["id"] = new
    for sub in subs:
        _patch_proxy_widgets(sub.get("nodes"), sub_ids, remap_by_sub)
    _patch_proxy_widgets(roots, sub_ids, remap_by_sub)
    return subs, roots


def _next_free_id(used: set[int], state: Any) -> int:
    while True:
        nxt = int(to_number(state.last_node_id)) + 1
        if nxt > MAX_NODE_ID:
            raise ValueError("node id space exhausted")
        state.last_node_id = nxt
        if nxt not in used:
            return nxt


def _patch_proxy_widgets(nodes: Any, sub_ids: set[str],
                         remap_by_sub: dict[str, dict[str, Any]]) -> None:
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict) or to_string(node.get("type")) not in sub_ids:
            continue
        remapped = remap_by_sub.get(to_string(node.get("type")))
        props = node.get("properties")
        proxies = props.get("proxyWidgets") if isinstance(props, dict) else None
        if not remapped or not isinstance(proxies, list):
            continue
        for entry in proxies:
            if isinstance(entry, list) and entry:
                new = remapped.get(node_id_of(entry[0]))
                if new is not None:
                    entry[0] = to_string(new)


def topological_order(sub_docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``topologicalSortSubgraphs``: definitions used by others first (original order on a
    cycle)."""
    ids = [to_string(s.get("id")) for s in sub_docs]
    by_id = {sid: s for sid, s in zip(ids, sub_docs, strict=True)}
    dependents: dict[str, list[str]] = {sid: [] for sid in ids}
    degree = {sid: 0 for sid in ids}
    for sid, sub in zip(ids, sub_docs, strict=True):
        for node in sub.get("nodes") if isinstance(sub.get("nodes"), list) else []:
            typ = to_string(node.get("type")) if isinstance(node, dict) else None
            if typ in dependents:
                if sid not in dependents[typ]:
                    dependents[typ].append(sid)
                degree[sid] = degree.get(sid, 0) + 1
    queue = [sid for sid in degree if degree[sid] == 0]
    out: list[dict[str, Any]] = []
    while queue:
        sid = queue.pop(0)
        out.append(by_id[sid])
        for dep in dependents.get(sid, []):
            degree[dep] -= 1
            if degree[dep] == 0:
                queue.append(dep)
    return out if len(out) == len(sub_docs) else sub_docs


def set_io(sub: Graph, sub_doc: Mapping[str, Any]) -> None:
    """``_configureSubgraph``: the subgraph's inputs and outputs (link ids that
    ``_removeDuplicateLinks`` dropped are re-pointed at the surviving link)."""
    def ios(key: str) -> list[SubgraphIO]:
        out = []
        for item in sub_doc.get(key) or []:
            if not isinstance(item, dict):
                continue
            ids = item.get("linkIds")
            out.append(SubgraphIO(item.get("name"), item.get("type"),
                                  list(ids) if isinstance(ids, list) else [],
                                  item.get("label"), item.get("id")))
        return out
    if isinstance(sub_doc.get("inputs"), list):
        sub.io_inputs = ios("inputs")
    if isinstance(sub_doc.get("outputs"), list):
        sub.io_outputs = ios("outputs")
    for ios_list, io_id in ((sub.io_inputs, SUBGRAPH_INPUT_ID), (sub.io_outputs, "-20")):
        for index, io in enumerate(ios_list):
            for i, link_id in enumerate(io.link_ids):
                if sub.link(link_id) is not None:
                    continue
                found = next((link for link in sub.links.values()
                              if (link.origin_id == io_id and link.origin_slot == index)
                              or (link.target_id == io_id and link.target_slot == index)),
                             None)
                if found is not None:
                    io.link_ids[i] = found.id


# --- subgraph nodes ---------------------------------------------------------------------


def io_slots(node: SubgraphNode) -> None:
    """``SubgraphNode.configure``'s first step: one input per subgraph input, one output
    per subgraph output, none linked."""
    sub = node.subgraph
    assert sub is not None
    node.inputs = [InputSlot(io.name, io.type, None, label=io.label, subgraph_slot=io)
                   for io in sub.io_inputs]
    node.outputs = [OutputSlot(io.name, io.type, None) for io in sub.io_outputs]


def after_slots(node: SubgraphNode) -> None:
    """``_internalConfigureAfterSlots``: saved inputs re-bound to the subgraph's inputs
    (by name and type, then by name), the unbound ones dropped, widgets promoted."""
    sub = node.subgraph
    assert sub is not None
    slots = list(sub.io_inputs)
    assigned: set[int] = set()

    def take(candidates: list[SubgraphIO]) -> SubgraphIO | None:
        return next((s for s in candidates if id(s) not in assigned), None)

    for slot in node.inputs:
        existing = slot.subgraph_slot
        if existing is not None and any(s is existing for s in slots):
            assigned.add(id(existing))
            continue
        signature = f"{to_string(slot.name)}:{to_string(slot.type)}"
        match = take([s for s in slots
                      if f"{to_string(s.name)}:{to_string(s.type)}" == signature]) \
            or take([s for s in slots if s.name == slot.name and isinstance(s.name, str)
                     and isinstance(slot.name, str)])
        if match is not None:
            slot.subgraph_slot = match
            assigned.add(id(match))
        else:
            slot.subgraph_slot = None
    node.inputs = [s for s in node.inputs if s.subgraph_slot is not None]
    for slot in node.inputs:
        assert slot.subgraph_slot is not None
        resolve_input_widget(node, slot.subgraph_slot, slot)


def _target_input(sub: Graph, link: Link) -> tuple[Node | None, InputSlot | None]:
    resolved = resolve_link(link, sub)
    target = resolved.input_node
    if target is None:
        return None, None
    slot = next((s for s in target.inputs if s.link is not None
                 and _same_link(s.link, link.id)), None)
    return target, slot


def _fed_inputs(sub: Graph, io: SubgraphIO) -> Iterator[tuple[Node, InputSlot]]:
    """The inner (node, input slot) pairs a subgraph input's links reach, in link order;
    links that no longer resolve are skipped (the editor's walk over ``io.linkIds``)."""
    for link_id in io.link_ids:
        link = sub.link(link_id)
        if link is None:
            continue
        target, target_slot = _target_input(sub, link)
        if target is not None and target_slot is not None:
            yield target, target_slot


def _same_link(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def resolve_input_widget(node: SubgraphNode, io: SubgraphIO, slot: InputSlot) -> None:
    """``_resolveInputWidget``: promote the widget of the first inner input the subgraph
    input feeds that has one (through nested subgraph nodes too)."""
    sub = node.subgraph
    assert sub is not None
    for target, target_slot in _fed_inputs(sub, io):
        widget = target.widget_from_slot(target_slot)
        if widget is None and isinstance(target, SubgraphNode):
            widget = _nested_source(target, target_slot)
        if widget is not None:
            set_widget(node, io, slot, widget, target_slot.widget)
            return


def _nested_source(host: SubgraphNode, slot: InputSlot) -> Widget | None:
    """The deepest concrete widget a nested subgraph node's promoted input stands for."""
    current: SubgraphNode = host
    name = slot.name
    for _ in range(100):
        sub = current.subgraph
        assert sub is not None
        io = next((s for s in sub.io_inputs if s.name == name), None)
        if io is None:
            return None
        found = next(_fed_inputs(sub, io), None)
        if found is None:
            return None
        target, target_slot = found
        if isinstance(target, SubgraphNode):
            current, name = target, target_slot.name
            continue
        widget = target.widget_from_slot(target_slot)
        return target.widget_named(widget.name) if widget is not None else None
    return None


def set_widget(node: SubgraphNode, io: SubgraphIO, slot: InputSlot, interior: Widget,
               marker: WidgetMarker | None) -> None:
    """``_setWidget``: the promoted widget of ``slot`` joins the store under (this node's
    id, the subgraph input's name), starting from the inner widget's value."""
    if slot.widget is None:
        slot.widget = WidgetMarker(io.name)
    slot.widget.name = io.name
    if marker is not None:
        slot.widget.proto = marker
    store = node.graph.root.widget_store
    key = store.key(node.id, io.name)
    slot.widget_id = key
    if key is not None:
        store.register(node.id, io.name, interior.type, interior.value,
                       list(interior.values) if interior.values is not None else None)


def apply_promoted_values(node: SubgraphNode, values: Any) -> None:
    """``_applyPromotedWidgetValues``: saved values, one per promoted input in order
    (``widgets_values?.[i]``: an object's key ``"i"`` counts too)."""
    store = node.graph.root.widget_store
    quarantined = _quarantine_values(node)
    index = 0
    for slot in node.inputs:
        if slot.widget_id is None:
            continue
        value = quarantined.get(slot.name, UNDEFINED)
        if value is UNDEFINED:
            value = _indexed(values, index)
        if value is not UNDEFINED:
            store.set_value(*slot.widget_id, value)
        index += 1


def _quarantine_values(node: Node) -> dict[Any, Any]:
    entries = node.properties.get("proxyWidgetErrorQuarantine")
    out: dict[Any, Any] = {}
    for entry in reversed(entries) if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        original = entry.get("originalEntry")
        value = entry.get("hostValue", UNDEFINED)
        if isinstance(original, list) and len(original) >= 2 and original[0] == "-1" \
                and value is not UNDEFINED and is_widget_value(value):
            out[original[1]] = value
    return out


# --- legacy proxyWidgets ------------------------------------------------------------------

_PREFIX = re.compile(r"^\s*(\d+)\s*:\s*(.+)$", re.DOTALL)


def _proxy_entries(value: Any) -> list[list[str]]:
    """``parseProxyWidgets``: ``[[node id, widget name(, disambiguator)], ...]`` (a JSON
    string is parsed; anything malformed gives nothing)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if not isinstance(value, list):
        return []
    for entry in value:
        if not (isinstance(entry, list) and len(entry) in (2, 3)
                and all(isinstance(x, str) for x in entry)):
            return []
    return value


def _promotion_source(host: SubgraphNode, io: SubgraphIO) -> tuple[str, Any] | None:
    """``resolvePromotionSource``: (inner node id, widget name) a subgraph input feeds."""
    sub = host.subgraph
    assert sub is not None
    for target, target_slot in _fed_inputs(sub, io):
        if isinstance(target, SubgraphNode):
            return target.id, target_slot.name
        widget = target.widget_from_slot(target_slot)
        if widget is None:
            continue
        return target.id, widget.name
    return None


def _host_input_for(host: SubgraphNode, node_id: str, widget_name: Any) -> InputSlot | None:
    for slot in host.inputs:
        source = _promotion_source(host, slot.subgraph_slot) if slot.subgraph_slot else None
        if source is not None and source[0] == node_id and source[1] == widget_name:
            return slot
    return None


def _concrete_widget(host: SubgraphNode, node_id: str, name: Any) -> Widget | None:
    """``resolveConcretePromotedWidget``: the widget a promotion entry points at."""
    current, current_id, current_name = host, node_id, name
    seen: set[tuple[int, str, str]] = set()
    for _ in range(100):
        key = (id(current), current_id, to_string(current_name))
        if key in seen:
            return None
        seen.add(key)
        sub = current.subgraph
        assert sub is not None
        source = sub.node_by_id(current_id)
        if source is None:
            return None
        if isinstance(source, SubgraphNode):
            target = _input_target(source, current_name)
            if target is None:
                return None
            current, (current_id, current_name) = source, target
            continue
        return source.widget_named(current_name)
    return None


def _input_target(host: SubgraphNode, input_name: Any) -> tuple[str, Any] | None:
    """``resolveSubgraphInputTarget``."""
    sub = host.subgraph
    assert sub is not None
    io = next((s for s in sub.io_inputs if s.name == input_name), None)
    if io is None:
        return None
    return _promotion_source(host, io)


def _indexed(values: Any, index: int) -> Any:
    """``values?.[index]``: an array or string holds it below its length, an object
    under the key ``"index"``; anything else gives undefined."""
    if isinstance(values, list | str):
        return values[index] if index < len(values) else UNDEFINED
    if isinstance(values, dict):
        return values.get(str(index), UNDEFINED)
    return UNDEFINED


def flush_proxy_widgets(host: SubgraphNode, values: Any) -> None:
    """``flushProxyWidgetMigration`` for one subgraph node."""
    entries = _proxy_entries(host.properties.get("proxyWidgets"))
    if not entries:
        return
    normalized = [_normalize(host, e) for e in entries]
    cohort = list(normalized)
    pending = []
    for index, (entry, norm) in enumerate(zip(entries, normalized, strict=True)):
        value = _indexed(values, index)       # pickHostValue
        hole = value is UNDEFINED or not is_widget_value(value)
        if hole:
            value = UNDEFINED
        pending.append({"entry": entry, "norm": norm, "value": value, "hole": hole,
                        "plan": _classify(host, norm, cohort)})
    quarantine: list[dict[str, Any]] = []
    primitives: dict[str, list[dict[str, Any]]] = {}
    for item in pending:
        plan = item["plan"]
        if plan[0] == "primitive":
            primitives.setdefault(plan[1], []).append(item)
        elif plan[0] == "linked":
            if not _repair_linked(host, item, plan[1]):
                quarantine.append(item)
        elif plan[0] == "create":
            if not _repair_create(host, item, plan[1]):
                quarantine.append(item)
        elif plan[0] == "quarantine":
            quarantine.append(item)
    for cohort_items in primitives.values():
        if not _repair_primitive(host, cohort_items):
            quarantine.extend(cohort_items)
    store = host.graph.root.widget_store
    for item in quarantine:
        entry = item["entry"]
        if entry[0] == "-1" and not item["hole"]:
            slot = next((s for s in host.inputs if s.name == entry[1]), None)
            if slot is not None and slot.widget_id is not None:
                store.set_value(*slot.widget_id, item["value"])
    host.properties.pop("proxyWidgets", None)


def _normalize(host: SubgraphNode, entry: list[str]) -> tuple[str, str, str | None]:
    node_id, name = entry[0], entry[1]
    extra = entry[2] if len(entry) > 2 else None
    if _concrete_widget(host, node_id, name) is not None:
        return node_id, name, extra
    deepest = None
    while True:
        match = _PREFIX.match(name)
        if not match:
            break
        deepest, name = match.group(1), match.group(2)
    return node_id, name, deepest if deepest is not None else extra


def _classify(host: SubgraphNode, norm: tuple[str, str, str | None],
              cohort: list[tuple[str, str, str | None]]) -> tuple[Any, ...]:
    node_id, name, extra = norm
    linked = _host_input_for(host, node_id, name)
    if linked is not None:
        return ("linked", linked.name)
    sub = host.subgraph
    assert sub is not None
    source = sub.node_by_id(node_id)
    if source is None:
        return ("quarantine",)
    if source.type == "PrimitiveNode":
        bypassed = source.properties.get("proxyBypassedToSubgraphInput")
        if isinstance(bypassed, str) and any(s.name == bypassed for s in host.inputs):
            return ("linked", bypassed)
        targets = _primitive_targets(sub, source, strict=False)
        duplicated = sum(1 for n in cohort if n[0] == node_id) >= 2
        if targets or duplicated:
            return ("primitive", source.id, name)
        return ("quarantine",)
    widget = _source_widget(source, name, extra)
    if widget is None:
        return ("quarantine",)
    if name.startswith("$$") or _is_preview_widget(widget):
        return ("preview",)
    return ("create", name)


def _is_preview_widget(widget: Widget) -> bool:
    if isinstance(widget.name, str) and widget.name.startswith("$$"):
        return True
    if widget.serialize and widget.api:
        return False
    return widget.type in ("textPreview", "load3D", "load3DAdvanced", "image-preview")


def _source_widget(source: Node, name: Any, extra: str | None) -> Widget | None:
    if isinstance(source, SubgraphNode):
        for slot in source.inputs:
            target = _input_target(source, slot.name)
            if extra is not None:
                ok = target is not None and target[1] == name and target[0] == extra
            else:
                ok = slot.name == name or (target is not None and target[1] == name)
            if ok:
                if slot.widget_id is not None:
                    return source.widget_named(slot.name)
                break
    return source.widget_named(name)


def _primitive_targets(sub: Graph, primitive: Node, *, strict: bool
                       ) -> list[tuple[str, Any]] | None:
    out = primitive.outputs[0] if primitive.outputs else None
    targets: list[tuple[str, Any]] = []
    for link_id in (out.links or []) if out is not None else []:
        link = sub.link(link_id)
        if link is None or link.target_id == UNASSIGNED_NODE_ID:
            if strict:
                return None
            continue
        targets.append((link.target_id, link.target_slot))
    return targets


def _apply_host_value(host: SubgraphNode, slot: InputSlot, item: dict[str, Any]) -> bool:
    if slot.widget_id is None or item["hole"]:
        return slot.widget_id is not None
    return host.graph.root.widget_store.set_value(*slot.widget_id, item["value"])


def _repair_linked(host: SubgraphNode, item: dict[str, Any], input_name: Any) -> bool:
    matches = [s for s in host.inputs if s.name == input_name]
    if len(matches) != 1:
        return False
    return _apply_host_value(host, matches[0], item)


def _unique_input_name(sub: Graph, base: str) -> str:
    names = [s.name for s in sub.io_inputs]
    name, i = base, 1
    while name in names:
        name = f"{base}_{i}"
        i += 1
    return name


def add_subgraph_input(sub: Graph, name: str, typ: Any) -> SubgraphIO:
    """``Subgraph.addInput``: every instance of the subgraph gets the new input."""
    io = SubgraphIO(name, typ, [])
    sub.io_inputs.append(io)
    for instance in _instances(sub):
        instance.inputs.append(InputSlot(name, typ, None, subgraph_slot=io))
    return io


def remove_subgraph_input(sub: Graph, io: SubgraphIO) -> None:
    for link_id in list(io.link_ids):
        link = sub.link(link_id)
        if link is not None:
            target = sub.node_by_id(link.target_id)
            slot = next((s for s in target.inputs if s.link is not None
                         and _same_link(s.link, link.id)), None) if target else None
            if slot is not None:
                slot.link = None
            sub.remove_link(link.id)
    index = sub.io_inputs.index(io)
    sub.io_inputs.remove(io)
    for instance in _instances(sub):
        instance.inputs = [s for s in instance.inputs if s.subgraph_slot is not io]
    del index


def connect_subgraph_input(sub: Graph, io: SubgraphIO, node: Node, slot: InputSlot
                           ) -> Link | None:
    """``SubgraphInput.connect``: instances promote the target's widget first, then the
    link is made."""
    if slot.link is not None and slot.link is not UNDEFINED:
        old = sub.link(slot.link)
        slot.link = None
        if old is not None:
            sub.remove_link(old.id)
    widget = node.widget_from_slot(slot)
    if widget is not None:
        for instance in _instances(sub):
            host_slot = next((s for s in instance.inputs if s.subgraph_slot is io), None)
            if host_slot is not None:
                set_widget(instance, io, host_slot, widget, slot.widget)
    state = sub.state
    state.last_link_id = number_value(to_number(state.last_link_id) + 1)
    link_id = state.last_link_id
    link = Link(link_id, slot.type, SUBGRAPH_INPUT_ID, sub.io_inputs.index(io), node.id,
                node.inputs.index(slot))
    sub.links[link.id] = link
    io.link_ids.append(link.id)
    slot.link = link.id
    return link


def _instances(sub: Graph) -> list[SubgraphNode]:
    root = sub.root
    found: list[SubgraphNode] = []
    graphs = [root, *root.subgraphs.values()]
    for graph in graphs:
        found.extend(n for n in graph.nodes if isinstance(n, SubgraphNode) and n.subgraph is sub)
    return found


def _repair_create(host: SubgraphNode, item: dict[str, Any], widget_name: Any) -> bool:
    sub = host.subgraph
    assert sub is not None
    node_id, _, extra = item["norm"]
    source = sub.node_by_id(node_id)
    if source is None:
        return False
    widget = _source_widget(source, widget_name, extra)
    if widget is None:
        return False
    slot = _slot_from_widget(source, widget)
    if slot is None:
        return False
    typ = to_string(slot.type if truthy(slot.type) else (widget.type or "*"))
    io = add_subgraph_input(sub, _unique_input_name(sub, to_string(widget_name)), typ)
    if slot.label is not None:
        io.label = slot.label
    if connect_subgraph_input(sub, io, source, slot) is None:
        remove_subgraph_input(sub, io)
        return False
    host_slot = next((s for s in host.inputs if s.name == io.name), None)
    if host_slot is not None:
        _apply_host_value(host, host_slot, item)
    return True


def _slot_from_widget(node: Node, widget: Widget) -> InputSlot | None:
    """``getSlotFromWidget``."""
    if isinstance(node, SubgraphNode):
        for slot in node.inputs:
            if slot.widget_id is not None and slot.name == widget.name:
                return slot
    for slot in node.inputs:
        if slot.widget is not None and slot.widget.name == widget.name:
            return slot
    return None


def _repair_primitive(host: SubgraphNode, items: list[dict[str, Any]]) -> bool:
    sub = host.subgraph
    assert sub is not None
    first = items[0]["plan"]
    if any(i["plan"][0] != "primitive" or i["plan"][1] != first[1] or i["plan"][2] != first[2]
           for i in items):
        return False
    unique: list[dict[str, Any]] = []
    for item in items:
        if not any(u["norm"] == item["norm"] for u in unique):
            unique.append(item)
    primitive = sub.node_by_id(first[1])
    if primitive is None or primitive.type != "PrimitiveNode":
        return False
    targets = _primitive_targets(sub, primitive, strict=True)
    if not targets:
        return False
    out = primitive.outputs[0] if primitive.outputs else None
    if out is None:
        return False
    out_type = to_string(out.type if truthy(out.type) else "*")
    for target_id, target_slot in targets:
        target = sub.node_by_id(target_id)
        if target is None:
            return False
        slot = element_at(target.inputs, target_slot, wrap=False)
        if slot is None:
            return False
        typ = to_string(slot.type if truthy(slot.type) else "*")
        if typ != out_type and typ != "*" and out_type != "*":
            return False
    title = primitive.title
    base = title if truthy(title) and title != "PrimitiveNode" else first[2]
    io = add_subgraph_input(sub, _unique_input_name(sub, to_string(base)), out_type)
    for target_id, target_slot in targets:
        target = sub.node_by_id(target_id)
        assert target is not None
        sub.disconnect_input(target, target_slot)
    for target_id, target_slot in targets:
        target = sub.node_by_id(target_id)
        slot = element_at(target.inputs, target_slot, wrap=False) if target else None
        if target is None or slot is None:
            return False
        connect_subgraph_input(sub, io, target, slot)
    host_slot = next((s for s in host.inputs if s.name == io.name), None)
    if host_slot is not None:
        value_item = next((u for u in unique if not u["hole"]), None)
        if value_item is not None:
            _apply_host_value(host, host_slot, value_item)
        else:
            source = primitive.widget_named(first[2])
            value = source.value if source is not None else UNDEFINED
            if value is not UNDEFINED:
                _apply_host_value(host, host_slot, {**unique[0], "value": value,
                                                    "hole": False})
    primitive.properties["proxyBypassedToSubgraphInput"] = io.name
    return True
