"""How the editor reads a node type's ``/object_info`` entry (pure).

The editor (frontend 1.48.7) registers one node class per entry: its built-in extensions
first amend the V1 definition (an ``upload`` button after a media COMBO, ``audioUI`` on
audio nodes, a 3D viewport ...), optional ``defaultInput`` inputs become ``forceInput``,
then the inputs are turned into V2 specs and put in ``input_order`` (required, then
optional, then the rest). :func:`build_node_def` does the same; the sockets and widgets a
node gets from those specs are made in :mod:`comfy_worker.workflow.widgets`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from comfy_worker.workflow.frontend_labels import FRONTEND_LABELS

# Save nodes whose filename_prefix gets %date:...% / %Node.widget% replacements
# (extension Comfy.SaveImageExtraOutput); every other node gets "Node name for S&R".
SAVE_NODES: Final = frozenset({
    "SaveImage", "SaveImageAdvanced", "SaveSVGNode", "SaveVideo", "SaveAnimatedWEBP",
    "SaveWEBM", "SaveAudio", "SaveAudioMP3", "SaveAudioOpus", "SaveAudioAdvanced",
    "SaveGLB", "Save3DAdvanced", "SaveGaussianSplat", "SavePointCloud", "SaveAnimatedPNG",
    "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent",
})
AUDIO_UI_NODES: Final = frozenset({"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3",
                                   "SaveAudioOpus", "SaveAudioAdvanced"})
# Extension Comfy.Load3D: which LOAD_3D viewport is named viewport_state (else image).
VIEWPORT_STATE_NODES: Final = frozenset({
    "Preview3DAdvanced", "Save3DAdvanced", "PreviewGaussianSplat", "PreviewPointCloud",
    "SaveGaussianSplat", "SavePointCloud",
})
TEXT_PREVIEW_NODES: Final = frozenset({"PreviewAny", "SaveText"})

# Input types the editor has a widget constructor for (core + built-in extensions).
WIDGET_TYPES: Final = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "COLOR",
    "IMAGECOMPARE", "BOUNDING_BOX", "CHART", "GALLERIA", "PAINTER", "COMPOSITOR",
    "TEXTAREA", "CURVE", "RANGE", "BOUNDING_BOXES", "COLORS", "COMFY_DYNAMICCOMBO_V3",
    "WEBCAM", "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD", "LOAD_3D", "PREVIEW_3D",
    "LOAD_3D_ADVANCED",
})
# Input types handled as dynamic inputs (sockets that come and go with connections).
DYNAMIC_INPUT_TYPES: Final = frozenset({"COMFY_AUTOGROW_V3", "COMFY_MATCHTYPE_V3"})
SEED_NAMES: Final = ("seed", "noise_seed")


@dataclass(frozen=True)
class NodeDef:
    name: str
    title: str
    inputs: tuple[dict[str, Any], ...]
    """V2 input specs (``{"name", "type", "isOptional", ...options}``) in input order."""
    input_specs: Mapping[str, Mapping[str, Any]]
    """The same specs by name, in definition order (``migrateWidgetsValues`` reads it)."""
    outputs: tuple[tuple[str, Any], ...]
    output_node: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)
    amended: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The V1 inputs after the extensions' amendments (what ``getConfig`` reads)."""

    @property
    def is_save_node(self) -> bool:
        return self.name in SAVE_NODES


