"""A UI-format workflow loaded the way the editor loads it (pure, in memory).

This mirrors what ``app.loadGraphData`` of frontend 1.48.7 leaves behind before
``graphToPrompt`` runs, with the editor's default settings (workflow validation, and with
it the old link repair ``fixBadLinks``, is off by default since 1.4x): node types nobody
registered sanitized, subgraph definitions renumbered and configured leaves first
(:mod:`comfy_worker.workflow.subgraphs`), every node built from its ``/object_info``
definition (:mod:`comfy_worker.workflow.widgets`) and configured from its saved data
(saved inputs merged by name, widget values assigned slot by slot, which may rebuild
dynamic inputs on the way), legacy promotions migrated, links re-pointed at the right
input index, primitives and reroutes set up (:mod:`comfy_worker.workflow.virtual_nodes`)
and the editor's load-time fixes applied. The graph it builds is made of
:mod:`comfy_worker.workflow.graph`'s classes.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from comfy_worker.errors import WorkflowConversionError
from comfy_worker.workflow.graph import (
    UNASSIGNED_NODE_ID,
    Graph,
    InputSlot,
    Node,
    OutputSlot,
    SubgraphNode,
    WidgetMarker,
    link_from,
    node_id_of,
)
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    is_number,
    number_value,
    to_number,
    to_string,
    truthy,
)
from comfy_worker.workflow.nodedefs import NodeDef, build_node_def, spec_parts
from comfy_worker.workflow.subgraphs import (
    after_slots,
    apply_promoted_values,
    deduplicate_node_ids,
    flush_proxy_widgets,
    io_slots,
    set_io,
    topological_order,
)
from comfy_worker.workflow.virtual_nodes import (
    primitive_after_configure,
    reroute_connections_changed,
)
from comfy_worker.workflow.widgets import (
    InvalidConnection,
    NodeBuildError,
    build_comfy_node,
    connections_changed,
    markdown_widget,
    match_type_connection_changed,
    string_widget,
)

log = logging.getLogger(__name__)

_ENTITY = re.compile(r"[&<>\"'`=]")


class Loader:
    """Builds the in-memory graph of a UI-format document against ``/object_info``."""

    def __init__(self, object_info: Mapping[str, Any], now: datetime) -> None:
        self.object_info = object_info
        self.now = now
        self.root = Graph(None)
        self.root.now = now
        self._defs: dict[str, NodeDef] = {}
        self.original_types: dict[str, str] = {}
        """Sanitized type name → the name the workflow has (for error messages)."""

    def definition(self, type_name: str) -> NodeDef | None:
        if type_name in self._defs:
            return self._defs[type_name]
        info = self.object_info.get(type_name)
        if not isinstance(info, Mapping):
            return None
        try:
            made = build_node_def(type_name, info)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise WorkflowConversionError(
                f'the /object_info entry of node type "{type_name}" is malformed: {exc}',
                hint="pass the /object_info of the ComfyUI that will run the workflow") from None
        self._defs[type_name] = made
        return made

    def create_node(self, graph: Graph, type_name: Any, title: Any = UNDEFINED
                    ) -> Node | None:
        """``LiteGraph.createNode``: None for a type nobody registered (or whose
        constructor throws)."""
        name = to_string(type_name)
        root = graph.root
        if name in root.subgraphs:
            node: Node = SubgraphNode(root, root.subgraphs[name])
            node.graph = root
            configure_node(node, {"id": -1, "type": name, "inputs": [], "outputs": [],
                                  "mode": 0}, self)
            node.title = title if truthy(title) else node.subgraph.name  # type: ignore[union-attr]
            return node
        definition = self.definition(name)
        if definition is not None:
            node = Node(graph, name, "comfy", definition)
            node.graph = graph
            try:
                build_comfy_node(node, definition)
            except NodeBuildError as exc:
                log.debug("node type %s cannot be built: %s", name, exc)
                return None
            if truthy(title):
                node.title = title
            return node
        if name == "PrimitiveNode":
            node = Node(graph, name, "primitive")
            node.title = title if truthy(title) else "Primitive"
            node.outputs.append(OutputSlot("connect to widget input", "*", None))
            node.properties["Run widget replace on values"] = False
            return node
        if name == "Reroute":
            node = Node(graph, name, "reroute")
            node.title = title if truthy(title) else "Reroute"
            node.properties.update({"showOutputText": False, "horizontal": False})
            node.inputs.append(InputSlot("", "*", None))
            node.outputs.append(OutputSlot("", "*", None))
            return node
        if name in ("Note", "MarkdownNote"):
            node = Node(graph, name, "note")
            default = "Note" if name == "Note" else "Markdown Note"
            node.title = title if truthy(title) else default
            node.widgets = []
            spec = {"name": "text", "type": "STRING", "default": UNDEFINED, "multiline": True}
            (string_widget if name == "Note" else markdown_widget)(node, "text", spec)
            return node
        return None

    # documents

    def load(self, doc: dict[str, Any]) -> Graph:
        self._sanitize_missing_types(doc)
        root = self.root
        self._configure_graph(root, doc)
        # the app's after-configure handler (root graph only)
        _fix_link_input_slots(root, 0)
        for node in list(root.iter_all()):
            if node.kind == "comfy":
                self._on_graph_configured(node)
        for node in list(root.iter_all()):
            if node.kind == "primitive":
                primitive_after_configure(node)
        # app.loadGraphData: fixes on every node, then what runs on the next frames: the
        # match-type inputs asked for theirs when they were added, the reroutes once the
        # graph was configured; a callback that throws ends alone
        for node in list(root.iter_all()):
            _legacy_widget_fixes(node)
        for node, index in root.match_type_frames:
            if any(n is node for n in node.graph.nodes):      # still in its graph
                with contextlib.suppress(InvalidConnection):
                    match_type_connection_changed(node, index)
        for node in list(root.iter_all()):
            if node.kind == "reroute":
                with contextlib.suppress(InvalidConnection):
                    reroute_connections_changed(node)
            elif node.kind == "comfy":
                _remote_first_load(node)
        return root

    def _sanitize_missing_types(self, doc: dict[str, Any]) -> None:
        """``collectMissingNodes``: a node type nobody registered loses ``&<>"'`=``
        (top level, and in every subgraph definition some node instantiates)."""
        definitions = doc.get("definitions") if isinstance(doc.get("definitions"), dict) \
            else {}
        subs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        sub_docs = [s for s in subs if isinstance(s, dict)] if isinstance(subs, list) else []
        known_subs = {to_string(s.get("id")) for s in sub_docs}

        def registered(type_name: Any) -> bool:
            name = to_string(type_name)
            return name in self.object_info or name in known_subs or name in (
                "PrimitiveNode", "Reroute", "Note", "MarkdownNote")

        def sanitize(nodes: Any) -> None:
            for node in nodes if isinstance(nodes, list) else []:
                if isinstance(node, dict) and not registered(node.get("type", UNDEFINED)):
                    original = to_string(node.get("type", UNDEFINED))
                    node["type"] = _ENTITY.sub("", original)
                    self.original_types.setdefault(node["type"], original)

        sanitize(doc.get("nodes"))
        for sub in sub_docs:
            if _has_execution_path(sub, doc.get("nodes"), sub_docs):
                sanitize(sub.get("nodes"))

    # LGraph.configure

    def _configure_graph(self, graph: Graph, doc: Mapping[str, Any]) -> None:
        state = graph.state
        if not graph.is_subgraph:
            state.last_node_id = 0
            state.last_link_id = 0
        graph.links = {}
        graph.nodes = []
        graph._by_id = {}
        if doc.get("version") == 0.4 and is_number(doc.get("version")):
            raw = doc.get("links")
            for item in raw if isinstance(raw, list) else []:
                link = link_from(list(item) if isinstance(item, list) else [])
                if link is not None:
                    with contextlib.suppress(TypeError):
                        graph.links[link.id] = link
        else:
            saved = doc.get("state")
            if isinstance(saved, dict):
                if saved.get("lastLinkId") is not None:
                    state.last_link_id = _js_max(state.last_link_id, saved["lastLinkId"])
                if saved.get("lastNodeId") is not None:
                    state.last_node_id = _js_max(state.last_node_id, saved["lastNodeId"])
            raw = doc.get("links")
            for item in raw if isinstance(raw, list) else []:
                link = link_from(item if isinstance(item, dict) else {})
                if link is not None:
                    with contextlib.suppress(TypeError):
                        graph.links[link.id] = link
        for key in doc:       # "copy all stored fields"
            if key == "last_node_id":
                state.last_node_id = doc[key]
            elif key == "last_link_id":
                state.last_link_id = doc[key]
        nodes_doc = doc.get("nodes")
        definitions = doc.get("definitions")
        subs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        if subs is not None and isinstance(subs, list):
            sub_docs = [s for s in subs if isinstance(s, dict)]
            if not graph.is_subgraph:
                reserved = {int(n["id"]) for n in nodes_doc or []
                            if isinstance(n, dict) and is_number(n.get("id"))
                            and float(n["id"]).is_integer()} if isinstance(nodes_doc, list) \
                    else set()
                sub_docs, roots = deduplicate_node_ids(sub_docs, reserved, state,
                                                       nodes_doc if isinstance(nodes_doc, list)
                                                       else [])
                if isinstance(nodes_doc, list):
                    nodes_doc = roots
            for sub_doc in sub_docs:        # createSubgraph: all exist before any is used
                sub = Graph(graph.root, to_string(sub_doc.get("id")))
                sub.name = sub_doc.get("name")
                sub.path_prefix = [f'subgraph "{to_string(sub_doc.get("name") or sub.id)}"']
                set_io(sub, sub_doc)
                graph.root.subgraphs[sub.id] = sub
            for sub_doc in topological_order(sub_docs):
                sub = graph.root.subgraphs.get(to_string(sub_doc.get("id")))
                if sub is None:
                    continue
                self._configure_graph(sub, sub_doc)
                set_io(sub, sub_doc)
        configs: list[tuple[Node, Mapping[str, Any]]] = []
        for raw in nodes_doc if isinstance(nodes_doc, list) else []:
            if not isinstance(raw, dict):
                raw = {}
            node = self.create_node(graph, raw.get("type", UNDEFINED), raw.get("title"))
            if node is None:
                node = Node(graph, to_string(raw.get("type", UNDEFINED)), "missing")
                node.widgets = None
            node.id = node_id_of(raw.get("id", UNDEFINED))
            graph.add(node)
            configs.append((node, raw))
        for node, raw in configs:
            configure_node(node, raw, self)
        _remove_duplicate_links(graph)
        for node, raw in configs:
            if isinstance(node, SubgraphNode) and "proxyWidgets" in node.properties:
                flush_proxy_widgets(node, raw.get("widgets_values"))

    def _on_graph_configured(self, node: Node) -> None:
        """Comfy.WidgetInputs ``onGraphConfigured``: a widget socket gets its config; one
        whose widget the node lacks is removed (iterating like ``for...of`` on an array
        that shrinks)."""
        i = 0
        while i < len(node.inputs):
            slot = node.inputs[i]
            if slot.widget is not None:
                if slot.widget.get_config() is None:
                    slot.widget.config = _v1_config(node.definition, slot.widget.name)
                if node.widget_named(slot.widget.name) is None:
                    node.remove_input(i)
            i += 1


# --- LGraphNode.configure and the per-class overrides ---------------------------------------


def configure_node(node: Node, data: Mapping[str, Any], loader: Loader) -> None:
    """``node.configure(data)``."""
    data = dict(data)
    if node.kind in ("comfy", "subgraph"):
        data = _merge_saved_slots(node, data)       # the ComfyNode class's override
    if isinstance(node, SubgraphNode):
        io_slots(node)
    for key, value in data.items():
        if key == "properties":
            if isinstance(value, dict):
                node.properties.update(value)
            continue
        if key == "id":
            new_id = node_id_of(value)
            if new_id != UNASSIGNED_NODE_ID:
                node.id = new_id
            continue
        if value is None or value is UNDEFINED:
            continue
        if key == "mode":
            node.mode = value
        elif key == "title":
            node.title = value
        elif key == "type" and isinstance(value, str):
            node.type = value
        elif key == "widgets_values":
            node.widgets_values = value
        elif key == "inputs" and isinstance(value, list | dict):
            node.inputs = _copy_over(node.inputs, value, _input_from)
        elif key == "outputs" and isinstance(value, list | dict):
            node.outputs = _copy_over(node.outputs, value, _output_from)
    if not truthy(data.get("title")):
        node.title = _class_title(node)
    graph = node.graph
    index = 0
    while index < len(node.inputs):
        slot = node.inputs[index]
        link = graph.link(slot.link) if slot.link is not None and node.added else None
        connections_changed(node, index, True, link)
        index += 1
    if isinstance(node, SubgraphNode):
        after_slots(node)
    values = data.get("widgets_values")
    widgets = node.widgets
    if widgets is not None and truthy(values):
        i = 0
        position = 0
        count = len(values) if isinstance(values, list | str) else None
        while position < len(widgets):         # live: a value may add widgets
            widget = widgets[position]
            position += 1
            if not widget.serialize:
                continue
            if count is not None and i >= count:
                break
            widget.value = _indexed(values, i)
            i += 1
    if isinstance(node, SubgraphNode):
        apply_promoted_values(node, values)


def _indexed(values: Any, i: int) -> Any:
    """``values[i]`` for whatever JSON value ``widgets_values`` holds."""
    if isinstance(values, list | str):
        return values[i]
    if isinstance(values, dict):
        return values.get(str(i), UNDEFINED)
    return UNDEFINED


def _class_title(node: Node) -> Any:
    if node.kind == "comfy" and node.definition is not None:
        return node.definition.title
    if isinstance(node, SubgraphNode) and node.subgraph is not None:
        name = node.subgraph.name
        return name if truthy(name) else node.subgraph.id
    return {"primitive": "Primitive", "reroute": "Reroute"}.get(node.kind, UNDEFINED) \
        if node.kind != "note" else ("Note" if node.type == "Note" else "Markdown Note")


def _merge_saved_slots(node: Node, data: dict[str, Any]) -> dict[str, Any]:
    """The ComfyNode ``configure`` override: saved inputs merged into the node's own by
    name (keeping the own name, type and widget), saved outputs by position, widget
    values saved for inputs now marked forceInput dropped. Every socket then goes
    through a JSON copy, which drops the widget's config function."""
    saved = data.get("inputs") if isinstance(data.get("inputs"), list) else None
    by_name: dict[Any, Any] = {}
    for item in saved or []:
        if isinstance(item, dict) and "name" in item:
            with contextlib.suppress(TypeError):
                by_name[item["name"]] = item
    own_names = {slot.name for slot in node.inputs}
    merged: list[Any] = []
    for slot in node.inputs:
        item = by_name.get(slot.name)
        marker = WidgetMarker(slot.widget.name) if slot.widget is not None else None
        if isinstance(item, dict):
            merged.append(InputSlot(slot.name, slot.type, item.get("link"), marker,
                                    label=item.get("label")))
        else:
            merged.append(InputSlot(slot.name, slot.type, slot.link, marker, label=slot.label))
    extra = [item for item in saved or []
             if not (isinstance(item, dict) and item.get("name") in own_names)]
    data["inputs"] = merged + extra
    saved_out = data.get("outputs") if isinstance(data.get("outputs"), list) else []
    outs: list[Any] = []
    for i in range(max(len(node.outputs), len(saved_out))):
        own = node.outputs[i] if i < len(node.outputs) else None
        item = saved_out[i] if i < len(saved_out) else None
        if own is not None:
            outs.append(OutputSlot(own.name, own.type, _links_list(item.get("links")))
                        if isinstance(item, dict) else own)
        else:
            outs.append(item)
    data["outputs"] = outs
    values = data.get("widgets_values")
    data["widgets_values"] = _migrate_widget_values(node, [] if values is None else values)
    return data


