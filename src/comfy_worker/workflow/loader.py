"""A UI-format workflow loaded the way the editor loads it (pure, in memory).

This mirrors what ``app.loadGraphData`` leaves behind before ``graphToPrompt`` runs: node
types renamed, subgraph definitions turned into node types, every node built from its
``/object_info`` definition (sockets + widgets), saved inputs merged by name, widget values
assigned slot by slot, links re-pointed at the right input index, promoted subgraph
widgets created and filled, primitives and reroutes set up
(:mod:`comfy_worker.workflow.virtual_nodes`). The graph it builds is made of
:mod:`comfy_worker.workflow.graph`'s classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from comfy_worker.errors import WorkflowConversionError
from comfy_worker.workflow.graph import (
    Config,
    Graph,
    InputSlot,
    Node,
    OutputSlot,
    SubgraphIO,
    Widget,
    WidgetMarker,
    inner_targets,
    link_from,
)
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    is_number,
    property_key,
    to_string,
    truthy,
)
from comfy_worker.workflow.links import fix_bad_links
from comfy_worker.workflow.nodedefs import TYPE_RENAMES, NodeDef, WidgetSpec, build_node_def
from comfy_worker.workflow.virtual_nodes import (
    primitive_after_configure,
    reroute_connections_changed,
)

log = logging.getLogger(__name__)

# --- loading ------------------------------------------------------------------------------


class Loader:
    """Builds the in-memory graph of a UI-format document against ``/object_info``."""

    def __init__(self, object_info: Mapping[str, Any], now: datetime) -> None:
        self.object_info = object_info
        self.now = now
        self.root = Graph(None)
        self.root.now = now
        self._defs: dict[str, NodeDef] = {}
        self.subgraph_docs: dict[Any, Mapping[str, Any]] = {}

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

    def create_node(self, graph: Graph, type_name: Any) -> Node | None:
        """``LiteGraph.createNode``: None for a type nobody registered."""
        if not isinstance(type_name, str):
            type_name = to_string(type_name)
        root = graph.root
        if type_name in root.subgraphs:
            node = Node(graph, type_name, "subgraph")
            node.subgraph = root.subgraphs[type_name]
            node.title = _subgraph_title(self.subgraph_docs.get(type_name))
            return node
        definition = self.definition(type_name)
        if definition is not None:
            node = Node(graph, type_name, "comfy", definition)
            for slot in definition.inputs:
                marker = WidgetMarker(slot.widget, slot.config) if slot.widget else None
                node.inputs.append(InputSlot(slot.name, slot.type, None, marker))
            for name, typ in definition.outputs:
                node.outputs.append(OutputSlot(name, typ, None))
            node.widgets = [Widget(spec) for spec in definition.widgets]
            if definition.snr_property:
                node.properties["Node name for S&R"] = type_name
            return node
        if type_name == "PrimitiveNode":
            node = Node(graph, type_name, "primitive")
            node.title = "Primitive"
            node.outputs.append(OutputSlot("connect to widget input", "*", None))
            node.properties["Run widget replace on values"] = False
            return node
        if type_name == "Reroute":
            node = Node(graph, type_name, "reroute")
            node.title = "Reroute"
            node.properties.update({"showOutputText": False, "horizontal": False})
            node.inputs.append(InputSlot("", "*", None))
            node.outputs.append(OutputSlot("", "*", None))
            return node
        if type_name in ("Note", "MarkdownNote"):
            node = Node(graph, type_name, "note")
            node.title = "Note" if type_name == "Note" else "Markdown Note"
            node.properties["text"] = ""
            node.widgets = [Widget(WidgetSpec("text", "customtext", "", textarea=True))]
            return node
        return None

    # documents

    def load(self, doc: dict[str, Any]) -> Graph:
        definitions = doc.get("definitions") if isinstance(doc.get("definitions"), dict) else {}
        raw_subs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        sub_docs = [d for d in raw_subs if isinstance(d, dict)] \
            if isinstance(raw_subs, list) else []
        for node_doc in _iter_node_docs(doc, sub_docs):
            type_name = node_doc.get("type")
            renamed = TYPE_RENAMES.get(type_name) if isinstance(type_name, str) else None
            if renamed:
                node_doc["type"] = renamed
        doc = fix_bad_links(doc)
        root = self.root
        self._configure_links(root, doc)
        root.last_node_id = _last_node_id(doc)
        for sub_doc in sub_docs:     # all subgraphs exist before any is configured
            sub = Graph(root, sub_doc.get("id"))
            sub.name = sub_doc.get("name")
            sub.path_prefix = [f'subgraph "{to_string(sub_doc.get("name") or sub.id)}"']
            _set_io(sub, sub_doc)
            with contextlib.suppress(TypeError):
                root.subgraphs[sub_doc.get("id")] = sub
                self.subgraph_docs[sub_doc.get("id")] = sub_doc
        for sub_doc in sub_docs:
            sub = root.subgraphs.get(sub_doc.get("id"))
            if sub is None or sub.nodes:
                continue
            self._configure_links(sub, sub_doc)
            sub.last_node_id = _last_node_id(sub_doc)
            self._configure_nodes(sub, sub_doc.get("nodes"))
            _set_io(sub, sub_doc)
        self._configure_nodes(root, doc.get("nodes"))
        # the app's after-configure handler, then what runs on the next animation frame
        _fix_link_input_slots(root, 0)
        for node in list(root.iter_all()):
            if node.kind == "comfy":
                self._on_graph_configured(node)
        for node in list(root.iter_all()):
            if node.kind == "primitive":
                primitive_after_configure(node)
        for node in root.nodes:     # app.loadGraphData fixes the top-level nodes only
            _legacy_widget_fixes(node)
        for node in list(root.iter_all()):
            if node.kind == "reroute":
                reroute_connections_changed(node)
            elif node.kind == "comfy":
                _remote_first_load(node)
        return root

    def _configure_links(self, graph: Graph, doc: Mapping[str, Any]) -> None:
        raw = doc.get("links")
        if isinstance(raw, dict):
            raw = list(raw.values())
        if not isinstance(raw, list):
            return
        for item in raw:
            link = link_from(item)
            if link is not None:
                with contextlib.suppress(TypeError):
                    graph.links[link.id] = link

    def _configure_nodes(self, graph: Graph, raw_nodes: Any) -> None:
        if not isinstance(raw_nodes, list):
            return
        configs: dict[str, tuple[Node, Mapping[str, Any]]] = {}
        for raw in raw_nodes:
            if not isinstance(raw, dict):
                continue
            node = self.create_node(graph, raw.get("type"))
            if node is None:
                node = Node(graph, to_string(raw.get("type")), "missing")
            node.id = raw.get("id", UNDEFINED)
            graph.add(node)
            configs[property_key(node.id)] = (node, raw)
        for node, raw in configs.values():
            self._configure_node(node, raw)

    # LGraphNode.configure and the per-class overrides

    def _configure_node(self, node: Node, data: Mapping[str, Any]) -> None:
        data = dict(data)
        if node.kind == "subgraph" and node.subgraph is not None:
            node.inputs = [InputSlot(io.name, io.type, None) for io in node.subgraph.io_inputs]
            node.outputs = [OutputSlot(io.name, io.type, None)
                            for io in node.subgraph.io_outputs]
            self._promote_widgets(node)     # the markers the first configure leaves
        if node.kind in ("comfy", "subgraph"):
            data = self._merge_saved_slots(node, data)
        if data.get("id") is not None:
            node.id = data["id"]            # configure copies every key, the id too
        if data.get("mode") is not None:
            node.mode = data["mode"]
        if isinstance(data.get("properties"), dict):
            node.properties.update(data["properties"])
        if data.get("title") is not None:
            node.title = data["title"]
        if data.get("widgets_values") is not None:
            node.widgets_values = data["widgets_values"]
        if isinstance(data.get("inputs"), list | dict):
            node.inputs = _copy_over(node.inputs, data["inputs"], _input_from)
        if isinstance(data.get("outputs"), list | dict):
            node.outputs = _copy_over(node.outputs, data["outputs"], _output_from)
        if not truthy(data.get("title")):
            node.title = self._class_title(node)
        if node.kind == "subgraph":
            self._promote_widgets(node)
        values = data.get("widgets_values")
        if node.widgets and isinstance(values, list):
            stored = [w for w in node.widgets if w.stored]
            if node.kind == "comfy" and len(values) != len(stored):
                log.warning("node %s (%s): %d saved widget values for %d widgets; like the "
                            "editor, %s", node.display_id(), node.type, len(values),
                            len(stored), "extra values are ignored" if len(values) > len(stored)
                            else "the missing ones keep their defaults")
            for widget, value in zip(stored, values, strict=False):
                widget.value = value
        if node.kind == "subgraph":
            _apply_proxy_widgets(node, data)

    def _class_title(self, node: Node) -> Any:
        if node.kind == "comfy" and node.definition is not None:
            return node.definition.title
        if node.kind == "subgraph":
            return _subgraph_title(self.subgraph_docs.get(node.type))
        return {"primitive": "Primitive", "reroute": "Reroute"}.get(node.kind, UNDEFINED) \
            if node.kind != "note" else ("Note" if node.type == "Note" else "Markdown Note")

    def _merge_saved_slots(self, node: Node, data: dict[str, Any]) -> dict[str, Any]:
        """The ComfyNode ``configure`` override: saved inputs merged into the node's own
        by name (keeping the own name, type and widget), saved outputs by position."""
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
            merged.append(InputSlot(slot.name, slot.type, item.get("link"), slot.widget)
                          if isinstance(item, dict) else slot)
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
        if node.kind == "comfy":
            values = data.get("widgets_values")
            data["widgets_values"] = _migrate_widget_values(node, [] if values is None
                                                            else values)
        return data

    def _promote_widgets(self, node: Node) -> None:
        """``SubgraphNode._internalConfigureAfterSlots``: an inner widget fed by a subgraph
        input becomes a (promoted) widget of the subgraph node, named after the input."""
        sub = node.subgraph
        assert sub is not None
        node.widgets = []
        for slot in node.inputs:
            for resolved in inner_targets(sub, slot.name):
                assert resolved.input is not None and resolved.input_node is not None
                inner = resolved.input_node.widget_from_slot(resolved.input)
                if inner is None:
                    continue
                node.widgets.append(inner.copy_for(slot.name))
                if slot.widget is None:
                    slot.widget = WidgetMarker(slot.name)
                slot.widget.name = slot.name
                if resolved.input.widget is not None:
                    slot.widget.proto = resolved.input.widget
                break

    def _on_graph_configured(self, node: Node) -> None:
        """Comfy.WidgetInputs ``onGraphConfigured``: a widget socket gets its config; one
        whose widget the node lacks is removed (iterating like ``for...of`` on an array
        that shrinks)."""
        i = 0
        while i < len(node.inputs):
            slot = node.inputs[i]
            if slot.widget is not None:
                if slot.widget.get_config() is None:
                    slot.widget.config = _v1_config(self.object_info.get(node.type),
                                                    slot.widget.name)
                if node.widget_named(slot.widget.name) is None:
                    _remove_input(node, i)
            i += 1


# --- helpers for loading ------------------------------------------------------------------


def _iter_node_docs(doc: Mapping[str, Any], sub_docs: list[dict[str, Any]]
                    ) -> Iterator[dict[str, Any]]:
    for container in [doc, *sub_docs]:
        nodes = container.get("nodes")
        if isinstance(nodes, list):
            yield from (n for n in nodes if isinstance(n, dict))


def _set_io(sub: Graph, sub_doc: Mapping[str, Any]) -> None:
    def ios(key: str) -> list[SubgraphIO]:
        out = []
        for item in sub_doc.get(key) or []:
            if not isinstance(item, dict):
                continue
            ids = item.get("linkIds")
            out.append(SubgraphIO(item.get("name"), item.get("type"),
                                  list(ids) if isinstance(ids, list) else []))
        return out
    if isinstance(sub_doc.get("inputs"), list):
        sub.io_inputs = ios("inputs")
    if isinstance(sub_doc.get("outputs"), list):
        sub.io_outputs = ios("outputs")


def _subgraph_title(sub_doc: Mapping[str, Any] | None) -> Any:
    if not sub_doc:
        return UNDEFINED
    return sub_doc.get("name") or sub_doc.get("id")


def _last_node_id(doc: Mapping[str, Any]) -> Any:
    state = doc.get("state")
    if doc.get("version") != 0.4 and isinstance(state, dict) and "lastNodeId" in state:
        return state["lastNodeId"]
    value = doc.get("last_node_id")
    return 0 if value is None else value


def _v1_config(info: Any, name: Any) -> Config | None:
    """``getConfig``: the input's spec as ``/object_info`` lists it."""
    if not isinstance(info, Mapping) or not isinstance(info.get("input"), Mapping):
        return None
    for group in ("required", "optional"):
        part = info["input"].get(group)
        spec = part.get(name) if isinstance(part, Mapping) else None
        if isinstance(spec, list) and spec:
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            return (spec[0], opts)
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
                     item.get("link"), marker)


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
    """``LiteGraph.cloneObject(saved, current)``: saved entries copied over by index."""
    out = list(current)
    items = saved if isinstance(saved, list) else [saved[k] for k in saved]
    for i, item in enumerate(items):
        if i < len(out):
            out[i] = make(item) if item is not None else make(None)
        else:
            out.append(make(item))
    return [make(x) if not isinstance(x, InputSlot | OutputSlot) else x for x in out]


