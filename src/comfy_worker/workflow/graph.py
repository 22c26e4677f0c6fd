"""The editor's graph in memory: nodes, slots, widgets, links, subgraphs (pure).

The classes here are the state the editor's LiteGraph objects hold while a workflow is
loaded (:mod:`comfy_worker.workflow.loader`) and turned into a prompt
(:mod:`comfy_worker.workflow.convert`), mutable like the editor's, with the small rules
that belong to them: how a widget keeps its value, how a number widget rounds and clamps,
how a link is resolved, which slot types connect, how a graph numbers a node it adds.
The public surface is :func:`comfy_worker.workflow.convert.ui_to_api`.

Since frontend 1.4x the editor keeps widget values in one store per workflow, keyed by
(node id, widget name): a widget joins the store when its node is added to a graph, and
two widgets with the same key and type share one value. Node ids are strings.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
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
    to_fixed,
    to_number,
    to_string,
    truthy,
)

SUBGRAPH_INPUT_ID = "-10"
SUBGRAPH_OUTPUT_ID = "-20"
UNASSIGNED_NODE_ID = "-1"
MODE_NEVER = 2
MODE_BYPASS = 4

# An input spec as the editor's GET_CONFIG returns it: (type or option list, options).
Config = tuple[Any, Mapping[str, Any]]


def node_id_of(value: Any) -> str:
    """``toNodeId``: the editor keeps every node id as ``String(id)``."""
    return to_string(value)


def parse_node_id(value: Any) -> str | None:
    """``parseNodeId``: an integer or a non-empty string, else None."""
    if is_number(value):
        return to_string(value) if math.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str):
        return value or None
    return None


def numeric_node_id(node_id: str) -> int | None:
    """``Number(id)`` when that is an integer (``" 5 "`` and ``"0x5"`` count)."""
    x = to_number(node_id)
    return int(x) if math.isfinite(x) and x.is_integer() else None


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


# --- the widget value store -----------------------------------------------------------


class WidgetState:
    """One entry of the editor's widget value store (``WidgetState``)."""

    __slots__ = ("type", "value", "values")

    def __init__(self, type_: Any, value: Any, values: list[Any] | None = None) -> None:
        self.type = type_
        self.value = value
        self.values = values        # options.values, kept for promoted widgets


class WidgetStore:
    """``useWidgetValueStore`` for one workflow: states keyed by (node id, widget name).
    A key with an empty node id or name is not a valid widget id: nothing is stored."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], WidgetState] = {}

    @staticmethod
    def key(node_id: Any, name: Any) -> tuple[str, str] | None:
        node, text = to_string(node_id), to_string(name)
        return (node, text) if node and text else None

    def register(self, node_id: Any, name: Any, type_: Any, value: Any,
                 values: list[Any] | None = None) -> WidgetState | None:
        key = self.key(node_id, name)
        if key is None:
            return None
        existing = self._states.get(key)
        if existing is not None and existing.type == type_:
            return existing
        state = WidgetState(type_, value, values)
        self._states[key] = state
        return state

    def get(self, node_id: Any, name: Any) -> WidgetState | None:
        key = self.key(node_id, name)
        return self._states.get(key) if key is not None else None

    def set_value(self, node_id: Any, name: Any, value: Any) -> bool:
        state = self.get(node_id, name)
        if state is None:
            return False
        state.value = value
        return True

    def delete(self, node_id: Any, name: Any) -> None:
        key = self.key(node_id, name)
        if key is not None:
            self._states.pop(key, None)


# --- widgets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberOptions:
    """A number widget's options (what its change callback clamps/rounds with)."""

    is_int: bool
    min: float
    max: float
    step2: float
    round: float | None = None      # FLOAT only
    precision: int = 0


