"""The sockets and widgets the editor gives a node of a backend type (pure).

This follows the frontend's ``litegraphService`` (``addInputs``: first one socket per
input that has no widget, then each widget with its socket), its widget constructors
(``scripts/widgets.ts`` and the built-in extensions' custom widgets) and the V3 dynamic
inputs (``core/graph/widgets/dynamicWidgets.ts``):

- ``COMFY_DYNAMICCOMBO_V3``: a COMBO whose chosen option brings its own inputs, named
  ``combo.input``; choosing (also while loading the saved values) removes the previous
  option's inputs and widgets and inserts the new ones right after the combo.
- ``COMFY_AUTOGROW_V3``: a group of numbered sockets (``images.image0`` ...) that grows
  one group past the last connected one.
- ``COMFY_MATCHTYPE_V3``: a socket whose type follows what is connected.

Then the extensions' hooks on a fresh node: dynamic prompts, the save nodes' file name
replacements, the text preview widgets, CustomCombo's option widgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from comfy_worker.workflow.graph import (
    ComputedWidget,
    DomValueWidget,
    InputSlot,
    Node,
    NumberOptions,
    OutputSlot,
    Widget,
    WidgetMarker,
    is_valid_connection,
    resolve_link,
)
from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    is_number,
    js_key_order,
    textarea_value,
    to_string,
    truthy,
)
from comfy_worker.workflow.nodedefs import (
    SEED_NAMES,
    TEXT_PREVIEW_NODES,
    VIEWPORT_STATE_NODES,
    WIDGET_TYPES,
    NodeDef,
    v1_to_v2,
    v2_to_v1,
)

Spec = Mapping[str, Any]


class NodeBuildError(Exception):
    """The editor's node constructor throws (the node is then created as missing)."""


def _given(spec: Spec, key: str, default: Any) -> Any:
    """``spec.key ?? default``."""
    value = spec.get(key, UNDEFINED)
    return default if value is None or value is UNDEFINED else value


# --- control widgets (addValueControlWidgets) ---------------------------------------------


def _control_name(spec: Spec, default_name: str, override: Any) -> Any:
    if truthy(override):
        return override
    if isinstance(spec.get(default_name), str):
        return spec[default_name]
    prefix = spec.get("control_prefix")
    if truthy(prefix):
        return f"{to_string(prefix)} {default_name}"
    return default_name


def add_control_widgets(node: Node, target: Widget, default: Any, spec: Spec, *,
                        filter_list: bool, name_override: Any = None) -> list[Widget]:
    """``addValueControlWidgets``: the "control after generate" combo (and, for a COMBO,
    its filter text); both are saved in ``widgets_values`` but never sent."""
    if not truthy(default):
        default = "randomize"
    values = ["fixed", "increment", "decrement", "randomize"]
    if target.type == "combo":
        values.append("increment-wrap")
    made = [node.add_widget(Widget(node, _control_name(spec, "control_after_generate",
                                                       name_override),
                                   "combo", default, api=False, values=values))]
    if target.type == "combo" and filter_list:
        made.append(node.add_widget(Widget(node, _control_name(spec, "control_filter_list",
                                                               None),
                                           "string", "", api=False)))
    return made


def _control_default(spec: Spec, fallback: str) -> str:
    control = spec.get("control_after_generate")
    return control if isinstance(control, str) else fallback


# --- core widget constructors -------------------------------------------------------------


def _int_widget(node: Node, name: Any, spec: Spec) -> Widget:
    display = spec.get("display")
    kind = "slider" if display == "slider" else "knob" if display == "knob" else "number"
    step = _given(spec, "step", 1)
    widget = node.add_widget(Widget(
        node, name, kind, _given(spec, "default", 0), spec=spec,
        number=NumberOptions(True, _given(spec, "min", 0), _given(spec, "max", 2048), step)))
    control = spec.get("control_after_generate", UNDEFINED)
    if control is None or control is UNDEFINED:
        control = name in SEED_NAMES
    if truthy(control):
        override = spec.get("control_after_generate")
        add_control_widgets(node, widget, _control_default(spec, "randomize"), spec,
                            filter_list=False,
                            name_override=override if isinstance(override, str) else None)
    return widget


