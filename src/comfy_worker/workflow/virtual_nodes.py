"""The editor's two value-carrying virtual nodes: PrimitiveNode and (legacy) Reroute (pure).

A PrimitiveNode owns a widget copied from the first input it feeds (range merged over all
the INT/FLOAT inputs it feeds, value clamped) and, before the prompt is built, writes its
value into every input it feeds (``applyToGraph``). A Reroute passes a link through; right
after loading, the editor walks each reroute chain, fixes its types and, when it ends in
widget inputs, gives a primitive feeding it a fresh widget. Both are left out of the prompt.

This follows the frontend's ``widgetInputs`` and ``rerouteNode`` extensions (1.48.7),
including their quirks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from comfy_worker.workflow.graph import (
    Config,
    Graph,
    InputSlot,
    Link,
    Node,
    OutputSlot,
    Widget,
    WidgetMarker,
    all_nodes,
    conversion_error,
    is_valid_connection,
)
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    element_at,
    is_number,
    to_number,
    to_string,
    truthy,
)
from comfy_worker.workflow.prompt_text import apply_text_replacements
from comfy_worker.workflow.widgets import (
    CONSTRUCTORS,
    add_control_widgets,
    match_type_connection_changed,
)

REPLACE_PROPERTY = "Run widget replace on values"
_MERGE_IGNORED = frozenset({"default", "forceInput", "defaultInput", "control_after_generate",
                            "multiline", "tooltip", "dynamicPrompts"})


# --- input specs (the editor's mergeInputSpec family) -----------------------------------------


def spec_type(config: Config) -> Any:
    head = config[0]
    return "COMBO" if isinstance(head, list) or head == "COMBO" else head


def _combo_options(config: Config) -> list[Any]:
    head, opts = config
    options = opts.get("options") if head == "COMBO" else head
    return list(options) if isinstance(options, list) else []


def _strict(a: Any, b: Any) -> bool:
    if isinstance(a, list | dict) or isinstance(b, list | dict):
        return a is b
    if type(a) is not type(b) and not (is_number(a) and is_number(b)
                                       and not isinstance(a, bool) and not isinstance(b, bool)):
        return False
    if isinstance(a, float) and math.isnan(a):
        return False
    return bool(a == b)


def _linked_targets(graph: Graph, link_ids: Iterable[Any]) -> Iterator[tuple[Link, Node]]:
    """Each of ``link_ids`` (a snapshot: callers may disconnect as they go) whose link and
    target node exist, with that target."""
    for link_id in list(link_ids):
        link = graph.link_by_property(link_id)
        target = graph.node_by_id(link.target_id) if link is not None else None
        if link is not None and target is not None:
            yield link, target


def _nil(v: Any) -> bool:
    return v is None or v is UNDEFINED


def _merge_common(a: Config, b: Config) -> Config | None:
    t = spec_type(a)
    o, i = a[1] or {}, b[1] or {}
    for key in (set(o) | set(i)) - _MERGE_IGNORED:
        x, y = o.get(key, UNDEFINED), i.get(key, UNDEFINED)
        if not (_strict(x, y) or (_nil(x) and _nil(y))):
            return None
    return (t, {**o, **i})


def _lcm(a: Any, b: Any) -> Any:
    x, y = to_number(a), to_number(b)
    g1, g2 = x, y
    for _ in range(10000):
        if g2 == 0:
            break
        g1, g2 = g2, math.fmod(g1, g2)
    return abs(x * y) / g1 if g1 else math.nan


def _merge_numeric(a: Config, b: Config) -> Config | None:
    o, i = a[1] or {}, b[1] or {}

    def rng(spec: Mapping[str, Any]) -> tuple[float, float]:
        lo, hi = spec.get("min"), spec.get("max")
        return (-math.inf if _nil(lo) else lo, math.inf if _nil(hi) else hi)

    (alo, ahi), (blo, bhi) = rng(o), rng(i)
    try:
        if alo > bhi or ahi < blo:
            return None
    except TypeError:
        return None
    common = {"min": max(alo, blo), "max": min(ahi, bhi),
              "step": _lcm(o.get("step", 1) if not _nil(o.get("step")) else 1,
                           i.get("step", 1) if not _nil(i.get("step")) else 1)}
    return _merge_common((a[0], {**o, **common}), (a[0], {**i, **common}))


def _merge_combo(a: Config, b: Config) -> Config | None:
    right = _combo_options(b)
    common: list[Any] = []
    for value in _combo_options(a):
        if value in right and value not in common:
            common.append(value)
    if not common:
        return None
    return _merge_common(("COMBO", {**(a[1] or {}), "options": common}),
                         ("COMBO", {**(b[1] or {}), "options": common}))


def merge_input_spec(a: Config, b: Config) -> Config | None:
    """``mergeInputSpec``: one spec both inputs accept, or None."""
    t = spec_type(a)
    if t != spec_type(b):
        return None
    if a[0] in ("INT", "FLOAT"):
        return _merge_numeric(a, b)
    if t == "COMBO":
        return _merge_combo(a, b)
    return _merge_common(a, b)


def widget_config(slot: InputSlot | OutputSlot) -> Config:
    """``getWidgetConfig``: a merged spec stored on the slot's widget, else its own."""
    marker = slot.widget
    if marker is not None:
        custom = marker.get_custom()
        if custom is not None:
            return custom
        config = marker.get_config()
        if config is not None:
            return config
    return ("*", {})