class Widget:
    """A LiteGraph widget (``BaseWidget``): its value lives in its own state until its node
    joins a graph, then in the workflow's widget store (shared with any other widget of
    the same node id, name and type).

    ``serialize`` is ``widget.serialize`` (False: no ``widgets_values`` slot), ``api`` is
    ``options.serialize !== false`` (False: not sent in the prompt)."""

    def __init__(self, node: Node, name: Any, type_: str, value: Any, *,
                 serialize: bool = True, api: bool = True,
                 number: NumberOptions | None = None,
                 values: list[Any] | None = None, spec: Mapping[str, Any] | None = None,
                 bindable: bool = True) -> None:
        self.node = node
        self.name = name
        self.type = type_
        self.serialize = serialize
        self.api = api
        self.number = number
        self.values = values
        self.spec: Mapping[str, Any] = spec or {}
        self.bindable = bindable
        self.dynamic_prompts = False
        self.text_replace = False       # a save node's filename_prefix
        self.remote_default: Any = UNDEFINED    # a remote COMBO's default
        self._state = WidgetState(type_, value)
        # hooks the editor's widget constructors and extensions install
        self.on_set: Callable[[Widget, Any], None] | None = None
        self.serialize_value: Callable[[Widget], Any] | None = None
        self.browser_only: str | None = None

    # the value

    @property
    def value(self) -> Any:
        return self._get()

    @value.setter
    def value(self, v: Any) -> None:
        self._set(v)
        if self.on_set is not None:
            self.on_set(self, v)

    def _get(self) -> Any:
        return self._state.value

    def _set(self, v: Any) -> None:
        self._state.value = v

    def bind(self, node_id: str) -> None:
        """``setNodeId``: join the workflow's store (an existing state of the same type
        there wins over this widget's own value)."""
        store = self.node.graph.root.widget_store if self.node.graph is not None else None
        if store is None or not self.bindable:
            return
        registered = store.register(node_id, self.name, self._state.type, self._registered_value())
        if registered is not None:
            self._state = registered

    def _registered_value(self) -> Any:
        return self.value

    def callback(self) -> None:
        """The widget's change callback: number widgets round and clamp their value."""
        if self.number is not None:
            self.value = on_number_change(self.value, self.number)