def _float_precision(step: Any) -> int:
    if not is_number(step) or step <= 0:
        return 0
    return max(0, -math.floor(math.log10(step)))


def _float_widget(node: Node, name: Any, spec: Spec) -> Widget:
    display = spec.get("display")
    kind = ("gradientslider" if display == "gradientslider" else "slider"
            if display == "slider" else "knob" if display == "knob" else "number")
    step = _given(spec, "step", 0.5)
    precision = _float_precision(step)
    spec_round = spec.get("round")
    rounding = 10 ** -precision if precision and not truthy(spec_round) else spec_round
    widget = node.add_widget(Widget(
        node, name, kind, _given(spec, "default", 0), spec=spec,
        number=NumberOptions(False, _given(spec, "min", 0), _given(spec, "max", 2048), step,
                             round=rounding if truthy(rounding) else None,
                             precision=precision)))
    if truthy(spec.get("control_after_generate")):
        override = spec.get("control_after_generate")
        add_control_widgets(node, widget, "fixed", spec, filter_list=False,
                            name_override=override if isinstance(override, str) else None)
    return widget


def _boolean_widget(node: Node, name: Any, spec: Spec) -> Widget:
    return node.add_widget(Widget(node, name, "toggle", _given(spec, "default", False),
                                  spec=spec))


def string_widget(node: Node, name: Any, spec: Spec) -> Widget:
    default = _given(spec, "default", "")
    widget: Widget
    if truthy(spec.get("multiline")):
        widget = node.add_widget(DomValueWidget(
            node, name, "customtext", textarea_value(default), register_on_set=True,
            element=textarea_value, spec=spec))
    else:
        widget = node.add_widget(Widget(node, name, "text", default, spec=spec))
    if isinstance(spec.get("dynamicPrompts"), bool):
        widget.dynamic_prompts = spec["dynamicPrompts"]
    return widget


def markdown_widget(node: Node, name: Any, spec: Spec) -> Widget:
    default = _given(spec, "default", "")
    return node.add_widget(DomValueWidget(node, name, "MARKDOWN", textarea_value(default),
                                          register_on_set=False, string_only_read=True,
                                          element=textarea_value, spec=spec))


def _combo_default(spec: Spec) -> Any:
    if truthy(spec.get("default")):
        return spec["default"]
    options = spec.get("options")
    if isinstance(options, list) and options:
        return options[0]
    if truthy(spec.get("remote")):
        return "Loading..."
    return UNDEFINED


def _combo_widget(node: Node, name: Any, spec: Spec) -> Widget:
    options = spec.get("options")
    options = list(options) if isinstance(options, list) else []
    if truthy(spec.get("multi_select")):
        widget = node.add_widget(Widget(node, name, "custom", [], spec=spec))
        if truthy(spec.get("control_after_generate")):
            add_control_widgets(node, widget, _control_default(spec, "fixed"), spec,
                                filter_list=True)
        return widget
    default = _combo_default(spec)
    widget = node.add_widget(Widget(node, name, "combo", default, values=options, spec=spec))
    remote = spec.get("remote")
    if truthy(remote):
        widget.remote_default = default
        node.add_widget(Widget(node, "Auto-refresh after generation", "toggle", False,
                               api=False))
        if isinstance(remote, dict) and truthy(remote.get("refresh_button")):
            node.add_widget(Widget(node, "refresh", "button", "refresh"))
    if truthy(spec.get("control_after_generate")):
        add_control_widgets(node, widget, _control_default(spec, "randomize"), spec,
                            filter_list=True)
    return widget


def _image_upload_widget(node: Node, name: Any, spec: Spec) -> Widget:
    target = spec.get("imageInputName")
    if node.widget_named(target) is None:
        raise NodeBuildError(f'Widget "{to_string(target)}" not found on node')
    return node.add_widget(Widget(node, name, "button", "image", api=False, spec=spec))


def _color_widget(node: Node, name: Any, spec: Spec) -> Widget:
    for w in node.widgets or []:
        if w.name == name and w.type == "color":
            return w
    options = spec.get("options") if isinstance(spec.get("options"), dict) else {}
    default = _given(spec, "default", _given(options, "default", "#000000"))
    return node.add_widget(Widget(node, name, "color", default, spec=spec))