def _migrate_widget_values(node: Node, values: Any) -> Any:
    """``migrateWidgetsValues``: drop values saved for inputs now marked forceInput."""
    if not isinstance(values, list) or node.definition is None:
        return values
    names = {w.name for w in node.widgets or []}
    flags: list[bool] = []
    for spec in node.definition.input_specs.values():
        force = truthy(spec.get("forceInput"))
        if spec.get("name") not in names and not force:
            continue
        flags.extend([force, False] if truthy(spec.get("control_after_generate")) else [force])
    if len(flags) != len(values):
        return values
    return [v for i, v in enumerate(values) if not flags[i]]


def _has_execution_path(sub: Mapping[str, Any], root_nodes: Any,
                        sub_docs: list[dict[str, Any]]) -> bool:
    """Whether a top-level node instantiates the subgraph (directly or through others)."""
    ids = {to_string(s.get("id")): s for s in sub_docs}
    target = to_string(sub.get("id"))
    seen: set[str] = set()
    queue = [to_string(n.get("type")) for n in root_nodes or [] if isinstance(n, dict)]
    while queue:
        typ = queue.pop()
        if typ == target:
            return True
        if typ in ids and typ not in seen:
            seen.add(typ)
            nodes = ids[typ].get("nodes")
            queue.extend(to_string(n.get("type")) for n in nodes or [] if isinstance(n, dict))
    return False