def merge_if_valid(slot: InputSlot | OutputSlot, other: Config, *, force: bool,
                   recreate: Callable[[], Widget | None] | None,
                   owner: Node | None = None) -> Mapping[str, Any]:
    """``mergeIfValid``: store the merged spec on the slot's widget and, for a primitive,
    re-make its widget (clamped to the merged range, then its change callback)."""
    merged = merge_input_spec(widget_config(slot), other)
    if merged is not None or force:
        if merged is not None and slot.widget is not None:
            slot.widget.custom = merged
        widget = recreate() if recreate is not None else None
        if widget is not None:
            opts = widget.number
            if opts is not None:
                if _js_less(widget.value, opts.min):
                    widget.value = opts.min
                if _js_less(opts.max, widget.value):
                    widget.value = opts.max
            widget.callback()
            if owner is not None:       # a primitive's callback also applies its value
                apply_primitive(owner)
    return merged[1] if merged is not None else {}


def _js_less(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a < b
    x, y = to_number(a), to_number(b)
    return not (math.isnan(x) or math.isnan(y)) and x < y


def _v1_to_v2(config: Config, name: str) -> dict[str, Any]:
    """``transformInputSpecV1ToV2(config, {name})``."""
    head, opts = config
    base = {"name": name, "isOptional": False, **(opts or {})}
    if isinstance(head, list) or head == "COMBO":
        return {"type": "COMBO", **base, "options": _combo_options(config)}
    if isinstance(head, str):
        return {"type": head, **base}
    return {"type": "UNKNOWN", **base}


# --- PrimitiveNode -------------------------------------------------------------------------

# ComfyWidgets: the core widget constructors (``isValidWidgetType``); a primitive makes its
# widget with one of them, any other type gets a bare widget of that name.
CORE_WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "COLOR",
    "IMAGECOMPARE", "BOUNDING_BOX", "CHART", "GALLERIA", "PAINTER", "COMPOSITOR",
    "TEXTAREA", "CURVE", "RANGE", "BOUNDING_BOXES", "COLORS", "COMFY_DYNAMICCOMBO_V3",
})


def primitive_after_configure(node: Node) -> None:
    """``onAfterGraphConfigured``: make the widget, take the saved values, merge ranges."""
    out = node.outputs[0] if node.outputs else None
    if out is None or not out.links or node.widgets:
        return
    _create(node)
    values = node.widgets_values
    if node.widgets is not None and isinstance(values, list):
        for widget, value in zip(node.widgets, values, strict=False):
            widget.value = value
    _merge_widget_config(node)


def _create(node: Node) -> None:
    """``_onFirstConnection``: the widget its first target input has (links are looked
    up in the primitive's own graph)."""
    out = node.outputs[0]
    graph = node.graph
    if out.links is None or graph is None:
        on_last_disconnect(node)
        return
    link = graph.link_by_property(out.links[0]) if out.links else None
    if link is None:
        return
    target = graph.node_by_id(link.target_id)
    if target is None:
        return
    slot = element_at(target.inputs, link.target_slot, wrap=False)
    if slot is None:
        return
    if slot.widget is not None:
        marker = slot.widget
    elif to_string(slot.type) in CORE_WIDGET_TYPES:
        marker = WidgetMarker(slot.name, (slot.type, {}))
    else:
        return
    config = marker.get_config()
    if config is None:
        return
    out.type = "COMBO" if isinstance(config[0], list) else config[0]
    out.name = out.type
    out.widget = marker
    _make_widget(node, marker.get_custom() or config, target, marker.name)