def _image_compare_widget(node: Node, name: Any, spec: Spec) -> Widget:
    options = spec.get("options") if isinstance(spec.get("options"), dict) else {}
    api = options.get("serialize") is not False
    return node.add_widget(Widget(node, name, "imagecompare", ["", ""], serialize=False,
                                  api=api, spec=spec))


def _bounding_box_widget(node: Node, name: Any, spec: Spec) -> Widget:
    default = spec.get("default")
    box = dict(default) if isinstance(default, dict) else {"x": 0, "y": 0, "width": 512,
                                                           "height": 512}
    kind = "imagecrop" if spec.get("component") == "ImageCrop" else "boundingbox"
    widget = node.add_widget(Widget(node, name, kind, box, spec=spec))
    for field in ("x", "y", "width", "height"):
        node.add_widget(Widget(node, field, "number", box.get(field, UNDEFINED), api=False,
                               number=NumberOptions(True, 1 if field in ("width", "height")
                                                    else 0, 8192, 1)))
    return widget


def _options_widget(kind: str, key: str, default: Callable[[], Any]
                    ) -> Callable[[Node, Any, Spec], Widget]:
    def make(node: Node, name: Any, spec: Spec) -> Widget:
        options = spec.get("options") if isinstance(spec.get("options"), dict) else {}
        value = options.get(key)
        return node.add_widget(Widget(node, name, kind, value if truthy(value) else default(),
                                      spec=spec))
    return make


def _default_widget(kind: str, default: Callable[[Spec], Any], **kwargs: Any
                    ) -> Callable[[Node, Any, Spec], Widget]:
    def make(node: Node, name: Any, spec: Spec) -> Widget:
        return node.add_widget(Widget(node, name, kind, default(spec), spec=spec, **kwargs))
    return make


def _curve_default(spec: Spec) -> Any:
    default = spec.get("default")
    if truthy(default) and isinstance(default, dict):
        points = default.get("points")
        return {**default, "points": list(points) if isinstance(points, list) else points}
    return {"points": [[0, 0], [1, 1]], "interpolation": "monotone_cubic"}


def _compositor_default(spec: Spec) -> Any:
    default = spec.get("default")
    return default if isinstance(default, dict) else {}


def _list_default(spec: Spec) -> Any:
    default = spec.get("default")
    return list(default) if isinstance(default, list) else []


# --- the built-in extensions' custom widgets ---------------------------------------------


def _audio_ui_widget(node: Node, name: Any, spec: Spec) -> Widget:
    return node.add_widget(DomValueWidget(node, name, "audioUI", "", register_on_set=False,
                                          serialize=False, api=False, spec=spec))


def _audio_upload_widget(node: Node, name: Any, spec: Spec) -> Widget:
    return node.add_widget(Widget(node, name, "button", "", api=False, spec=spec))


def _audio_record_widget(node: Node, name: Any, spec: Spec) -> Widget:
    widget = node.add_widget(DomValueWidget(node, name, "audioUI", "", register_on_set=False,
                                            spec=spec))
    widget.serialize_value = lambda w: ""
    node.add_widget(Widget(node, name, "audiorecord", "", api=False))
    return widget


def _webcam_widget(node: Node, name: Any, spec: Spec) -> Widget:
    widget = node.add_widget(DomValueWidget(node, name, "WEBCAM", "", register_on_set=False,
                                            spec=spec))
    widget.browser_only = "its image is a capture of the browser's camera"
    return widget


def _webcam_button(node: Node) -> None:
    """Comfy.WebcamCapture's ``nodeCreated``: a capture button that is sent as undefined."""
    button = node.add_widget(Widget(node, "waiting for camera...", "button", "capture"))
    button.serialize_value = lambda w: UNDEFINED


def _load_3d_widget(node: Node, name: Any, spec: Spec) -> Widget:
    comfy_class = node.comfy_class or ""
    input_name = "viewport_state" if comfy_class in VIEWPORT_STATE_NODES else "image"
    if node.widget_named("model_file") is not None:
        node.properties["Resource Folder"] = ""
        node.add_widget(Widget(node, "upload 3d model", "button", "upload3dmodel"))
        node.add_widget(Widget(node, "upload extra resources", "button",
                               "uploadExtraResources"))
        node.add_widget(Widget(node, "clear", "button", "clear"))
    widget = node.add_widget(ComputedWidget(node, input_name, "load3D", lambda: "", spec=spec))
    widget.browser_only = "its value is a render of the editor's 3D viewer"
    return widget


