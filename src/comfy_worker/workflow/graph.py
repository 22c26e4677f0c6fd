"""The editor's graph in memory: nodes, slots, widgets, links, subgraphs (pure).

The classes here are the state the editor's LiteGraph objects hold while a workflow is
loaded (:mod:`comfy_worker.workflow.loader`) and turned into a prompt
(:mod:`comfy_worker.workflow.convert`), mutable like the editor's, with the small rules
that belong to them: how a widget clamps a number, how a link is resolved, which slot
types connect, how a graph numbers a node it adds. The public surface is
:func:`comfy_worker.workflow.convert.ui_to_api`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comfy_worker.errors import WorkflowConversionError
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    element_at,
    is_number,
    loose_equals,
    math_round,
    number_value,
    property_key,
    textarea_value,
    to_fixed,
    to_number,
    to_string,
    truthy,
)
from comfy_worker.workflow.nodedefs import (
    NodeDef,
    NumberOptions,
    WidgetSpec,
)

SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20
MODE_NEVER = 2
MODE_BYPASS = 4

# An input spec as the editor's GET_CONFIG returns it: (type or option list, options).
Config = tuple[Any, Mapping[str, Any]]


def describe(node: Node) -> str:
    """``"KSampler"``, or ``subgraph "name"`` for a subgraph node."""
    if node.is_subgraph_node and node.subgraph is not None:
        return f'subgraph "{to_string(node.subgraph.name or node.type)}"'
    return f'"{node.type}"'


def conversion_error(node: Node | None, why: str, hint: str | None = None, *,
                     node_id: str | None = None) -> WorkflowConversionError:
    """The error for ``node``: names its id (the flattened prompt id when known), its type
    and why; ``details`` holds ``node_id``, ``class_type`` and ``message``."""
    if node is None:
        return WorkflowConversionError(why, hint=hint)
    where = ""
    if node_id is None:
        node_id = to_string(node.id)
        if node.graph.is_subgraph:
            where = f" in {node.graph.path_prefix[0]}" if node.graph.path_prefix else ""
    return WorkflowConversionError(
        f"node {node_id} ({describe(node)}){where}: {why}", hint=hint,
        details=[{"node_id": node_id, "class_type": node.type, "message": why}])


# --- widgets ----------------------------------------------------------------------------


class Cell:
    """Where a widget keeps its value; DOM widgets' promoted copies share one."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Widget:
    def __init__(self, spec: WidgetSpec, *, cell: Cell | None = None) -> None:
        self.spec = spec
        self.name: Any = spec.name
        self.cell = cell if cell is not None else Cell(
            textarea_value(spec.default) if spec.textarea else spec.default)
        self._upload_raw: Any = None
        self._upload_set = False

    @property
    def api(self) -> bool:
        return self.spec.api

    @property
    def stored(self) -> bool:
        return self.spec.stored

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def number(self) -> NumberOptions | None:
        return self.spec.number

    @property
    def value(self) -> Any:
        spec = self.spec
        if spec.fixed_value:
            return ""
        if spec.upload is not None:
            raw = self._upload_raw if self._upload_set else spec.upload.fallback
            return _upload_transform(raw, spec.upload.folder, spec.upload.allow_batch,
                                     spec.upload.fallback)
        return self.cell.value

    @value.setter
    def value(self, v: Any) -> None:
        spec = self.spec
        if spec.fixed_value:
            return
        if spec.upload is not None:
            self._upload_raw, self._upload_set = v, True
            return
        self.cell.value = textarea_value(v) if spec.textarea else v

    def callback(self) -> None:
        """The widget's change callback: number widgets round and clamp their value."""
        if self.number is not None:
            self.value = on_number_change(self.value, self.number)

    def copy_for(self, name: Any) -> Widget:
        """``createCopyForNode``: the promoted copy a subgraph node shows. A DOM widget's
        copy shares the inner widget's element, so both hold one value."""
        spec = WidgetSpec(**{**self.spec.__dict__, "name": name, "upload": None})
        shared = self.spec.textarea or self.spec.fixed_value or self.spec.kind == "multiselect"
        return Widget(spec, cell=self.cell if shared else Cell(self.value))