def spec_parts(raw: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(raw, list | tuple) or not raw:
        return None, {}
    head = raw[0]
    opts = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
    return head, dict(opts)


def is_combo(head: Any) -> bool:
    return isinstance(head, list) or head == "COMBO"


def v1_to_v2(raw: Any, name: Any, optional: bool = False) -> dict[str, Any]:
    """``transformInputSpecV1ToV2``: ``{type, name, isOptional, ...options}`` (an option
    called ``name`` wins over the input's name, as in the editor)."""
    head, opts = spec_parts(raw)
    base = {"name": name, "isOptional": optional, **opts}
    if is_combo(head):
        options = head if isinstance(head, list) else opts.get("options")
        return {"type": "COMBO", **base, "options": options}
    if isinstance(head, str):
        return {"type": head, **base}
    return {"type": "UNKNOWN", **base}


def v2_to_v1(spec: Mapping[str, Any]) -> list[Any]:
    """``transformInputSpecV2ToV1``."""
    return [spec.get("type"), dict(spec)]


def _is_media_upload(raw: Any) -> bool:
    head, opts = spec_parts(raw)
    upload = (opts.get("image_upload") is True or opts.get("video_upload") is True
              or opts.get("animated_image_upload") is True)
    return upload and (isinstance(head, list) or head == "COMBO")


def _amended_inputs(info: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The V1 inputs after the built-in extensions' ``beforeRegisterNodeDef`` (in their
    registration order) and ``_migrateDefaultInput``."""
    raw = info.get("input") if isinstance(info.get("input"), dict) else {}
    required = copy.deepcopy(raw.get("required")) if isinstance(raw.get("required"), dict) \
        else None
    optional = copy.deepcopy(raw.get("optional")) if isinstance(raw.get("optional"), dict) \
        else None
    name = info.get("name")
    if required is not None:
        # Comfy.Load3DLazy then the 3D extensions it loads
        model_file = required.get("model_file")
        if name in ("Load3D", "Load3DAdvanced") and isinstance(model_file, list) \
                and len(model_file) > 1 and isinstance(model_file[1], dict):
            model_file[1]["mesh_upload"] = True
            model_file[1]["upload_subfolder"] = "3d"
        if name == "Load3DAdvanced":
            required["viewport_state"] = ["LOAD_3D_ADVANCED", {}]
        if name in ("Preview3D", "SaveGLB"):
            required["image"] = ["PREVIEW_3D"]
        # Comfy.AudioWidget, Comfy.UploadAudio
        if name in AUDIO_UI_NODES:
            required["audioUI"] = ["AUDIO_UI", {}]
        audio = required.get("audio")
        if isinstance(audio, list) and len(audio) > 1 and isinstance(audio[1], dict) \
                and audio[1].get("audio_upload") is True:
            required["upload"] = ["AUDIOUPLOAD", {}]
        # Comfy.UploadImage: the first media-upload COMBO gets an upload button
        for input_name, spec in required.items():
            if _is_media_upload(spec):
                required["upload"] = ["IMAGEUPLOAD", {**spec_parts(spec)[1],
                                                      "imageInputName": input_name}]
                break
    # ComfyNodeDefImpl: defaultInput on an optional input means forceInput
    for spec in (optional or {}).values():
        if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) \
                and spec[1].get("defaultInput"):
            spec[1]["forceInput"] = True
    return required or {}, optional or {}


def ordered_inputs(info: Mapping[str, Any], inputs: dict[str, dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """``getOrderedInputSpecs``."""
    order = info.get("input_order")
    if not isinstance(order, dict) or not order:
        return list(inputs.values())
    out: list[dict[str, Any]] = []
    for name in order.get("required") or []:
        spec = inputs.get(name) if isinstance(name, str) else None
        if spec and not spec.get("isOptional"):
            out.append(spec)
    for name in order.get("optional") or []:
        spec = inputs.get(name) if isinstance(name, str) else None
        if spec and spec.get("isOptional"):
            out.append(spec)
    seen = {s.get("name") for s in out}
    out.extend(s for s in inputs.values() if s.get("name") not in seen)
    return out


def build_node_def(type_name: str, info: Mapping[str, Any]) -> NodeDef:
    """What the editor registers for ``type_name`` from its ``/object_info`` entry."""
    info = {**info, "name": info.get("name", type_name)}
    required, optional = _amended_inputs(info)
    v2: dict[str, dict[str, Any]] = {}
    for name, raw in required.items():
        v2[name] = v1_to_v2(raw, name, False)
    for name, raw in optional.items():
        v2[name] = v1_to_v2(raw, name, True)

    outputs: list[tuple[str, Any]] = []
    raw_outputs = info.get("output") if isinstance(info.get("output"), list) else []
    names = info.get("output_name") if isinstance(info.get("output_name"), list) else []
    for i, out in enumerate(raw_outputs):
        name = names[i] if i < len(names) and names[i] else f"output_{i}"
        typ = "COMBO" if isinstance(out, list) else out
        outputs.append((name, "*" if typ == "COMFY_MATCHTYPE_V3" else typ))

    class_name = str(info.get("name") or type_name)
    label = FRONTEND_LABELS.get(class_name)
    title = label or info.get("display_name") or class_name
    return NodeDef(name=class_name, title=title, inputs=tuple(ordered_inputs(info, v2)),
                   input_specs=v2, outputs=tuple(outputs),
                   output_node=bool(info.get("output_node")), info=info,
                   amended={"required": required, "optional": optional})