def _preview_3d_widget(node: Node, name: Any, spec: Spec) -> Widget:
    """A Vue component widget without getValue/setValue: its value is always ""."""
    return node.add_widget(ComputedWidget(node, "image", "load3D", lambda: "", spec=spec))


def _load_3d_advanced_widget(node: Node, name: Any, spec: Spec) -> Widget:
    widget = node.add_widget(ComputedWidget(node, "viewport_state", "load3DAdvanced",
                                            lambda: "", spec=spec))
    widget.browser_only = "its value is the state of the editor's 3D viewer"
    return widget


Constructor = Callable[[Node, Any, Spec], Widget | None]

CONSTRUCTORS: dict[str, Constructor] = {
    "INT": _int_widget,
    "FLOAT": _float_widget,
    "BOOLEAN": _boolean_widget,
    "STRING": string_widget,
    "MARKDOWN": markdown_widget,
    "COMBO": _combo_widget,
    "IMAGEUPLOAD": _image_upload_widget,
    "COLOR": _color_widget,
    "IMAGECOMPARE": _image_compare_widget,
    "BOUNDING_BOX": _bounding_box_widget,
    "CHART": _options_widget("chart", "data", dict),
    "GALLERIA": _options_widget("galleria", "images", list),
    "PAINTER": _default_widget("painter", lambda s: _given(s, "default", "")),
    "COMPOSITOR": _default_widget("compositor", _compositor_default),
    "TEXTAREA": _options_widget("textarea", "default", str),
    "CURVE": _default_widget("curve", _curve_default),
    "RANGE": _default_widget("range", lambda s: dict(s["default"]) if isinstance(
        s.get("default"), dict) else {"min": 0.0, "max": 1.0}),
    "BOUNDING_BOXES": _default_widget("boundingboxes", _list_default),
    "COLORS": _default_widget("colors", _list_default),
    "WEBCAM": _webcam_widget,
    "AUDIO_UI": _audio_ui_widget,
    "AUDIOUPLOAD": _audio_upload_widget,
    "AUDIO_RECORD": _audio_record_widget,
    "LOAD_3D": _load_3d_widget,
    "PREVIEW_3D": _preview_3d_widget,
    "LOAD_3D_ADVANCED": _load_3d_advanced_widget,
}
assert set(CONSTRUCTORS) | {"COMFY_DYNAMICCOMBO_V3"} == WIDGET_TYPES


# --- COMFY_DYNAMICCOMBO_V3 --------------------------------------------------------------


def _dynamic_combo_options(spec: Spec) -> dict[str, Any]:
    """``zDynamicComboInputSpec`` parsed: option key → its inputs (last one wins, in the
    order JavaScript enumerates object keys)."""
    options = spec.get("options")
    if not isinstance(options, list):
        raise NodeBuildError("invalid DynamicCombo spec")
    found: dict[str, Any] = {}
    for option in options:
        if not isinstance(option, dict) or not isinstance(option.get("key"), str) \
                or not isinstance(option.get("inputs"), dict):
            raise NodeBuildError("invalid DynamicCombo spec")
        inputs = option["inputs"]
        found[option["key"]] = {k: inputs[k] for k in ("required", "optional")
                                if isinstance(inputs.get(k), dict)}
    return {k: found[k] for k in js_key_order(list(found))}


class DynamicCombo(Widget):
    """The combo of a ``COMFY_DYNAMICCOMBO_V3`` input: setting its value rebuilds the
    chosen option's inputs (``updateWidgets``)."""

    def __init__(self, node: Node, name: Any, options: dict[str, Any], spec: Spec) -> None:
        keys = list(options)
        super().__init__(node, name, "combo", keys[0] if keys else UNDEFINED, values=keys,
                         spec=spec)
        self.options = options
        self.local = self._state.value

    def _get(self) -> Any:
        state = self._store_state()
        value = state.value if state is not None else None
        return self.local if value is None or value is UNDEFINED else value

    def _set(self, v: Any) -> None:
        state = self._store_state()
        if state is not None:
            state.value = v
        self.local = v
        update_dynamic_combo(self.node, self, v)

    def _store_state(self) -> Any:
        graph = self.node.graph
        if graph is None or not self.node.added:
            return None
        return graph.root.widget_store.get(self.node.id, self.name)