def on_number_change(value: Any, opts: NumberOptions) -> Any:
    """The editor's INT ``onValueChange`` / FLOAT ``onFloatValueChange``."""
    if opts.is_int:
        step = opts.step2 or 1
        if step == 1:
            return number_value(math_round(value))
        offset = math.fmod(opts.min, step)
        x = to_number(value)
        return number_value(math_round((x - offset) / step) * step + offset)
    rnd = opts.round
    if not rnd:
        return value
    x = to_number(value)
    snapped = math_round(x / rnd) * rnd
    result = to_number(to_fixed(float(snapped), opts.precision))
    if not math.isnan(result):      # Math.min/Math.max keep NaN
        result = min(max(result, opts.min), opts.max)
    return number_value(result)


def _annotated(value: Any, folder: str) -> Any:
    """``createAnnotatedPath(value, {rootFolder: folder})``."""
    def annotation(text: str) -> str:
        has = re.search(r"\[(input|output|temp)\]", text, re.IGNORECASE) is not None
        return f" [{folder}]" if not has and folder != "input" else ""

    if isinstance(value, str):
        return value + annotation(value)
    if isinstance(value, dict):
        filename = value.get("filename")
        filename = "" if filename is None else filename
        sub = value.get("subfolder")
        path = f"{to_string(sub)}/{to_string(filename)}" if sub else to_string(filename)
        kind = value.get("type")
        return path + (annotation(to_string(kind)) if kind else "")
    return ""


def _upload_transform(raw: Any, folder: str, allow_batch: bool, fallback: str) -> Any:
    """The upload widget's value transform on its file COMBO."""
    if not truthy(raw):
        return fallback
    if isinstance(raw, list):
        if allow_batch:
            return [_annotated(v, folder) for v in raw]
        return _annotated(raw[0] if raw else None, folder)
    return _annotated(raw, folder)


# --- slots, links ---------------------------------------------------------------------


class WidgetMarker:
    """An input's ``widget`` (``{name}``): the input feeds that widget. ``config`` is the
    input spec the editor attaches (GET_CONFIG); ``custom`` a merged spec a primitive or a
    reroute stored on it; ``proto`` the inner input a promoted subgraph input delegates to."""

    def __init__(self, name: Any, config: Config | None = None) -> None:
        self.name = name
        self.config = config
        self.custom: Config | None = None
        self.proto: WidgetMarker | None = None

    def get_config(self) -> Config | None:
        if self.config is not None:
            return self.config
        return self.proto.get_config() if self.proto is not None else None

    def get_custom(self) -> Config | None:
        if self.custom is not None:
            return self.custom
        return self.proto.get_custom() if self.proto is not None else None


@dataclass
class InputSlot:
    name: Any
    type: Any
    link: Any = None
    widget: WidgetMarker | None = None


@dataclass
class OutputSlot:
    name: Any
    type: Any
    links: list[Any] | None = None
    widget: WidgetMarker | None = None      # PrimitiveNode: its first target's marker


@dataclass
class Link:
    id: Any
    type: Any
    origin_id: Any
    origin_slot: Any
    target_id: Any
    target_slot: Any

    @property
    def origin_is_io(self) -> bool:
        return is_number(self.origin_id) and self.origin_id == SUBGRAPH_INPUT_ID

    @property
    def target_is_io(self) -> bool:
        return is_number(self.target_id) and self.target_id == SUBGRAPH_OUTPUT_ID


def link_from(item: Any) -> Link | None:
    """A saved link: ``[id, origin, origin_slot, target, target_slot, type]`` or object."""
    if isinstance(item, list):
        if len(item) < 5:
            return None
        typ = item[5] if len(item) > 5 else UNDEFINED
        return Link(item[0], typ, item[1], item[2], item[3], item[4])
    if isinstance(item, dict):
        return Link(item.get("id"), item.get("type"), item.get("origin_id"),
                    item.get("origin_slot"), item.get("target_id"), item.get("target_slot"))
    return None