def _migrate_widget_values(node: Node, values: Any) -> Any:
    """``migrateWidgetsValues``: drop values saved for inputs now marked forceInput."""
    if not isinstance(values, list) or node.definition is None:
        return values
    names = {w.name for w in node.widgets}
    inputs = [m for m in node.definition.migrate_inputs if m.name in names or m.force_input]
    if sum(2 if m.counts_two else 1 for m in inputs) != len(values):
        return values
    return [v for i, v in enumerate(values)
            if not (i < len(inputs) and inputs[i].force_input)]


def _apply_proxy_widgets(node: Node, data: Mapping[str, Any]) -> None:
    """The proxyWidgets ``onConfigure``: ``-1`` entries take their value by position."""
    props = data.get("properties")
    proxies = props.get("proxyWidgets") if isinstance(props, dict) else None
    if isinstance(proxies, str):
        try:
            proxies = json.loads(proxies)
        except ValueError:
            return
    if not isinstance(proxies, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in proxies):
        return
    values = data.get("widgets_values")
    if not isinstance(values, list):
        return
    for i, value in enumerate(values):
        if i >= len(proxies) or proxies[i][0] != "-1":
            continue
        w = node.widget_named(proxies[i][1])
        if value is not None and w is not None:
            w.value = value


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


def _remove_input(node: Node, index: int) -> None:
    """``removeInput``: disconnect it, drop it, shift later links' target slots."""
    graph = node.graph
    graph.disconnect_input(node, index)
    del node.inputs[index]
    for later in node.inputs[index:]:
        if truthy(later.link):
            link = graph.link(later.link)
            if link is not None and is_number(link.target_slot):
                link.target_slot -= 1


def _remote_first_load(node: Node) -> None:
    """A COMBO whose options come from the server (``remote``) takes the first option the
    server lists once that list arrives, right after loading. A fresh worker's folders are
    empty, so the list is empty and the value becomes undefined (shown as its fallback)."""
    for widget in node.widgets:
        if widget.spec.remote:
            widget.value = UNDEFINED


def _legacy_widget_fixes(node: Node) -> None:
    for w in node.widgets:
        if node.type in ("KSampler", "KSamplerAdvanced") and w.name == "sampler_name" \
                and isinstance(w.value, str) and w.value.startswith("sample_"):
            w.value = w.value[7:]
        if node.type in ("KSampler", "KSamplerAdvanced", "PrimitiveNode") \
                and w.name == "control_after_generate":
            if w.value is True:
                w.value = "randomize"
            elif w.value is False:
                w.value = "fixed"
