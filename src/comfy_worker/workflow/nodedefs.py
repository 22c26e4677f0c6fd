"""What the editor builds for a node type from its ``/object_info`` entry (pure).

For each type the editor creates, in this order: one input socket per input that has no
widget (``MODEL``, ``forceInput`` ...), then for each widget input its widget(s) and a
socket carrying that widget's name. Inputs are ordered by ``input_order`` (required, then
optional, then anything else). Some widgets bring companions that take a slot in
``widgets_values`` but are never sent to the backend: ``control_after_generate`` after a
seed-like INT (and after a COMBO with ``control_after_generate``, plus
``control_filter_list``), the ``upload`` button of image/video/audio loaders. The editor's
built-in extensions add a few more (``audioUI`` on audio nodes, ``preview`` on PreviewAny,
the 3D viewers' buttons); they are modelled here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from comfy_worker.workflow.jsvalue import UNDEFINED, to_string

# Node types the editor renames while loading (frontend app.loadGraphData).
TYPE_RENAMES: Final = {
    "T2IAdapterLoader": "ControlNetLoader",
    "ConditioningAverage ": "ConditioningAverage",
    "SDV_img2vid_Conditioning": "SVD_img2vid_Conditioning",
    "Load3DAnimation": "Load3D",
    "Preview3DAnimation": "Preview3D",
}

# Save nodes whose filename_prefix gets %date:...% / %Node.widget% replacements
# (extension Comfy.SaveImageExtraOutput); every other node gets "Node name for S&R".
TEXT_REPLACE_NODES: Final = frozenset({
    "SaveImage", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio", "SaveGLB",
    "SaveAnimatedPNG", "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent",
})
AUDIO_UI_NODES: Final = frozenset({"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3",
                                   "SaveAudioOpus"})

# Input types that have a widget constructor in the editor (core + built-in extensions).
CORE_WIDGET_TYPES: Final = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "COLOR",
    "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA",
})
WIDGET_TYPES: Final = CORE_WIDGET_TYPES | {
    "LOAD_3D", "PREVIEW_3D", "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD", "WEBCAM",
}
SEED_NAMES: Final = ("seed", "noise_seed")

# The editor shows node types under its own English labels (its bundled nodeDefs locale)
# where it has one. Where the 1.32.9 labels differ from ComfyUI 0.3.75's display_name, a
# node saved without a title gets this label as its title (and so as _meta.title).
FRONTEND_LABELS: Final = {
    "EmptyHunyuanLatentVideo": "EmptyHunyuanLatentVideo",
    "Preview3D": "Preview 3D",
    "PreviewAny": "Preview Any",
}


@dataclass(frozen=True)
class NumberOptions:
    """A number widget's options (what its change callback clamps/rounds with)."""

    is_int: bool
    min: float
    max: float
    step2: float
    round: float | None = None      # FLOAT only
    precision: int = 0              # FLOAT only


@dataclass(frozen=True)
class UploadTransform:
    """The image/video upload extension's value transform on the file COMBO."""

    folder: str
    allow_batch: bool
    fallback: str       # String(default) when the widget was created


@dataclass(frozen=True)
class WidgetSpec:
    name: Any
    kind: str                       # number, combo, toggle, text, customtext, button, ...
    default: Any
    api: bool = True                # options.serialize !== false: sent in the prompt
    stored: bool = True             # widget.serialize !== false: has a widgets_values slot
    textarea: bool = False          # a DOM <textarea>: values become strings
    fixed_value: bool = False       # a DOM widget without storage (always "")
    dynamic_prompts: bool = False
    text_replace: bool = False      # filename_prefix of a save node
    number: NumberOptions | None = None
    upload: UploadTransform | None = None
    serialize_undefined: bool = False   # serializeValue() returns undefined
    remote: bool = False            # options fetched from the server after loading
    browser_only: str | None = None     # serializeValue needs the browser (why)
    values: tuple[Any, ...] | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)   # the input spec it came from


@dataclass(frozen=True)
class SlotSpec:
    name: str
    type: Any
    widget: str | None = None       # the widget this socket feeds (converted widget)
    config: tuple[Any, Mapping[str, Any]] | None = None   # the spec GET_CONFIG returns


@dataclass(frozen=True)
class MigrateInput:
    """An input as ``migrateWidgetsValues`` sees it."""

    name: str
    force_input: bool
    counts_two: bool