@dataclass
class ResolvedLink:
    input_node: Node | None = None
    input: InputSlot | None = None
    output_node: Node | None = None
    output: OutputSlot | None = None
    subgraph_input: SubgraphIO | None = None
    subgraph_output: SubgraphIO | None = None
    link: Link | None = None


def resolve_link(link: Link, graph: Graph) -> ResolvedLink:
    """``LLink.resolve``: the nodes and slots at both ends of ``link`` in ``graph``."""
    target = None if loose_equals(link.target_id, -1) else graph.node_by_id(link.target_id)
    inp = element_at(target.inputs, link.target_slot, wrap=False) if target is not None else None
    sub_in = element_at(graph.io_inputs, link.origin_slot, wrap=False) if (
        link.origin_is_io and graph.is_subgraph) else None
    if sub_in is not None:
        return ResolvedLink(input_node=target, input=inp, subgraph_input=sub_in, link=link)
    origin = None if loose_equals(link.origin_id, -1) else graph.node_by_id(link.origin_id)
    out = element_at(origin.outputs, link.origin_slot, wrap=False) if origin is not None else None
    sub_out = element_at(graph.io_outputs, link.target_slot, wrap=False) if (
        link.target_is_io and graph.is_subgraph) else None
    if sub_out is not None:
        return ResolvedLink(output_node=origin, output=out, subgraph_output=sub_out, link=link)
    return ResolvedLink(input_node=target, input=inp, output_node=origin, output=out,
                        link=link)


def inner_targets(sub: Graph, input_name: str) -> Iterator[ResolvedLink]:
    """The inner inputs (with their nodes) that the subgraph input ``input_name`` feeds."""
    io = next((s for s in sub.io_inputs if s.name == input_name), None)
    for link_id in io.link_ids if io is not None else ():
        link = sub.link(link_id)
        if link is None:
            continue
        resolved = resolve_link(link, sub)
        if resolved.input is not None and resolved.input_node is not None:
            yield resolved


def is_valid_connection(a: Any, b: Any) -> bool:
    """``LiteGraph.isValidConnection`` for two slot types."""
    if a == "" or a == "*":
        a = 0
    if b == "" or b == "*":
        b = 0
    if not truthy(a) or not truthy(b) or loose_equals(a, b):
        return True
    sa, sb = to_string(a).lower(), to_string(b).lower()
    if "," not in sa and "," not in sb:
        return sa == sb
    return any(is_valid_connection(x, y) for x in sa.split(",") for y in sb.split(","))


# --- nodes ----------------------------------------------------------------------------


class Node:
    def __init__(self, graph: Graph, type_name: str, kind: str,
                 definition: NodeDef | None = None) -> None:
        self.graph = graph
        self.id: Any = -1
        self.type = type_name
        self.kind = kind            # comfy | primitive | reroute | note | subgraph | missing
        self.definition = definition
        self.comfy_class: str | None = definition.name if definition else None
        self.title: Any = definition.title if definition else UNDEFINED
        self.mode: Any = 0
        self.inputs: list[InputSlot] = []
        self.outputs: list[OutputSlot] = []
        self.widgets: list[Widget] = []
        self.has_widgets = False            # PrimitiveNode: ``this.widgets`` exists
        self.properties: dict[str, Any] = {}
        self.widgets_values: Any = UNDEFINED
        self.subgraph: Graph | None = None
        # PrimitiveNode recreation state (``controlValues`` / ``lastType``)
        self.control_values: list[Any] | None = None
        self.last_type: Any = None

    @property
    def virtual(self) -> bool:
        return self.kind in ("primitive", "reroute", "note", "subgraph")

    @property
    def is_subgraph_node(self) -> bool:
        return self.kind == "subgraph"

    def display_id(self) -> str:
        return ":".join([*self.graph.path_prefix, to_string(self.id)])

    def widget_named(self, name: Any) -> Widget | None:
        for w in self.widgets:
            if w.name == name and type(w.name) is type(name):
                return w
        return None

    def widget_from_slot(self, slot: InputSlot) -> Widget | None:
        """``getWidgetFromSlot``."""
        return self.widget_named(slot.widget.name) if slot.widget is not None else None

    def widget_value(self, name: str) -> tuple[bool, Any]:
        w = self.widget_named(name)
        return (True, w.value) if w is not None else (False, None)

    def input_link(self, slot: int) -> Link | None:
        """``getInputLink``."""
        if 0 <= slot < len(self.inputs):
            link_id = self.inputs[slot].link
            if link_id is not None and link_id is not UNDEFINED:
                return self.graph.link(link_id)
        return None