def _dynamic_combo_widget(node: Node, name: Any, spec: Spec) -> Widget:
    widget = DynamicCombo(node, name, _dynamic_combo_options(spec), spec)
    node.add_widget(widget)
    widget.value = widget.local
    return widget


def _in_group(slot_name: Any, group: str) -> bool:
    return isinstance(slot_name, str) and slot_name.startswith(group + ".")


def _take(items: list[Any], pred: Callable[[Any], bool]) -> list[Any]:
    """es-toolkit ``remove``: drop the matching items in place, return them."""
    taken = [x for x in items if pred(x)]
    items[:] = [x for x in items if not pred(x)]
    return taken


def splice_inputs(node: Node, start: int, count: int = -1, *add: InputSlot
                  ) -> list[InputSlot]:
    """``spliceInputs``: splice ``node.inputs`` and re-point the moved links."""
    if count < 0:
        removed = node.inputs[start:]
        del node.inputs[start:]
        return removed
    removed = node.inputs[start:start + count]
    node.inputs[start:start + count] = list(add)
    graph = node.graph if node.added else None
    for offset, slot in enumerate(node.inputs[start:]):
        link = graph.link(slot.link) if graph is not None and truthy(slot.link) else None
        if link is not None:
            link.target_slot = start + offset
    return removed


def update_dynamic_combo(node: Node, combo: DynamicCombo, value: Any) -> None:
    """``updateWidgets``."""
    widgets = node.widgets
    assert widgets is not None
    group = to_string(combo.name)
    chosen = combo.options.get(to_string(value)) if truthy(value) else None
    removed_inputs = _take(node.inputs, lambda s: _in_group(s.name, group))
    for widget in _take(widgets, lambda w: _in_group(w.name, group)):
        if node.added and node.graph is not None:
            node.graph.root.widget_store.delete(node.id, widget.name)
    if chosen is None:
        return
    insertion = next((i for i, w in enumerate(widgets) if w is combo), -1) + 1
    if insertion == 0:
        raise NodeBuildError("Dynamic widget doesn't exist on node")
    start_widgets, start_inputs = len(widgets), len(node.inputs)
    for index, part in enumerate((chosen.get("required"), chosen.get("optional"))):
        for key in js_key_order(list(part or {})):
            spec = v1_to_v2(part[key], f"{group}.{key}", index != 0)
            spec["display_name"] = key
            add_node_input(node, spec)
    added_widgets = widgets[start_widgets:]
    del widgets[start_widgets:]
    widgets[insertion:insertion] = added_widgets
    input_insertion = next((i for i, s in enumerate(node.inputs) if s.name == combo.name),
                           -1) + 1
    if input_insertion == 0:
        if not added_widgets and len(node.inputs) != start_inputs:
            raise NodeBuildError(f"Failed to find input socket for {group}")
        return
    added = splice_inputs(node, start_inputs)
    moved: list[InputSlot] = []
    for slot in added:
        existing = next((i for i, s in enumerate(node.inputs) if s.name == slot.name), -1)
        moved.append(slot if existing == -1 else splice_inputs(node, existing, 1)[0])
    splice_inputs(node, input_insertion, 0, *moved)
    graph = node.graph if node.added else None
    for old in removed_inputs:
        index = next((i for i, s in enumerate(node.inputs) if s.name == old.name), -1)
        if index == -1:
            node.inputs.append(old)
            if graph is not None:
                node.remove_input(len(node.inputs) - 1)
            else:
                node.inputs.pop()
            continue
        node.inputs[index].link = old.link
        if not truthy(old.link) or graph is None:
            continue
        link = graph.link_by_property(old.link)
        if link is None:
            continue
        link.target_slot = index
        connections_changed(node, index, True, link)


# --- COMFY_AUTOGROW_V3 / COMFY_MATCHTYPE_V3 ----------------------------------------------