def _remove_duplicate_links(graph: Graph) -> None:
    """``_removeDuplicateLinks``: of several links with the same ends, keep the one the
    target input refers to."""
    groups: dict[tuple[str, str, str, str], list[Any]] = {}
    for link_id, link in graph.links.items():
        key = (link.origin_id, to_string(link.origin_slot), link.target_id,
               to_string(link.target_slot))
        groups.setdefault(key, []).append(link_id)
    for ids in groups.values():
        if len(ids) <= 1:
            continue
        sample = graph.links[ids[0]]
        node = graph.node_by_id(sample.target_id)
        keep = ids[0]
        if node is not None:
            for slot in node.inputs:
                match = next((i for i in ids if slot.link is not None and slot.link == i
                              and type(slot.link) is type(i)), None)
                if match is not None:
                    keep = match
                    break
        for link_id in ids:
            if link_id == keep and type(link_id) is type(keep):
                continue
            link = graph.links.get(link_id)
            if link is None:
                continue
            origin = graph.node_by_id(link.origin_id)
            out = None
            if origin is not None and is_number(link.origin_slot) \
                    and 0 <= link.origin_slot < len(origin.outputs):
                out = origin.outputs[int(link.origin_slot)]
            if out is not None and out.links:
                out.links = [x for x in out.links if not (x == link_id
                                                          and type(x) is type(link_id))]
            del graph.links[link_id]
        if node is not None:
            for slot in node.inputs:
                if slot.link is None or (slot.link == keep and type(slot.link) is type(keep)):
                    continue
                if any(slot.link == i and type(slot.link) is type(i) for i in ids):
                    slot.link = keep