class DomValueWidget(Widget):
    """A DOM widget whose value is read and written through the store key of its node's
    current id (multiline text, markdown, the audio player): ``getValue``/``setValue``."""

    def __init__(self, node: Node, name: Any, type_: str, fallback: Any, *,
                 register_on_set: bool, string_only_read: bool = False,
                 element: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(node, name, type_, fallback, **kwargs)
        self.fallback = fallback        # what the element holds
        self.register_on_set = register_on_set
        self.string_only_read = string_only_read
        self.element = element          # what the element makes of a value it is given

    def _store_state(self) -> WidgetState | None:
        graph = self.node.graph
        if graph is None:
            return None
        return graph.root.widget_store.get(self.node.id, self.name)

    def _get(self) -> Any:
        state = self._store_state()
        stored = state.value if state is not None else None
        if self.string_only_read:
            return stored if isinstance(stored, str) else self.fallback
        return self.fallback if stored is None or stored is UNDEFINED else stored

    def _set(self, v: Any) -> None:
        if self.element is not None:
            self.fallback = self.element(v)
        state = self._store_state()
        if state is not None:
            state.value = v
        elif self.register_on_set and self.node.graph is not None:
            self.node.graph.root.widget_store.register(self.node.id, self.name, self.type, v)

    def bind(self, node_id: str) -> None:
        store = self.node.graph.root.widget_store if self.node.graph is not None else None
        if store is not None and self.bindable:
            store.register(node_id, self.name, self._state.type, self.value)


class ComputedWidget(Widget):
    """A widget whose value is computed (CustomCombo's hidden ``index``)."""

    def __init__(self, node: Node, name: Any, type_: str, compute: Callable[[], Any],
                 **kwargs: Any) -> None:
        super().__init__(node, name, type_, UNDEFINED, bindable=False, **kwargs)
        self.compute = compute

    def _get(self) -> Any:
        return self.compute()

    def _set(self, v: Any) -> None:
        return


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


@dataclass(eq=False)
class InputSlot:
    name: Any
    type: Any
    link: Any = None
    widget: WidgetMarker | None = None
    label: Any = None
    # subgraph node inputs
    subgraph_slot: SubgraphIO | None = None
    widget_id: tuple[str, str] | None = None      # the promoted widget's store key


@dataclass(eq=False)
class OutputSlot:
    name: Any
    type: Any
    links: list[Any] | None = None
    widget: WidgetMarker | None = None      # PrimitiveNode: its first target's marker


@dataclass(eq=False)
class Link:
    id: Any
    type: Any
    origin_id: str
    origin_slot: Any
    target_id: str
    target_slot: Any

    @property
    def origin_is_io(self) -> bool:
        return self.origin_id == SUBGRAPH_INPUT_ID

    @property
    def target_is_io(self) -> bool:
        return self.target_id == SUBGRAPH_OUTPUT_ID


def link_from(item: Any) -> Link | None:
    """A saved link: ``[id, origin, origin_slot, target, target_slot, type]`` or object;
    node ids become strings (``LLink`` keeps ``toNodeId``)."""
    if isinstance(item, list):
        if len(item) < 5:
            return None
        typ = item[5] if len(item) > 5 else UNDEFINED
        return Link(item[0], typ, node_id_of(item[1]), item[2], node_id_of(item[3]), item[4])
    if isinstance(item, dict):
        return Link(item.get("id", UNDEFINED), item.get("type", UNDEFINED),
                    node_id_of(item.get("origin_id", UNDEFINED)),
                    item.get("origin_slot", UNDEFINED),
                    node_id_of(item.get("target_id", UNDEFINED)),
                    item.get("target_slot", UNDEFINED))
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
    target = None if link.target_id == UNASSIGNED_NODE_ID else graph.node_by_id(link.target_id)
    inp = element_at(target.inputs, link.target_slot, wrap=False) if target is not None \
        else None
    sub_in = element_at(graph.io_inputs, link.origin_slot, wrap=False) if (
        link.origin_is_io and graph.is_subgraph) else None
    if sub_in is not None:
        return ResolvedLink(input_node=target, input=inp, subgraph_input=sub_in, link=link)
    origin = None if link.origin_id == UNASSIGNED_NODE_ID else graph.node_by_id(link.origin_id)
    out = element_at(origin.outputs, link.origin_slot, wrap=False) if origin is not None \
        else None
    sub_out = element_at(graph.io_outputs, link.target_slot, wrap=False) if (
        link.target_is_io and graph.is_subgraph) else None
    if sub_out is not None:
        return ResolvedLink(output_node=origin, output=out, subgraph_output=sub_out, link=link)
    return ResolvedLink(input_node=target, input=inp, output_node=origin, output=out,
                        link=link)


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
                 definition: Any = None) -> None:
        self.graph = graph
        self.id: str = UNASSIGNED_NODE_ID
        self.type = type_name
        self.kind = kind            # comfy | primitive | reroute | note | subgraph | missing
        self.definition = definition
        self.comfy_class: str | None = definition.name if definition else None
        self.title: Any = definition.title if definition else UNDEFINED
        self.mode: Any = 0
        self.inputs: list[InputSlot] = []
        self.outputs: list[OutputSlot] = []
        self._widgets: list[Widget] | None = None
        self.properties: dict[str, Any] = {}
        self.widgets_values: Any = UNDEFINED
        self.subgraph: Graph | None = None
        self.added = False
        # PrimitiveNode recreation state (``controlValues`` / ``lastType``)
        self.control_values: list[Any] | None = None
        self.last_type: Any = None
        # dynamic inputs (COMFY_AUTOGROW_V3 / COMFY_MATCHTYPE_V3 groups)
        self.autogrow: dict[str, Any] = {}
        self.match_types: dict[str, dict[str, Any]] = {}

    @property
    def widgets(self) -> list[Widget] | None:
        """``node.widgets`` (None where the editor's node has no widget array)."""
        return self._widgets

    @widgets.setter
    def widgets(self, value: list[Widget] | None) -> None:
        self._widgets = value

    @property
    def virtual(self) -> bool:
        return self.kind in ("primitive", "reroute", "note", "subgraph")

    @property
    def is_subgraph_node(self) -> bool:
        return self.kind == "subgraph"

    def widget_named(self, name: Any) -> Widget | None:
        for w in self.widgets or []:
            if w.name == name and type(w.name) is type(name):
                return w
        return None

    def widget_from_slot(self, slot: InputSlot) -> Widget | None:
        """``getWidgetFromSlot``."""
        return self.widget_named(slot.widget.name) if slot.widget is not None else None

    def widget_value(self, name: str) -> tuple[bool, Any]:
        w = self.widget_named(name)
        return (True, w.value) if w is not None else (False, None)

    def add_widget(self, widget: Widget) -> Widget:
        """``addCustomWidget``: a node already in a graph binds the widget at once."""
        if self._widgets is None:
            self._widgets = []
        self._widgets.append(widget)
        if self.id != UNASSIGNED_NODE_ID and self.added:
            widget.bind(self.id)
        return widget

    def input_link(self, slot: int) -> Link | None:
        """``getInputLink``."""
        if 0 <= slot < len(self.inputs):
            link_id = self.inputs[slot].link
            if link_id is not None and link_id is not UNDEFINED:
                return self.graph.link(link_id)
        return None

    def remove_input(self, index: int) -> None:
        """``removeInput``: disconnect it, drop it, shift later links' target slots."""
        graph = self.graph
        graph.disconnect_input(self, index)
        del self.inputs[index]
        for later in self.inputs[index:]:
            if truthy(later.link):
                link = graph.link(later.link)
                if link is not None and is_number(link.target_slot):
                    link.target_slot -= 1


class SubgraphNode(Node):
    """A subgraph instance: its widgets are the promoted widgets of its inputs, kept in
    the store under (its id, the subgraph input's name)."""

    def __init__(self, graph: Graph, subgraph: Graph) -> None:
        super().__init__(graph, subgraph.id, "subgraph")
        self.subgraph = subgraph
        self.title = subgraph.name

    @property
    def widgets(self) -> list[Widget] | None:
        out: list[Widget] = []
        for slot in self.inputs:
            if slot.widget_id is not None:
                out.append(PromotedWidget(self, slot))
        return out

    @widgets.setter
    def widgets(self, value: list[Widget] | None) -> None:
        return