def _autogrow_name(ordinal: int, key: Any, group: str, node: Node) -> tuple[str, Any]:
    info = node.autogrow[group]
    names = info["names"]
    if names is not None:
        base: Any = names[ordinal] if 0 <= ordinal < len(names) else UNDEFINED
    else:
        stem = info["prefix"] if len(info["specs"]) == 1 else key
        base = f"{to_string(stem)}{ordinal}"
    return f"{group}.{to_string(base)}", base


def _ensure_shim(node: Node, slot: InputSlot) -> None:
    """``ensureWidgetForInput``: a placeholder widget (never saved, sent as undefined)."""
    if node.widgets is None:
        node.widgets = []
    if slot.widget is not None and any(w.name == slot.widget.name for w in node.widgets):
        return
    node.add_widget(Widget(node, slot.name, "shim", UNDEFINED, serialize=False))
    slot.widget = WidgetMarker(slot.name)


def add_autogrow_group(ordinal: int, group: str, node: Node) -> None:
    info = node.autogrow[group]
    if not ordinal < info["max"]:
        return
    specs = info["specs"]
    made: list[InputSlot] = []
    for spec in specs:
        name, base = _autogrow_name(ordinal, spec.get("name"), group, node)
        named = {**spec, "isOptional": ordinal >= (info["min"] or 0) or truthy(
            spec.get("isOptional")), "name": name, "display_name": base}
        add_node_input(node, named)
        slot = splice_inputs(node, len(node.inputs) - 1, 1)[0]
        if len(specs) != 1:
            _ensure_shim(node, slot)
        made.append(slot)
    for slot in made:
        for existing in _take(node.inputs, lambda s, name=slot.name: s.name == name):
            if slot.link is None or slot.link is UNDEFINED:
                slot.link = existing.link
    last = specs[-1].get("name") if specs else UNDEFINED
    target, _ = _autogrow_name(ordinal - 1, last, group, node)
    last_index = max((i for i, s in enumerate(node.inputs)
                      if isinstance(s.name, str) and s.name.startswith(target)), default=-1)
    splice_inputs(node, len(node.inputs) if last_index == -1 else last_index + 1, 0, *made)


def _autogrow_ordinal(slot_name: str, group: str, node: Node) -> int | None:
    rest = slot_name[len(group) + 1:]
    names = node.autogrow[group]["names"]
    if names is not None:
        return names.index(rest) if rest in names else None
    digits = len(rest) - len(rest.rstrip("0123456789"))
    return int(rest[len(rest) - digits:]) if digits else None


def _apply_autogrow(node: Node, spec: Spec) -> None:
    template = spec.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("input"), dict):
        raise NodeBuildError("invalid Autogrow spec")
    inputs = template["input"]
    specs = [v1_to_v2(raw, key, index == 1)
             for index, part in enumerate((inputs.get("required"), inputs.get("optional")))
             for key, raw in (part.items() if isinstance(part, dict) else [])]
    names = template.get("names")
    minimum = template.get("min", 1)
    minimum = 1 if minimum is None else minimum
    maximum = template.get("max", 100)
    node.autogrow[spec["name"]] = {
        "names": list(names) if isinstance(names, list) else None,
        "min": minimum, "max": len(names) if isinstance(names, list) else maximum,
        "prefix": template.get("prefix", ""), "specs": specs}
    i = 0
    while i == 0 or i < minimum + 1:
        add_autogrow_group(i, spec["name"], node)
        i += 1


def _apply_match_type(node: Node, spec: Spec) -> None:
    template = spec.get("template")
    if spec.get("type") != "COMFY_MATCHTYPE_V3" or not isinstance(template, dict) \
            or not isinstance(template.get("allowed_types"), str) \
            or not isinstance(template.get("template_id"), str):
        return
    add_node_input(node, {**spec, "type": template["allowed_types"]})
    node.match_types.setdefault(template["template_id"], {})[spec["name"]] = \
        template["allowed_types"]
    # the input asks for the next frame, where it runs its connection handler
    node.graph.root.match_type_frames.append((node, len(node.inputs) - 1))