def _make_widget(node: Node, config: Config, target: Node, name: Any) -> None:
    """``_createWidget``."""
    head = "COMBO" if isinstance(config[0], list) else config[0]
    if node.widgets is None:
        node.widgets = []
    if isinstance(head, str) and head in CORE_WIDGET_TYPES and head in CONSTRUCTORS:
        main = CONSTRUCTORS[head](node, "value", _v1_to_v2(config, "value"))
    else:
        main = node.add_widget(Widget(node, "value", to_string(head).lower(), None))
    if main is None:
        return
    if target.widgets is not None:
        source = target.widget_named(name)
        if source is not None:
            main.value = source.value
    opts = config[1] or {}
    if not truthy(opts.get("control_after_generate")) and main.type in ("number", "combo"):
        values = node.widgets_values if isinstance(node.widgets_values, list) else []
        control = values[1] if len(values) > 1 and truthy(values[1]) else "fixed"
        add_control_widgets(node, main, control, opts, filter_list=True)
        extra = values[2] if len(values) > 2 else None
        if truthy(extra) and len(node.widgets) == 3:
            node.widgets[2].value = extra
    saved = node.control_values
    if node.widgets and node.last_type == node.widgets[0].type and saved is not None \
            and len(saved) == len(node.widgets) - 1:
        for i, value in enumerate(saved):
            node.widgets[i + 1].value = value


def _clear_widgets(node: Node) -> None:
    """``_removeWidgets`` (remembers the control values for the re-made widget)."""
    if node.widgets is not None:
        node.control_values = [w.value for w in node.widgets[1:]]
        node.last_type = node.widgets[0].type if node.widgets else None
        del node.widgets[:]


def on_last_disconnect(node: Node) -> None:
    out = node.outputs[0]
    out.type = "*"
    out.name = "connect to widget input"
    out.widget = None
    _clear_widgets(node)


def recreate_widget(node: Node) -> Widget | None:
    """``recreateWidget``: re-make the widget (new config), keep the values."""
    values = [w.value for w in node.widgets] if node.widgets is not None else None
    _clear_widgets(node)
    _create(node)
    if values and node.widgets is not None:
        for i, widget in enumerate(node.widgets):
            widget.value = values[i] if i < len(values) else UNDEFINED
    node.control_values = None
    node.last_type = None
    return node.widgets[0] if node.widgets else None


def _merge_widget_config(node: Node) -> None:
    """``_mergeWidgetConfig``: an INT/FLOAT primitive takes the range all its targets
    accept."""
    out = node.outputs[0]
    links = out.links or []
    had_custom = out.widget is not None and out.widget.get_custom() is not None
    if had_custom and out.widget is not None:
        out.widget.custom = None
    if len(links) < 2 and had_custom:
        if links:
            recreate_widget(node)
        return
    config = out.widget.get_config() if out.widget is not None else None
    if config is None or config[0] not in ("INT", "FLOAT") or node.graph is None:
        return
    for link, target in _linked_targets(node.graph, links):
        slot = element_at(target.inputs, link.target_slot, wrap=False)
        if slot is None or slot.widget is None:
            continue
        other = slot.widget.get_config()
        if other is not None:
            merge_if_valid(out, other, force=had_custom,
                           recreate=lambda: recreate_widget(node), owner=node)