def _js_max(a: Any, b: Any) -> Any:
    x, y = to_number(a), to_number(b)
    if x != x or y != y:
        return float("nan")
    return number_value(max(x, y))


def _v1_config(definition: NodeDef | None, name: Any) -> Any:
    """``getConfig``: the input's V1 spec as the (amended) definition has it."""
    if definition is None or not isinstance(name, str):
        return None
    for group in ("required", "optional"):
        spec = definition.amended.get(group, {}).get(name)
        if isinstance(spec, list) and spec:
            return spec_parts(spec)
    return None


def _links_list(value: Any) -> list[Any] | None:
    return list(value) if isinstance(value, list) else None


def _input_from(item: Any) -> InputSlot:
    if isinstance(item, InputSlot):
        return item
    if not isinstance(item, dict):
        return InputSlot(UNDEFINED, UNDEFINED)
    widget = item.get("widget")
    marker = None
    if isinstance(widget, dict):
        marker = WidgetMarker(widget.get("name"))
    elif widget is not None and widget is not False:
        marker = WidgetMarker(UNDEFINED)
    return InputSlot(item.get("name", UNDEFINED), item.get("type", UNDEFINED),
                     item.get("link"), marker, label=item.get("label"))


def _output_from(item: Any) -> OutputSlot:
    if isinstance(item, OutputSlot):
        return item
    if not isinstance(item, dict):
        return OutputSlot(UNDEFINED, UNDEFINED)
    widget = item.get("widget")
    return OutputSlot(item.get("name", UNDEFINED), item.get("type", UNDEFINED),
                      _links_list(item.get("links")),
                      WidgetMarker(widget.get("name")) if isinstance(widget, dict) else None)