def connections_changed(node: Node, index: int, connected: bool, link: Any) -> None:
    """The ``onConnectionsChange`` the dynamic inputs install, as it runs while a
    workflow is being configured (autogrow grows past connected inputs)."""
    if not node.autogrow or not 0 <= index < len(node.inputs):
        return
    slot = node.inputs[index]
    if not isinstance(slot.name, str) or "." not in slot.name:
        return
    group = slot.name[:slot.name.rindex(".")]
    if group not in node.autogrow:
        return
    if slot.widget is not None:
        _ensure_shim(node, slot)
    if not connected or link is None:
        return
    members = [s for s in node.inputs if isinstance(s.name, str)
               and s.name.startswith(group + ".")]
    ordinal = _autogrow_ordinal(slot.name, group, node)
    if not members or ordinal is None:
        return
    add_autogrow_group(ordinal + 1, group, node)


class InvalidConnection(Exception):
    """What a match-type input's connection handler throws ("invalid connection") when
    its group's connections share no type: it ends the frame callback that ran it."""


def match_type_connection_changed(node: Node, index: int) -> None:
    """The ``onConnectionsChange`` a match-type input installs, as it runs after loading
    (on the frame the input asked for, or called by a reroute or an upstream output that
    changed type): the inputs of ``node.inputs[index]``'s group take the type their
    connections have in common, the group's outputs take it too (a link the new output
    type cannot feed is dropped). Raises :class:`InvalidConnection` as the editor throws."""
    slot = node.inputs[index] if 0 <= index < len(node.inputs) else None
    if slot is None or not isinstance(slot.name, str):
        return
    found = next(((template_id, group) for template_id, group in node.match_types.items()
                  if slot.name in group), None)
    if found is None:
        return
    template_id, group = found
    graph = node.graph
    members = [s for s in node.inputs if s.name in group]
    connected = []
    for member in members:
        link = graph.link_by_property(member.link) if truthy(member.link) else None
        connected.append(_origin_type(graph, link))
    for i, member in enumerate(members):
        combined = common_type(*connected[:i], *connected[i + 1:], group[member.name])
        if combined is None:
            raise InvalidConnection
        member.type = combined
    output_type = common_type(*connected)
    if output_type is None:
        raise InvalidConnection
    groups = node.definition.info.get("output_matchtypes") if node.definition else None
    for i, out in enumerate(node.outputs):
        key = groups[i] if isinstance(groups, list) and i < len(groups) else UNDEFINED
        if to_string(key) == template_id or key == template_id:
            _change_output_type(node, out, output_type)


def _origin_type(graph: Any, link: Any) -> Any:
    if link is None:
        return "*"
    resolved = resolve_link(link, graph)
    slot = resolved.output or resolved.subgraph_input
    typ = slot.type if slot is not None else None
    return typ if truthy(typ) else "*"


def common_type(*types: Any) -> Any:
    """``commonType``: the types all of them accept (comma lists intersect), or None."""
    if not all(isinstance(t, str) for t in types):
        return None
    specific = [t for t in types if t != "*"]
    if not specific:
        return "*"
    allowed = specific[0].split(",")
    for t in specific[1:]:
        parts = t.split(",")
        allowed = [a for a in allowed if a in parts]
    return ",".join(allowed) if allowed else None


def _change_output_type(node: Node, out: OutputSlot, typ: Any) -> None:
    if out.type == typ:
        return
    out.type = typ
    graph = node.graph
    for link_id in list(out.links or []):
        link = graph.link_by_property(link_id)
        if link is None:
            continue
        resolved = resolve_link(link, graph)
        slot = resolved.input or resolved.subgraph_output
        input_type = slot.type if slot is not None else None
        if not truthy(input_type):
            continue
        valid = is_valid_connection(typ, input_type)
        target = resolved.input_node
        if not valid and target is not None:
            graph.disconnect_input(target, link.target_slot)
        if resolved.input is not None and target is not None and target.match_types:
            match_type_connection_changed(target, link.target_slot)


DYNAMIC_INPUTS: dict[str, Callable[[Node, Spec], None]] = {
    "COMFY_AUTOGROW_V3": _apply_autogrow,
    "COMFY_MATCHTYPE_V3": _apply_match_type,
}


# --- litegraphService: sockets and widgets ---------------------------------------------