def apply_primitive(node: Node) -> None:
    """``applyToGraph`` (``applyFirstWidgetValueToGraph``): the primitive's value into
    every widget it feeds, through each widget's change callback."""
    graph = node.graph
    source = node.widgets[0] if node.widgets else None
    out = node.outputs[0] if node.outputs else None
    if source is None or graph is None or out is None or not out.links:
        return
    value = source.value
    if truthy(value) and node.properties.get(REPLACE_PROPERTY):
        if not isinstance(value, str):
            raise conversion_error(node, "text replacement is on but its value is not text")
        value = apply_text_replacements(value, all_nodes(graph), graph.root.now)
    for link_id in list(out.links):
        link = graph.link_by_property(link_id)
        if link is None:
            continue
        target = graph.node_by_id(link.target_id)
        slot = element_at(target.inputs, link.target_slot, wrap=False) if target else None
        if target is None or slot is None:
            continue
        name = slot.widget.name if slot.widget is not None else None
        if not truthy(name):
            continue
        widget = target.widget_named(name)
        if widget is None:
            continue
        widget.value = value
        widget.callback()


# --- Reroute -----------------------------------------------------------------------------------


def reroute_connections_changed(node: Node) -> None:
    """The reroute's ``onConnectionsChange`` the editor runs on the frame after loading:
    type the chain and, if it ends in widget inputs, pass their spec up to a primitive.
    Raises ``InvalidConnection`` where a match-type target throws."""
    graph = node.graph
    chain: list[Node] = []
    current: Node | None = node
    origin_type: Any = None
    while current is not None:
        chain.insert(0, current)
        if not current.inputs:
            return
        link_id = current.inputs[0].link
        if link_id is None:
            break
        link = graph.link_by_property(link_id)
        if link is None:
            return
        origin = graph.node_by_id(link.origin_id)
        if origin is None:
            return
        if origin.kind == "reroute":
            if origin is node:
                graph.disconnect_input(current, link.target_slot)
                current = None
            else:
                current = origin
        else:
            out = element_at(origin.outputs, link.origin_slot, wrap=False)
            origin_type = out.type if out is not None and not _nil(out.type) else None
            break
    stack = [node]
    target_type: Any = None
    while stack:
        current = stack.pop()
        for link, target in _linked_targets(
                graph, current.outputs[0].links or [] if current.outputs else []):
            if target.kind == "reroute":
                stack.append(target)
                chain.append(target)
                continue
            slot = element_at(target.inputs, link.target_slot, wrap=False)
            if slot is None:
                return
            ok = not truthy(origin_type) or not truthy(slot.type) \
                or is_valid_connection(origin_type, slot.type)
            if not ok:
                graph.disconnect_input(target, link.target_slot)
                continue
            # the target's onConnectionsChange; it sees this chain's types as they were
            if target.match_types:
                match_type_connection_changed(target, link.target_slot)
            slot = element_at(target.inputs, link.target_slot, wrap=False)
            target_type = slot.type if slot is not None else None
    shown = origin_type or target_type or "*"
    merged: Mapping[str, Any] | None = None
    head: Any = None
    for reroute in chain:
        if reroute.outputs:
            reroute.outputs[0].type = origin_type or "*"
        for link, target in _linked_targets(
                graph, reroute.outputs[0].links or [] if reroute.outputs else []):
            slot = element_at(target.inputs, link.target_slot, wrap=False)
            if slot is not None and slot.widget is not None:
                config = widget_config(slot)
                if merged is None:
                    merged = config[1] if config[1] is not None else {}
                    head = config[0]
                merged = merge_if_valid(slot, (config[0], merged), force=False, recreate=None)
    for reroute in chain:
        if not reroute.inputs:
            continue
        if merged is not None and truthy(target_type):
            reroute.inputs[0].widget = WidgetMarker("value")
            _set_widget_config(reroute.inputs[0], (shown if head is None else head, merged),
                               graph)
        else:
            _set_widget_config(reroute.inputs[0], None, graph)


def _set_widget_config(slot: InputSlot, config: Config | None, graph: Graph) -> None:
    """``setWidgetConfig`` on a reroute's input: a primitive feeding it is re-made (or,
    when the chain no longer ends in a widget, disconnected)."""
    if slot.widget is None:
        return
    if config is not None:
        slot.widget.config = config
    else:
        slot.widget = None
    link = graph.link(slot.link)
    if link is None:
        return
    origin = graph.node_by_id(link.origin_id)
    if origin is None or origin.type != "PrimitiveNode":
        return
    if config is not None:
        recreate_widget(origin)
    else:
        for out_link, target in _linked_targets(origin.graph, origin.outputs[0].links or []):
            origin.graph.disconnect_input(target, out_link.target_slot)
        origin.outputs[0].links = []
        on_last_disconnect(origin)