@dataclass(frozen=True)
class NodeDef:
    name: str
    title: str
    inputs: tuple[SlotSpec, ...]
    outputs: tuple[tuple[str, Any], ...]
    widgets: tuple[WidgetSpec, ...]
    migrate_inputs: tuple[MigrateInput, ...]
    snr_property: bool              # gets properties["Node name for S&R"] = its type
    output_node: bool = False
    input_specs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _spec_parts(raw: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(raw, list | tuple) or not raw:
        return UNDEFINED, {}
    head = raw[0]
    opts = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
    return head, dict(opts)


def _is_combo(head: Any) -> bool:
    return isinstance(head, list) or head == "COMBO"


def _v1_inputs(info: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The def's required/optional inputs after the built-in extensions' additions."""
    inputs = info.get("input") if isinstance(info.get("input"), dict) else {}
    required = dict(inputs.get("required") or {})
    optional = dict(inputs.get("optional") or {})
    name = info.get("name")
    # Comfy.Preview3D / Comfy.SaveGLB
    if name in ("Preview3D", "SaveGLB"):
        required["image"] = ["PREVIEW_3D"]
    # Comfy.AudioWidget, then Comfy.UploadAudio
    if name in AUDIO_UI_NODES:
        required["audioUI"] = ["AUDIO_UI", {}]
    audio = required.get("audio")
    if isinstance(audio, list) and len(audio) > 1 and isinstance(audio[1], dict) \
            and audio[1].get("audio_upload") is True:
        required["upload"] = ["AUDIOUPLOAD", {}]
    # Comfy.UploadImage: the first media-upload COMBO gets an upload button
    for input_name, spec in required.items():
        head, opts = _spec_parts(spec)
        if (opts.get("image_upload") is True or opts.get("video_upload") is True
                or opts.get("animated_image_upload") is True) and _is_combo(head):
            required["upload"] = ["IMAGEUPLOAD", {**opts, "imageInputName": input_name}]
            break
    # ComfyNodeDefImpl: defaultInput on an optional input means forceInput
    for input_name, spec in list(optional.items()):
        head, opts = _spec_parts(spec)
        if opts.get("defaultInput"):
            optional[input_name] = [head, {**opts, "forceInput": True}]
    return required, optional


def _v2_input(name: str, raw: Any, optional: bool) -> dict[str, Any]:
    head, opts = _spec_parts(raw)
    base = {"name": name, "isOptional": optional, **opts}
    if _is_combo(head):
        options = head if isinstance(head, list) else opts.get("options")
        return {"type": "COMBO", **base, "options": options if options is not None else []}
    if isinstance(head, str):
        return {"type": head, **base}
    return {"type": "UNKNOWN", **base}


def _ordered(info: Mapping[str, Any], inputs: dict[str, dict[str, Any]]
             ) -> list[dict[str, Any]]:
    order = info.get("input_order")
    if not isinstance(order, dict):
        return list(inputs.values())
    out: list[dict[str, Any]] = []
    for name in order.get("required") or []:
        spec = inputs.get(name)
        if spec and not spec.get("isOptional"):
            out.append(spec)
    for name in order.get("optional") or []:
        spec = inputs.get(name)
        if spec and spec.get("isOptional"):
            out.append(spec)
    seen = {s["name"] for s in out}
    out.extend(s for s in inputs.values() if s["name"] not in seen)
    return out


def _num(value: Any, default: float) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) \
        else default


def _control_name(spec: Mapping[str, Any], key: str, override: Any = None) -> Any:
    """``addValueControlWidgets``' ``getName``."""
    if override:
        return override
    if isinstance(spec.get(key), str):
        return spec[key]
    prefix = spec.get("control_prefix")
    if prefix:
        return f"{prefix} {key}"
    return key


def control_widgets(spec: Mapping[str, Any], *, combo: bool, filter_list: bool,
                     name_override: Any = None, default: str = "randomize"
                     ) -> list[WidgetSpec]:
    values = ("fixed", "increment", "decrement", "randomize") + (
        ("increment-wrap",) if combo else ())
    out = [WidgetSpec(_control_name(spec, "control_after_generate", name_override), "control",
                      default, api=False, values=values, spec=spec)]
    if combo and filter_list:
        out.append(WidgetSpec(_control_name(spec, "control_filter_list"), "string", "",
                              api=False, spec=spec))
    return out


def _number_kind(spec: Mapping[str, Any]) -> str:
    display = spec.get("display")
    return "slider" if display == "slider" else "knob" if display == "knob" else "number"


def widgets_for(spec: Mapping[str, Any]) -> list[WidgetSpec] | None:
    """The widget(s) an input spec (V2, ``type`` possibly ``widgetType``) creates."""
    wtype = spec["type"]
    name = spec["name"]
    if wtype == "INT":
        step = _num(spec.get("step"), 1)
        default = spec.get("default")
        main = WidgetSpec(name, _number_kind(spec), 0 if default is None else default,
                          number=NumberOptions(True, _num(spec.get("min"), 0),
                                               _num(spec.get("max"), 2048), step),
                          spec=spec)
        control = spec.get("control_after_generate")
        wanted = control if control is not None else name in SEED_NAMES
        if not wanted:
            return [main]
        override = control if isinstance(control, str) else None
        return [main, *control_widgets(spec, combo=False, filter_list=False,
                                        name_override=override)]
    if wtype == "FLOAT":
        step = _num(spec.get("step"), 0.5)
        precision = max(0, -math.floor(math.log10(step))) if step > 0 else 0
        spec_round = spec.get("round")
        rounding = 10 ** -precision if precision and not spec_round else spec_round
        default = spec.get("default")
        return [WidgetSpec(name, _number_kind(spec), 0 if default is None else default,
                           number=NumberOptions(False, _num(spec.get("min"), 0),
                                                _num(spec.get("max"), 2048), step,
                                                round=rounding if rounding else None,
                                                precision=precision),
                           spec=spec)]
    if wtype == "BOOLEAN":
        default = spec.get("default")
        return [WidgetSpec(name, "toggle", False if default is None else default, spec=spec)]
    if wtype == "STRING":
        default = spec.get("default")
        default = "" if default is None else default
        dyn = spec.get("dynamicPrompts")
        dynamic = bool(dyn) if isinstance(dyn, bool) else False
        if spec.get("multiline"):
            return [WidgetSpec(name, "customtext", default, textarea=True,
                               dynamic_prompts=dynamic, spec=spec)]
        return [WidgetSpec(name, "text", default, dynamic_prompts=dynamic, spec=spec)]
    if wtype == "MARKDOWN":
        default = spec.get("default")
        return [WidgetSpec(name, "markdown", "" if default is None else default, textarea=True,
                           spec=spec)]
    if wtype == "COMBO":
        options = spec.get("options") or []
        if spec.get("multi_select"):
            return [WidgetSpec(name, "multiselect", [], spec=spec)]
        if spec.get("default"):
            default = spec["default"]
        elif options:
            default = options[0]
        elif spec.get("remote"):
            default = "Loading..."
        else:
            default = UNDEFINED
        remote = spec.get("remote")
        main = WidgetSpec(name, "combo", default, values=tuple(options), spec=spec,
                          remote=bool(remote))
        made = [main]
        if remote:
            # useRemoteWidget: an auto-refresh toggle, then maybe a refresh button
            made.append(WidgetSpec("Auto-refresh after generation", "toggle", False, api=False))
            if isinstance(remote, dict) and remote.get("refresh_button"):
                made.append(WidgetSpec("refresh", "button", "refresh"))
        if spec.get("control_after_generate"):
            made.extend(control_widgets(spec, combo=True, filter_list=True))
        return made
    if wtype == "IMAGEUPLOAD":
        return [WidgetSpec(name, "button", "image", api=False, spec=spec)]
    if wtype == "AUDIOUPLOAD":
        return [WidgetSpec(name, "button", "", api=False, spec=spec)]
    if wtype == "AUDIO_UI":
        return [WidgetSpec("audioUI", "audioUI", "", stored=False, fixed_value=True, spec=spec)]
    if wtype == "AUDIO_RECORD":
        return [WidgetSpec(name, "audioUI", "", fixed_value=True, spec=spec)]
    if wtype == "WEBCAM":
        return [WidgetSpec(name, "WEBCAM", "", fixed_value=True, spec=spec,
                           browser_only="its image is a capture of the browser's camera")]
    if wtype == "PREVIEW_3D":
        return [WidgetSpec("image", "load3D", "", fixed_value=True, spec=spec)]
    if wtype == "LOAD_3D":
        return [
            WidgetSpec("upload 3d model", "button", "upload3dmodel", spec=spec),
            WidgetSpec("upload extra resources", "button", "uploadExtraResources", spec=spec),
            WidgetSpec("clear", "button", "clear", spec=spec),
            WidgetSpec("image", "load3D", "", fixed_value=True, spec=spec,
                       browser_only="its image is a render of the editor's 3D viewer"),
        ]
    if wtype == "COLOR":
        opts = spec.get("options") if isinstance(spec.get("options"), dict) else {}
        return [WidgetSpec(name, "color", opts.get("default") or "#000000", spec=spec)]
    if wtype == "IMAGECOMPARE":
        return [WidgetSpec(name, "imagecompare", ["", ""], spec=spec)]
    if wtype in ("CHART", "GALLERIA", "TEXTAREA"):
        opts = spec.get("options") if isinstance(spec.get("options"), dict) else {}
        if wtype == "CHART":
            return [WidgetSpec(name, "chart", opts.get("data") or {}, spec=spec)]
        if wtype == "GALLERIA":
            return [WidgetSpec(name, "galleria", opts.get("images") or [], spec=spec)]
        return [WidgetSpec(name, "textarea", opts.get("default") or "", spec=spec)]
    return None


def build_node_def(type_name: str, info: Mapping[str, Any]) -> NodeDef:
    """The sockets and widgets a fresh node of ``type_name`` has."""
    required, optional = _v1_inputs({**info, "name": info.get("name", type_name)})
    v2: dict[str, dict[str, Any]] = {}
    for name, raw in required.items():
        v2[name] = _v2_input(name, raw, False)
    for name, raw in optional.items():
        v2[name] = _v2_input(name, raw, True)
    ordered = _ordered(info, v2)

    def is_widget(spec: Mapping[str, Any]) -> bool:
        return (spec.get("widgetType") or spec["type"]) in WIDGET_TYPES

    slots: list[SlotSpec] = []
    widgets: list[WidgetSpec] = []
    for spec in ordered:
        if not is_widget(spec) or spec.get("forceInput"):
            slots.append(SlotSpec(spec["name"], spec["type"]))
    for spec in ordered:
        if not is_widget(spec) or spec.get("forceInput"):
            continue
        wspec = dict(spec)
        if spec.get("widgetType"):
            wspec["type"] = spec["widgetType"]
        made = widgets_for(wspec)
        if not made:
            continue
        if wspec["type"] == "IMAGEUPLOAD":
            _attach_upload(widgets, wspec)
        widgets.extend(made)
        slots.append(SlotSpec(spec["name"], spec["type"], widget=spec["name"],
                              config=(wspec["type"], wspec)))

    class_name = str(info.get("name") or type_name)
    if class_name in TEXT_REPLACE_NODES:
        widgets = [WidgetSpec(**{**w.__dict__, "text_replace": True})
                   if w.name == "filename_prefix" else w for w in widgets]
    if class_name == "PreviewAny":
        widgets.append(WidgetSpec("preview", "markdown", "", stored=False, textarea=True))
    if class_name == "WebcamCapture":
        widgets.append(WidgetSpec("waiting for camera...", "button", "capture",
                                  serialize_undefined=True))

    outputs: list[tuple[str, Any]] = []
    raw_outputs = info.get("output") if isinstance(info.get("output"), list) else []
    names = info.get("output_name") if isinstance(info.get("output_name"), list) else []
    for i, out in enumerate(raw_outputs):
        name = names[i] if i < len(names) and names[i] else f"output_{i}"
        outputs.append((name, "COMBO" if isinstance(out, list) else out))

    migrate = tuple(MigrateInput(s["name"], bool(s.get("forceInput")),
                                 bool(s.get("control_after_generate"))
                                 or s["name"] in SEED_NAMES)
                    for s in v2.values())
    title = FRONTEND_LABELS.get(class_name) or info.get("display_name") or class_name
    return NodeDef(name=class_name, title=title, inputs=tuple(slots), outputs=tuple(outputs),
                   widgets=tuple(widgets), migrate_inputs=migrate,
                   snr_property=class_name not in TEXT_REPLACE_NODES,
                   output_node=bool(info.get("output_node")), input_specs=v2)


def _attach_upload(widgets: list[WidgetSpec], spec: Mapping[str, Any]) -> None:
    target = spec.get("imageInputName")
    for i, w in enumerate(widgets):
        if w.name == target:
            fallback = w.default
            folder = spec.get("image_folder") or "input"
            widgets[i] = WidgetSpec(**{**w.__dict__, "upload": UploadTransform(
                str(folder), bool(spec.get("allow_batch")), to_string(fallback))})
            return