def add_input_socket(node: Node, spec: Spec) -> None:
    """``addInputSocket``: a socket for an input without a widget (or forced to one)."""
    wtype = spec.get("widgetType") or spec.get("type")
    if isinstance(wtype, str) and wtype in WIDGET_TYPES and not truthy(spec.get("forceInput")):
        return
    apply = DYNAMIC_INPUTS.get(spec.get("type")) if isinstance(spec.get("type"), str) else None
    if apply is not None:
        apply(node, spec)
        return
    node.inputs.append(InputSlot(spec.get("name"), spec.get("type") or 0))


def add_input_widget(node: Node, spec: Spec) -> None:
    """``addInputWidget``: the widget(s) for an input, and a socket that feeds it."""
    wspec = dict(spec)
    if truthy(spec.get("widgetType")):
        wspec["type"] = spec["widgetType"]
    wtype = wspec.get("type")
    if not isinstance(wtype, str) or wtype not in WIDGET_TYPES or truthy(spec.get("forceInput")):
        return
    construct = _dynamic_combo_widget if wtype == "COMFY_DYNAMICCOMBO_V3" else CONSTRUCTORS[wtype]
    widget_spec = v1_to_v2(v2_to_v1(wspec), spec.get("name"))
    construct(node, spec.get("name"), widget_spec)
    config = v2_to_v1(wspec)
    node.inputs.append(InputSlot(spec.get("name"), spec.get("type") or 0, None,
                                 WidgetMarker(spec.get("name"), (config[0], config[1]))))


def add_node_input(node: Node, spec: Spec) -> None:
    """``addNodeInput`` (dynamic inputs add their members this way)."""
    add_input_socket(node, spec)
    add_input_widget(node, spec)


def build_comfy_node(node: Node, definition: NodeDef) -> None:
    """The editor's ``ComfyNode`` constructor, then the extensions' ``nodeCreated`` and
    ``onNodeCreated`` hooks."""
    for spec in definition.inputs:
        add_input_socket(node, spec)
    for spec in definition.inputs:
        add_input_widget(node, spec)
    for name, typ in definition.outputs:
        node.outputs.append(OutputSlot(name, typ or 0, None))
    if node.widgets is None:
        node.widgets = []
    # nodeCreated: Comfy.DynamicPrompts
    # onNodeCreated: Comfy.CustomWidgets, Comfy.PreviewAny / Comfy.saveText,
    # Comfy.SaveImageExtraOutput
    if definition.name == "WebcamCapture":
        _webcam_button(node)
    if definition.name == "CustomCombo":
        _custom_combo(node)
    if definition.name in TEXT_PREVIEW_NODES:
        node.add_widget(DomValueWidget(node, "preview_text", "textPreview", "",
                                       register_on_set=False, string_only_read=True,
                                       serialize=False, api=False))
        node.add_widget(Widget(node, "preview_mode", "toggle", False, serialize=False,
                               api=False))
    if definition.is_save_node:
        prefix = node.widget_named("filename_prefix")
        if prefix is not None:
            prefix.text_replace = True
    elif "Node name for S&R" not in node.properties:
        node.properties["Node name for S&R"] = node.type


# --- Comfy.CustomWidgets: CustomCombo ------------------------------------------------------


def _custom_combo(node: Node) -> None:
    widgets = node.widgets
    assert widgets is not None
    if not widgets:
        return
    combo = widgets[0]

    def index() -> int:
        for i, w in enumerate(widgets[2:]):
            if w.value == combo.value and type(w.value) is type(combo.value):
                return i
        return -1

    widgets.append(ComputedWidget(node, "index", "hidden", index))
    _add_custom_option(node)


class _CustomOption(Widget):
    def _set(self, v: Any) -> None:
        super()._set(v)
        node = self.node
        widgets = node.widgets or []
        if widgets and widgets[-1] is self:
            if truthy(v):
                _add_custom_option(node)
            return
        if truthy(v) or len(widgets) < 2 or widgets[-2] is not self \
                or truthy(widgets[-1].value):
            return
        widgets.pop()


def _add_custom_option(node: Node) -> None:
    count = len(node.widgets or []) - 1
    node.add_widget(_CustomOption(node, f"option{count}", "string", ""))