# --- graphs ---------------------------------------------------------------------------


@dataclass
class SubgraphIO:
    name: Any
    type: Any
    link_ids: list[Any] = field(default_factory=list)


class Graph:
    def __init__(self, root: Graph | None, graph_id: Any = None) -> None:
        self.root: Graph = root if root is not None else self
        self.id = graph_id
        self.nodes: list[Node] = []
        self._by_id: dict[str, Node] = {}
        self.links: dict[Any, Link] = {}
        self.last_node_id: Any = 0
        self.is_subgraph = root is not None
        self.name: Any = None
        self.io_inputs: list[SubgraphIO] = []
        self.io_outputs: list[SubgraphIO] = []
        self.subgraphs: dict[Any, Graph] = {}        # root only, definition order
        self.path_prefix: list[str] = []             # for error messages
        self.now: datetime = self.root.now if root is not None else datetime.now()

    def node_by_id(self, node_id: Any) -> Node | None:
        if node_id is None or node_id is UNDEFINED:
            return None
        return self._by_id.get(property_key(node_id))

    def link(self, link_id: Any) -> Link | None:
        """``getLink`` (a Map lookup: the id's type matters)."""
        if link_id is None or link_id is UNDEFINED or isinstance(link_id, bool | list | dict):
            return None
        return self.links.get(link_id)

    def link_by_property(self, link_id: Any) -> Link | None:
        """``graph.links[id]`` (the editor's proxy parses the key as an integer)."""
        text = to_string(link_id)
        m = re.match(r"^\s*[+-]?\d+", text)
        key: Any = int(m.group(0)) if m else text
        return self.links.get(key)

    def add(self, node: Node) -> None:
        """``LGraph.add``: a missing or duplicate id gets ``++last_node_id``."""
        node_id = node.id
        if node_id is None or node_id is UNDEFINED or loose_equals(node_id, -1) \
                or property_key(node_id) in self._by_id:
            self.last_node_id = number_value(to_number(self.last_node_id) + 1)
            node.id = self.last_node_id
        elif is_number(node_id) and is_number(self.last_node_id) \
                and self.last_node_id < node_id:
            self.last_node_id = node_id
        self.nodes.append(node)
        self._by_id[property_key(node.id)] = node

    def remove_link(self, link_id: Any) -> None:
        with contextlib.suppress(TypeError):
            self.links.pop(link_id, None)

    def iter_all(self, depth: int = 0) -> Iterator[Node]:
        """``forEachNode``: each subgraph node's inner nodes (recursively) before it."""
        for node in list(self.nodes):
            if node.is_subgraph_node and node.subgraph is not None and depth < 64:
                yield from node.subgraph.iter_all(depth + 1)
            yield node

    def disconnect_input(self, node: Node, index: Any) -> None:
        """``disconnectInput``: the input's link leaves the graph and its origin."""
        slot = element_at(node.inputs, index, wrap=False)
        if slot is None or slot.link is None or slot.link is UNDEFINED:
            return
        link = self.link(slot.link)
        slot.link = None
        if link is None:
            return
        origin = self.node_by_id(link.origin_id)
        out = element_at(origin.outputs, link.origin_slot, wrap=False) if origin else None
        if out is not None and out.links:
            out.links = [x for x in out.links if not loose_equals(x, link.id)]
        self.remove_link(link.id)


def all_nodes(root: Graph) -> Iterator[Node]:
    """``collectAllNodes``: each subgraph node's inner nodes (recursively) before it."""
    return root.iter_all()