def _copy_over(current: list[Any], saved: Any, make: Callable[[Any], Any]) -> list[Any]:
    """``LiteGraph.cloneObject(saved, current)``: saved entries copied over by index (an
    object's keys that are array indexes count as indexes)."""
    out = list(current)
    if isinstance(saved, list):
        items = list(enumerate(saved))
    else:
        items = [(int(k), saved[k]) for k in saved
                 if isinstance(k, str) and k.isdigit() and (k == "0" or k[0] != "0")
                 and int(k) < len(out) + 64]
    for i, item in items:
        while len(out) <= i:
            out.append(None)
        out[i] = make(item)
    return [make(x) if not isinstance(x, InputSlot | OutputSlot) else x for x in out]


def _fix_link_input_slots(graph: Graph, depth: int) -> None:
    """``fixLinkInputSlots``: a link's target_slot is the index its input now has."""
    for node in graph.nodes:
        for i, slot in enumerate(node.inputs):
            if not truthy(slot.link):
                continue
            link = graph.link(slot.link)
            if link is not None:
                link.target_slot = i
        if node.is_subgraph_node and node.subgraph is not None and depth < 64:
            _fix_link_input_slots(node.subgraph, depth + 1)


def _remote_first_load(node: Node) -> None:
    """A COMBO whose options come from the server (``remote``) takes the first option the
    server lists once that list arrives, right after loading. A fresh worker's folders are
    empty: the value becomes the widget's default."""
    for widget in node.widgets or []:
        if widget.remote_default is not UNDEFINED or (widget.type == "combo"
                                                      and truthy(widget.spec.get("remote"))):
            widget.value = widget.remote_default


def _legacy_widget_fixes(node: Node) -> None:
    """``loadGraphData``'s fixes on every node: old sampler names and boolean control
    values, and a COMBO holding null/undefined takes its first option."""
    for w in node.widgets or []:
        if node.type in ("KSampler", "KSamplerAdvanced") and w.name == "sampler_name" \
                and isinstance(w.value, str) and w.value.startswith("sample_"):
            w.value = w.value[7:]
        if node.type in ("KSampler", "KSamplerAdvanced", "PrimitiveNode") \
                and w.name == "control_after_generate":
            if w.value is True:
                w.value = "randomize"
            elif w.value is False:
                w.value = "fixed"
        if w.type == "combo" and w.values and (w.value is None or w.value is UNDEFINED):
            w.value = w.values[0]