class PromotedWidget(Widget):
    """The store-backed projection of a subgraph node's promoted input."""

    def __init__(self, node: SubgraphNode, slot: InputSlot) -> None:
        super().__init__(node, slot.name, "text", UNDEFINED, bindable=False)
        self.slot = slot
        state = self._state_now()
        if state is not None:
            self.type = state.type

    def _state_now(self) -> WidgetState | None:
        key = self.slot.widget_id
        if key is None or self.node.graph is None:
            return None
        return self.node.graph.root.widget_store.get(*key)

    def _get(self) -> Any:
        state = self._state_now()
        value = state.value if state is not None else UNDEFINED
        return value if is_widget_value(value) else UNDEFINED

    def _set(self, v: Any) -> None:
        state = self._state_now()
        if state is not None:
            state.value = v

    @property       # type: ignore[override]
    def values(self) -> list[Any] | None:
        """``options.values`` of the store state (a copy of the inner widget's)."""
        state = self._state_now()
        return state.values if state is not None else None

    @values.setter
    def values(self, value: list[Any] | None) -> None:
        return


def is_widget_value(value: Any) -> bool:
    """``isWidgetValue``: undefined, a string, number, boolean or object; not null."""
    return value is UNDEFINED or isinstance(value, str | int | float | bool | list | dict)


# --- graphs ---------------------------------------------------------------------------


@dataclass(eq=False)
class SubgraphIO:
    name: Any
    type: Any
    link_ids: list[Any] = field(default_factory=list)
    label: Any = None
    id: Any = None


class GraphState:
    """``LGraphState``: the id counters (a subgraph uses its root graph's)."""

    __slots__ = ("last_link_id", "last_node_id")

    def __init__(self) -> None:
        self.last_node_id: Any = 0
        self.last_link_id: Any = 0


class Graph:
    def __init__(self, root: Graph | None, graph_id: Any = None) -> None:
        self.root: Graph = root if root is not None else self
        self.id = graph_id
        self.nodes: list[Node] = []
        self._by_id: dict[str, Node] = {}
        self.links: dict[Any, Link] = {}
        self.is_subgraph = root is not None
        self.name: Any = None
        self.io_inputs: list[SubgraphIO] = []
        self.io_outputs: list[SubgraphIO] = []
        self.subgraphs: dict[Any, Graph] = {}        # root only, definition order
        self.path_prefix: list[str] = []             # for error messages
        self.now: datetime = self.root.now if root is not None else datetime.now()
        self._state = GraphState() if root is None else None
        self.widget_store: WidgetStore = WidgetStore() if root is None else root.widget_store
        # match-type inputs waiting for the frame after loading (node, input index), in
        # the order they asked for it (root graph only)
        self.match_type_frames: list[tuple[Node, int]] = []

    @property
    def state(self) -> GraphState:
        """Subgraphs share the root graph's state (its node id counter)."""
        state = self.root._state
        assert state is not None
        return state

    def node_by_id(self, node_id: Any) -> Node | None:
        if node_id is None or node_id is UNDEFINED:
            return None
        key = node_id_of(node_id)
        return None if key == UNASSIGNED_NODE_ID else self._by_id.get(key)

    def link(self, link_id: Any) -> Link | None:
        """``getLink`` (a Map lookup: the id's type matters)."""
        if link_id is None or link_id is UNDEFINED or isinstance(link_id, bool | list | dict):
            return None
        with contextlib.suppress(TypeError):
            return self.links.get(link_id)
        return None

    def link_by_property(self, link_id: Any) -> Link | None:
        """``graph.links[id]`` (the editor's proxy parses the key as an integer)."""
        text = to_string(link_id)
        m = re.match(r"^\s*[+-]?\d+", text)
        key: Any = int(m.group(0)) if m else text
        return self.links.get(key)

    def next_node_id(self) -> str:
        state = self.state
        state.last_node_id = number_value(to_number(state.last_node_id) + 1)
        return node_id_of(state.last_node_id)

    def add(self, node: Node) -> None:
        """``LGraph.add``: a missing or duplicate id gets the next free number; the node's
        widgets join the store."""
        parsed = parse_node_id(node.id)
        node.id = parsed if parsed is not None else UNASSIGNED_NODE_ID
        if node.id != UNASSIGNED_NODE_ID and node.id in self._by_id:
            node.id = self.next_node_id()
        if node.id == UNASSIGNED_NODE_ID:
            node.id = self.next_node_id()
        else:
            number = numeric_node_id(node.id)
            state = self.state
            if number is not None and to_number(state.last_node_id) < number:
                state.last_node_id = number
        node.graph = self
        node.added = True
        for widget in node.widgets or []:
            widget.bind(node.id)
        self.nodes.append(node)
        self._by_id[node.id] = node

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

