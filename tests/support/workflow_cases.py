"""UI-format workflows that exercise one rule each, and seeded random variants.

Built from the committed templates in ``tests/fixtures/workflows`` (``templates.tar.xz``:
the templates ComfyUI v0.33.0 pins; ``legacy.tar.xz``: the ones ComfyUI 0.3.75 shipped,
saved by older editors). The editor's answer for every case is recorded by
``scripts/frontend_oracle.py cases`` into ``tests/fixtures/workflows/cases/`` (the workflow
is stored beside its answer, so the tests never rebuild them);
``tests/test_workflow_convert.py`` compares the converter with those answers and
``tests/test_workflow_oracle.py`` with the live editor.

A case is a :class:`Case`: the workflow, what ``Math.random()`` returns while the editor
converts it (dynamic prompts; None when it does not matter) and, for a case about node
definitions the server does not have, the ``/object_info`` entries served to the editor
instead of the test ComfyUI's (None removes a node type).
"""

from __future__ import annotations

import copy
import functools
import gzip
import io
import json
import lzma
import random
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "workflows"
Workflow = dict[str, Any]

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass
class Case:
    workflow: Workflow
    fixed_random: float | None = None
    object_info: dict[str, Any] | None = field(default=None)


def load_gz(path: Path) -> Any:
    return json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))


@functools.cache
def index() -> dict[str, Any]:
    return json.loads((FIXTURES / "index.json").read_text(encoding="utf-8"))


@functools.cache
def _archive(name: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress((FIXTURES / name).read_bytes()))
                      ) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                out[member.name[:-len(".json")]] = handle.read()
    return out


@functools.cache
def _expected() -> dict[str, Any]:
    return json.loads(lzma.decompress((FIXTURES / "expected.json.xz").read_bytes()))


def template_names() -> list[str]:
    """The templates of ``comfyui-workflow-templates`` 0.11.41 the fixtures hold."""
    return sorted(_archive("templates.tar.xz"))


def legacy_names() -> list[str]:
    """The templates ComfyUI 0.3.75 shipped (saved by editors up to 1.32)."""
    return sorted(_archive("legacy.tar.xz"))


def template(name: str) -> Workflow:
    """A template as the package ships it: the 0.11.41 one, else the legacy one of that
    name (``default``, ``image2image`` ... exist only there)."""
    data = _archive("templates.tar.xz").get(name)
    if data is None:
        return legacy_template(name)
    return json.loads(data)


def legacy_template(name: str) -> Workflow:
    return json.loads(_archive("legacy.tar.xz")[name])


def expected(name: str, *, legacy: bool = False) -> tuple[dict[str, Any], datetime]:
    """The editor's prompt for a template (the one :func:`template` returns unless
    ``legacy``) and the local time it converted it at."""
    table = _expected()["legacy" if legacy or name not in _expected()["templates"]
                        else "templates"]
    entry = table[name]
    return entry["prompt"], datetime.fromisoformat(entry["now"])


@functools.cache
def _object_info() -> dict[str, Any]:
    return load_gz(FIXTURES / "object_info.json.gz")


def object_info() -> dict[str, Any]:
    return copy.deepcopy(_object_info())


# --- small editing helpers ------------------------------------------------------------------


def node(wf: Workflow, node_id: Any) -> dict[str, Any]:
    return next(n for n in wf["nodes"] if n["id"] == node_id)


def new_link_id(wf: Workflow) -> int:
    return max([link[0] for link in wf["links"]] + [0]) + 1


def new_node_id(wf: Workflow) -> int:
    return max([n["id"] for n in wf["nodes"] if isinstance(n["id"], int)] + [0]) + 1


def input_slot(n: dict[str, Any], name: str, typ: str, *, widget: bool = True
               ) -> tuple[int, dict[str, Any]]:
    slots = n.setdefault("inputs", [])
    for i, slot in enumerate(slots):
        if slot.get("name") == name:
            return i, slot
    slot = {"name": name, "type": typ, "link": None}
    if widget:
        slot["widget"] = {"name": name}
    slots.append(slot)
    return len(slots) - 1, slot


def connect(wf: Workflow, origin: int, origin_slot: int, target: int, target_name: str,
            typ: str, *, widget: bool = True) -> int:
    index, slot = input_slot(node(wf, target), target_name, typ, widget=widget)
    link_id = new_link_id(wf)
    wf["links"].append([link_id, origin, origin_slot, target, index, typ])
    slot["link"] = link_id
    outputs = node(wf, origin)["outputs"]
    outputs[origin_slot]["links"] = [*(outputs[origin_slot].get("links") or []), link_id]
    return link_id


def base_node(node_id: int, type_name: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_name, "pos": [0, 0], "size": [200, 100], "flags": {},
            "order": 0, "mode": 0, "properties": {}, **extra}


def add_primitive(wf: Workflow, value: Any, control: str | None, title: str = "Primitive"
                  ) -> int:
    pid = new_node_id(wf)
    values = [value] if control is None else [value, control]
    wf["nodes"].append(base_node(
        pid, "PrimitiveNode", title=title, inputs=[],
        outputs=[{"name": "connect to widget input", "type": "*", "links": []}],
        properties={"Run widget replace on values": False}, widgets_values=values))
    return pid


def add_reroute(wf: Workflow, mode: int = 0) -> int:
    rid = new_node_id(wf)
    wf["nodes"].append(base_node(
        rid, "Reroute", mode=mode, inputs=[{"name": "", "type": "*", "link": None}],
        outputs=[{"name": "", "type": "*", "links": []}],
        properties={"showOutputText": False, "horizontal": False}))
    return rid


def reroute_link(wf: Workflow, link_id: int, modes: list[int]) -> list[int]:
    """Put a chain of reroutes (with these modes) on an existing top-level link."""
    link = next(x for x in wf["links"] if x[0] == link_id)
    origin, origin_slot, target, target_slot, typ = link[1], link[2], link[3], link[4], link[5]
    wf["links"].remove(link)
    out = node(wf, origin)["outputs"][origin_slot]
    out["links"] = [x for x in out.get("links") or [] if x != link_id]
    prev, prev_slot, ids = origin, origin_slot, []
    for mode in modes:
        rid = add_reroute(wf, mode)
        lid = new_link_id(wf)
        wf["links"].append([lid, prev, prev_slot, rid, 0, typ])
        node(wf, rid)["inputs"][0]["link"] = lid
        node(wf, prev)["outputs"][prev_slot]["links"] = [
            *(node(wf, prev)["outputs"][prev_slot].get("links") or []), lid]
        prev, prev_slot = rid, 0
        ids.append(rid)
    lid = new_link_id(wf)
    wf["links"].append([lid, prev, 0, target, target_slot, typ])
    node(wf, prev)["outputs"][0]["links"].append(lid)
    node(wf, target)["inputs"][target_slot]["link"] = lid
    return ids


def link_into(wf: Workflow, target: int, name: str) -> int:
    return next(s["link"] for s in node(wf, target)["inputs"] if s["name"] == name)


# --- subgraphs --------------------------------------------------------------------------------


def wrap_subgraph(wf: Workflow, ids: list[Any], rng: random.Random,
                  promote: list[tuple[Any, str, str, Any]] | None = None,
                  name: str | None = None) -> int:
    """Turn top-level nodes ``ids`` into one subgraph node, as the editor's "Convert to
    Subgraph" does: links crossing the boundary become subgraph inputs/outputs.
    ``promote``: ``(inner node id, widget, type, value)`` inner widgets to expose as
    subgraph inputs, with the value the subgraph node holds for them."""
    chosen = set(ids)
    sub_id = str(uuid.UUID(int=rng.getrandbits(128)))
    inner_nodes = [copy.deepcopy(n) for n in wf["nodes"] if n["id"] in chosen]
    inner = {n["id"]: n for n in inner_nodes}
    inner_links: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    counter = [1000]

    def add_inner(origin: Any, origin_slot: int, target: Any, target_slot: int, typ: Any) -> int:
        counter[0] += 1
        inner_links.append({"id": counter[0], "origin_id": origin, "origin_slot": origin_slot,
                            "target_id": target, "target_slot": target_slot, "type": typ})
        return counter[0]

    def io(name: str, typ: Any, link_id: int) -> dict[str, Any]:
        return {"id": str(uuid.UUID(int=rng.getrandbits(128))), "name": name, "type": typ,
                "linkIds": [link_id], "localized_name": name}

    inst_id = new_node_id(wf) + rng.randint(0, 3)
    inst_inputs: list[dict[str, Any]] = []
    inst_outputs: list[dict[str, Any]] = []
    out_index: dict[tuple[Any, int], int] = {}
    root_links: list[list[Any]] = []

    def relink_input(n: dict[str, Any], old: int, new: int) -> None:
        for s in n.get("inputs", []):
            if s.get("link") == old:
                s["link"] = new

    for link in wf["links"]:
        lid, origin, oslot, target, tslot, typ = link
        if origin in chosen and target in chosen:
            new = add_inner(origin, oslot, target, tslot, typ)
            relink_input(inner[target], lid, new)
            for s in inner[origin].get("outputs", []):
                if s.get("links"):
                    s["links"] = [new if x == lid else x for x in s["links"]]
        elif target in chosen:
            k = len(inputs)
            new = add_inner(-10, k, target, tslot, typ)
            inputs.append(io(f"in{k}", typ, new))
            relink_input(inner[target], lid, new)
            inst_inputs.append({"name": f"in{k}", "type": typ, "link": lid})
            root_links.append([lid, origin, oslot, inst_id, k, typ])
        elif origin in chosen:
            key = (origin, oslot)
            if key not in out_index:
                j = len(outputs)
                new = add_inner(origin, oslot, -20, j, typ)
                outputs.append(io(f"out{j}", typ, new))
                inst_outputs.append({"name": f"out{j}", "type": typ, "links": []})
                out_index[key] = j
                slot = inner[origin]["outputs"][oslot]
                slot["links"] = [x for x in slot.get("links") or [] if x != lid] + [new]
            j = out_index[key]
            inst_outputs[j]["links"].append(lid)
            root_links.append([lid, inst_id, j, target, tslot, typ])
        else:
            root_links.append(link)
    inner_ids = {x["id"] for x in inner_links}
    for n in inner_nodes:
        for s in n.get("outputs", []):
            if s.get("links"):
                s["links"] = [x for x in s["links"] if x in inner_ids]
    values = []
    for inner_id, widget, typ, value in promote or []:
        index, slot = input_slot(inner[inner_id], widget, typ)
        if slot.get("link") is not None:
            continue
        k = len(inputs)
        new = add_inner(-10, k, inner_id, index, typ)
        slot["link"] = new
        input_name = f"p{k}_{widget}"
        inputs.append(io(input_name, typ, new))
        inst_inputs.append({"name": input_name, "type": typ, "widget": {"name": input_name},
                            "link": None})
        values.append(value)
    definition = {
        "id": sub_id, "version": 1, "revision": 0, "config": {}, "name": name or f"sub{inst_id}",
        "state": {"lastGroupId": 0, "lastNodeId": 100, "lastLinkId": counter[0],
                  "lastRerouteId": 0},
        "inputNode": {"id": -10, "bounding": [0, 0, 100, 100]},
        "outputNode": {"id": -20, "bounding": [500, 0, 100, 100]},
        "inputs": inputs, "outputs": outputs, "widgets": [], "nodes": inner_nodes,
        "groups": [], "links": inner_links, "extra": {}}
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] not in chosen] + [base_node(
        inst_id, sub_id, inputs=inst_inputs, outputs=inst_outputs, widgets_values=values)]
    wf["links"] = root_links
    wf.setdefault("definitions", {}).setdefault("subgraphs", []).append(definition)
    return inst_id


def definition_of(wf: Workflow, instance_id: int) -> dict[str, Any]:
    sub_id = node(wf, instance_id)["type"]
    return next(d for d in wf["definitions"]["subgraphs"] if d["id"] == sub_id)


# --- targeted cases (on the SD1.5 "default" template) ------------------------------------------
# default: 3 KSampler, 4 CheckpointLoaderSimple, 5 EmptyLatentImage, 6/7 CLIPTextEncode,
# 8 VAEDecode, 9 SaveImage (+ MarkdownNotes)

CASES: dict[str, Callable[[], Case]] = {}


def case(fn: Callable[[], Case]) -> Callable[[], Case]:
    CASES[fn.__name__] = fn
    return fn


def default() -> Workflow:
    """The SD 1.5 ``default`` template ComfyUI 0.3.75 shipped (saved by an older editor)."""
    return legacy_template("default")


@case
def mute_ksampler() -> Case:
    wf = default()
    node(wf, 3)["mode"] = 2
    return Case(wf, None)


@case
def bypass_ksampler() -> Case:
    wf = default()
    node(wf, 3)["mode"] = 4
    return Case(wf, None)


@case
def bypass_vae_decode_no_matching_type() -> Case:
    wf = default()
    node(wf, 8)["mode"] = 4
    return Case(wf, None)


@case
def modes_on_event_and_trigger() -> Case:
    wf = default()
    node(wf, 3)["mode"] = 1
    node(wf, 8)["mode"] = 3
    return Case(wf, None)


@case
def titles_missing() -> Case:
    wf = default()
    for n in wf["nodes"]:
        n.pop("title", None)
    return Case(wf, None)


@case
def duplicate_node_id() -> Case:
    wf = default()
    twin = copy.deepcopy(node(wf, 5))
    twin["widgets_values"] = [256, 256, 2]
    wf["nodes"].append(twin)
    return Case(wf, None)


@case
def widgets_values_as_dict() -> Case:
    wf = default()
    node(wf, 5)["widgets_values"] = {"width": 100, "height": 200, "batch_size": 3}
    return Case(wf, None)


@case
def legacy_sampler_name_and_control() -> Case:
    wf = default()
    values = node(wf, 3)["widgets_values"]
    values[4] = "sample_euler_ancestral"
    values[1] = True
    return Case(wf, None)


@case
def widgets_values_short() -> Case:
    wf = default()
    node(wf, 3)["widgets_values"] = [5]
    return Case(wf, None)


@case
def widgets_values_long() -> Case:
    wf = default()
    node(wf, 3)["widgets_values"] += ["x", 1, 2]
    return Case(wf, None)


@case
def filename_prefix_replacements() -> Case:
    wf = default()
    node(wf, 9)["widgets_values"] = [
        "%date:yyyy-MM-dd%/x_%KSampler.seed%_%Empty Latent Image.width%_%date:hh.mm%"
        "_%date:yy%_%nope.x%_%width%_%CLIPTextEncode.text%"]
    return Case(wf, None)


@case
def dynamic_prompt_middle_choice() -> Case:
    wf = default()
    node(wf, 6)["widgets_values"] = [
        "a {red|green|blue {x|y}} cat // comment\n/* block */ b \\{lit\\} {single} "
        "http://x.y {|empty}"]
    return Case(wf, 0.5)


@case
def dynamic_prompt_first_choice() -> Case:
    wf = default()
    node(wf, 6)["widgets_values"] = ["{a|b|c} {{nested|n2}|z}"]
    return Case(wf, 0.0)


@case
def dynamic_prompt_last_choice() -> Case:
    wf = default()
    node(wf, 6)["widgets_values"] = ["{a|b|c} {{nested|n2}|z} \\"]
    return Case(wf, 0.999)


@case
def multiline_text_given_a_number_and_null() -> Case:
    wf = default()
    node(wf, 6)["widgets_values"] = [12.5]
    node(wf, 7)["widgets_values"] = [None]
    return Case(wf, None)


@case
def seed_beyond_double_precision() -> Case:
    wf = default()
    node(wf, 3)["widgets_values"][0] = 18446744073709551615
    return Case(wf, None)


@case
def multiline_text_with_crlf() -> Case:
    wf = default()
    node(wf, 6)["widgets_values"] = ["line1\r\nline2\rline3"]
    return Case(wf, None)


@case
def link_from_missing_node() -> Case:
    wf = default()
    wf["links"].append([99, 77, 0, 8, 0, "LATENT"])
    node(wf, 8)["inputs"][0]["link"] = 99
    return Case(wf, None)


@case
def input_refers_to_missing_link() -> Case:
    wf = default()
    node(wf, 8)["inputs"][0]["link"] = 555
    return Case(wf, None)


@case
def unknown_type_muted() -> Case:
    wf = default()
    wf["nodes"].append(base_node(50, "NoSuchNode", mode=2, inputs=[], outputs=[],
                                 widgets_values=[1]))
    return Case(wf, None)


@case
def unknown_type_bypassed_passes_through() -> Case:
    wf = default()
    wf["nodes"].append(base_node(
        50, "NoSuchNode", mode=4, inputs=[{"name": "x", "type": "LATENT", "link": None}],
        outputs=[{"name": "y", "type": "LATENT", "links": []}], widgets_values=[]))
    old = link_into(wf, 8, "samples")
    link = next(x for x in wf["links"] if x[0] == old)
    link[3], link[4] = 50, 0
    node(wf, 50)["inputs"][0]["link"] = old
    connect(wf, 50, 0, 8, "samples", "LATENT", widget=False)
    return Case(wf, None)


@case
def bypassed_node_fed_by_itself_is_circular() -> Case:
    wf = default()
    ks = node(wf, 3)
    ks["mode"] = 4
    latent = next(s for s in ks["inputs"] if s["name"] == "latent_image")
    wf["links"] = [x for x in wf["links"] if x[0] != latent["link"]]
    wf["links"].append([150, 3, 0, 3, 3, "LATENT"])
    latent["link"] = 150
    ks["outputs"][0]["links"].append(150)
    return Case(wf, None)


@case
def reroute_single() -> Case:
    wf = default()
    reroute_link(wf, link_into(wf, 8, "samples"), [0])
    return Case(wf, None)


@case
def reroute_chain_of_three() -> Case:
    wf = default()
    reroute_link(wf, link_into(wf, 8, "samples"), [0, 0, 0])
    return Case(wf, None)


@case
def reroute_muted_cuts_the_link() -> Case:
    wf = default()
    reroute_link(wf, link_into(wf, 8, "samples"), [0, 2, 0])
    return Case(wf, None)


@case
def reroute_bypassed() -> Case:
    wf = default()
    reroute_link(wf, link_into(wf, 8, "samples"), [4, 0])
    return Case(wf, None)


@case
def bypass_behind_reroute_uses_wildcard() -> Case:
    wf = default()
    reroute_link(wf, link_into(wf, 8, "samples"), [0])
    node(wf, 3)["mode"] = 4
    return Case(wf, None)


def _primitive_case(target: int, widget: str, typ: str, value: Any, control: str | None,
                    more: tuple[tuple[int, str], ...] = ()) -> Workflow:
    wf = default()
    pid = add_primitive(wf, value, control, title=f"prim {widget}")
    for tid, name in ((target, widget), *more):
        connect(wf, pid, 0, tid, name, typ)
    return wf


@case
def primitive_seed_fixed() -> Case:
    return Case(_primitive_case(3, "seed", "INT", 12345, "fixed"), None)


@case
def primitive_seed_randomize() -> Case:
    return Case(_primitive_case(3, "seed", "INT", 12345, "randomize"), None)


@case
def primitive_steps_rounded() -> Case:
    return Case(_primitive_case(3, "steps", "INT", 7.6, "fixed"), None)


@case
def primitive_steps_clamped() -> Case:
    return Case(_primitive_case(3, "steps", "INT", 50000, "fixed"), None)


@case
def primitive_cfg_rounded() -> Case:
    return Case(_primitive_case(3, "cfg", "FLOAT", 7.123456, "fixed"), None)


@case
def primitive_denoise_rounded() -> Case:
    return Case(_primitive_case(3, "denoise", "FLOAT", 0.3333333, "fixed"), None)


@case
def primitive_combo() -> Case:
    return Case(_primitive_case(3, "sampler_name", "COMBO", "dpmpp_2m", "fixed"), None)


@case
def primitive_text_with_dynamic_prompt() -> Case:
    return Case(_primitive_case(6, "text", "STRING", "hello {a|b}", None), 0.0)


@case
def primitive_two_targets() -> Case:
    return Case(_primitive_case(5, "width", "INT", 700, "fixed", ((5, "height"),)), None)


@case
def primitive_two_targets_ranges_disagree() -> Case:
    return Case(_primitive_case(5, "width", "INT", 4097, "fixed", ((5, "batch_size"),)), None)


@case
def primitive_muted_still_applies() -> Case:
    wf = _primitive_case(3, "seed", "INT", 99, "fixed")
    next(n for n in wf["nodes"] if n["type"] == "PrimitiveNode")["mode"] = 2
    return Case(wf, None)


@case
def primitive_text_replacement() -> Case:
    wf = _primitive_case(9, "filename_prefix", "STRING", "%KSampler.steps%-p", None)
    prim = next(n for n in wf["nodes"] if n["type"] == "PrimitiveNode")
    prim["properties"]["Run widget replace on values"] = True
    return Case(wf, None)


@case
def primitive_through_reroute_takes_target_default() -> Case:
    wf = _primitive_case(3, "steps", "INT", 33, "fixed")
    reroute_link(wf, link_into(wf, 3, "steps"), [0])
    return Case(wf, None)


@case
def converted_widget_linked_from_node() -> Case:
    wf = default()
    wf["nodes"].append(base_node(80, "PrimitiveInt", inputs=[],
                                 outputs=[{"name": "INT", "type": "INT", "links": []}],
                                 widgets_values=[33, "fixed"]))
    connect(wf, 80, 0, 3, "steps", "INT")
    return Case(wf, None)


@case
def converted_widget_linked_from_muted_node_keeps_value() -> Case:
    wf = converted_widget_linked_from_node().workflow
    node(wf, 80)["mode"] = 2
    return Case(wf, None)


@case
def converted_widget_linked_from_bypassed_node() -> Case:
    wf = converted_widget_linked_from_node().workflow
    node(wf, 80)["mode"] = 4
    return Case(wf, None)


@case
def saved_input_for_unknown_widget_removed() -> Case:
    wf = default()
    node(wf, 3)["inputs"].append({"name": "bogus", "type": "INT", "widget": {"name": "bogus"},
                                  "link": None})
    return Case(wf, None)


@case
def saved_inputs_out_of_order_are_merged_by_name() -> Case:
    wf = default()
    node(wf, 3)["inputs"].reverse()
    return Case(wf, None)


@case
def schema_version_1() -> Case:
    wf = default()
    wf["version"] = 1
    wf["state"] = {"lastNodeId": wf.pop("last_node_id"), "lastLinkId": wf.pop("last_link_id"),
                   "lastGroupId": 0, "lastRerouteId": 0}
    wf["links"] = [{"id": x[0], "origin_id": x[1], "origin_slot": x[2], "target_id": x[3],
                    "target_slot": x[4], "type": x[5]} for x in wf["links"]]
    return Case(wf, None)


@case
def string_node_ids() -> Case:
    wf = default()
    for n in wf["nodes"]:
        n["id"] = str(n["id"])
    for link in wf["links"]:
        link[1], link[3] = str(link[1]), str(link[3])
    return Case(wf, None)


@case
def notes_left_out() -> Case:
    wf = default()
    wf["nodes"].append(base_node(90, "Note", properties={"text": ""}, widgets_values=["hi"]))
    wf["nodes"].append(base_node(91, "MarkdownNote", widgets_values=["# hi"]))
    return Case(wf, None)


@case
def load_image_upload_widget() -> Case:
    wf = template("image2image")
    return Case(wf, None)


@case
def load_image_empty_value() -> Case:
    wf = template("image2image")
    loader = next(n for n in wf["nodes"] if n["type"] == "LoadImage")
    loader["widgets_values"] = ["", "image"]
    return Case(wf, None)


# --- subgraph cases -------------------------------------------------------------------------------


def _sd_subgraph(rng_seed: int = 1, promote: bool = True) -> tuple[Workflow, int]:
    """KSampler + both CLIPTextEncodes in a subgraph, seed/steps/text promoted."""
    wf = default()
    rng = random.Random(rng_seed)
    promoted = [(3, "seed", "INT", 4242), (3, "steps", "INT", 12),
                (6, "text", "STRING", "promoted prompt")] if promote else []
    inst = wrap_subgraph(wf, [3, 6, 7], rng, promote=promoted, name="sampler")
    return wf, inst


@case
def subgraph_flattened_ids() -> Case:
    return Case(_sd_subgraph(promote=False)[0], None)


@case
def subgraph_promoted_widgets() -> Case:
    return Case(_sd_subgraph()[0], None)


@case
def subgraph_instance_without_values() -> Case:
    wf, inst = _sd_subgraph()
    node(wf, inst).pop("widgets_values")
    return Case(wf, None)


@case
def subgraph_values_saved_as_object() -> Case:
    """Subgraph node ``widgets_values`` saved as an object: each promoted widget is first
    set to undefined, then takes the value under its index as a key; a promoted COMBO left
    undefined takes its first option on load, like any combo."""
    wf = default()
    promoted = [(3, "seed", "INT", 4242), (3, "sampler_name", "COMBO", "dpmpp_2m"),
                (6, "text", "STRING", "promoted prompt")]
    inst = wrap_subgraph(wf, [3, 6, 7], random.Random(1), promote=promoted, name="sampler")
    node(wf, inst)["widgets_values"] = {"0": 99, "2": "keyed prompt"}
    return Case(wf, None)


@case
def subgraph_two_instances() -> Case:
    wf, inst = _sd_subgraph()
    twin = copy.deepcopy(node(wf, inst))
    twin["id"] = new_node_id(wf) + 10
    twin["widgets_values"] = [777, 3, "second instance"]
    for out in twin["outputs"]:
        out["links"] = []
    for i, slot in enumerate(twin["inputs"]):
        if slot.get("link") is None:
            continue
        old = next(x for x in wf["links"] if x[0] == slot["link"])
        lid = new_link_id(wf)
        wf["links"].append([lid, old[1], old[2], twin["id"], i, old[5]])
        slot["link"] = lid
        node(wf, old[1])["outputs"][old[2]]["links"].append(lid)
    wf["nodes"].append(twin)
    return Case(wf, None)


@case
def subgraph_instance_muted() -> Case:
    wf, inst = _sd_subgraph()
    node(wf, inst)["mode"] = 2
    return Case(wf, None)


@case
def subgraph_instance_bypassed() -> Case:
    wf, inst = _sd_subgraph()
    node(wf, inst)["mode"] = 4
    return Case(wf, None)


@case
def subgraph_inner_node_muted() -> Case:
    wf, inst = _sd_subgraph()
    node(definition_of(wf, inst), 7)["mode"] = 2
    return Case(wf, None)


@case
def subgraph_inner_node_bypassed() -> Case:
    wf, inst = _sd_subgraph()
    node(definition_of(wf, inst), 3)["mode"] = 4
    return Case(wf, None)


@case
def subgraph_nested() -> Case:
    wf, inst = _sd_subgraph()
    rng = random.Random(7)
    wrap_subgraph(wf, [inst, 5], rng, promote=[(5, "width", "INT", 640)], name="outer")
    return Case(wf, None)


@case
def subgraph_nested_outer_defined_first() -> Case:
    wf = subgraph_nested().workflow
    wf["definitions"]["subgraphs"].reverse()
    return Case(wf, None)


@case
def subgraph_nested_three_levels() -> Case:
    wf = subgraph_nested().workflow
    outer = next(n["id"] for n in wf["nodes"]
                 if n["type"] == wf["definitions"]["subgraphs"][-1]["id"])
    wrap_subgraph(wf, [outer, 4], random.Random(9), name="outermost")
    return Case(wf, None)


@case
def subgraph_promoted_input_fed_by_primitive() -> Case:
    wf, inst = _sd_subgraph()
    pid = add_primitive(wf, 31337, "fixed", title="seed primitive")
    index = next(i for i, s in enumerate(node(wf, inst)["inputs"]) if s["name"].endswith("seed"))
    lid = new_link_id(wf)
    wf["links"].append([lid, pid, 0, inst, index, "INT"])
    node(wf, inst)["inputs"][index]["link"] = lid
    node(wf, pid)["outputs"][0]["links"] = [lid]
    return Case(wf, None)


@case
def subgraph_with_reroute_inside() -> Case:
    wf = default()
    reroute_link(wf, link_into(wf, 8, "samples"), [0])
    rid = next(n["id"] for n in wf["nodes"] if n["type"] == "Reroute")
    wrap_subgraph(wf, [3, rid, 8], random.Random(3), name="with reroute")
    return Case(wf, None)


@case
def subgraph_primitive_inside() -> Case:
    wf = primitive_seed_fixed().workflow
    pid = next(n["id"] for n in wf["nodes"] if n["type"] == "PrimitiveNode")
    wrap_subgraph(wf, [3, pid], random.Random(4), name="primitive inside")
    return Case(wf, None)


@case
def subgraph_output_straight_from_input_fails() -> Case:
    wf, inst = _sd_subgraph(promote=False)
    definition = definition_of(wf, inst)
    # out0 (the KSampler LATENT) now comes straight from subgraph input 0
    link = next(x for x in definition["links"] if x["target_id"] == -20)
    link["origin_id"], link["origin_slot"] = -10, 0
    return Case(wf, None)


@case
def subgraph_proxy_widgets_order() -> Case:
    wf, inst = _sd_subgraph()
    n = node(wf, inst)
    names = [s["name"] for s in n["inputs"] if s.get("widget")]
    n["properties"]["proxyWidgets"] = [["-1", names[2]], ["-1", names[0]], ["-1", names[1]]]
    n["widgets_values"] = ["proxy order text", 999, 7]
    return Case(wf, None)


# --- frontend 1.48.7: V3 inputs, new widgets, subgraph loading ------------------------------------


def add_node(wf: Workflow, type_name: str, widgets_values: Any = None, *,
             outputs: list[tuple[str, str]] = (), node_id: int | None = None,
             **extra: Any) -> int:
    """A node as a workflow saves it (no inputs listed: the editor builds them)."""
    nid = new_node_id(wf) if node_id is None else node_id
    doc = base_node(nid, type_name, inputs=[],
                    outputs=[{"name": n, "type": t, "links": []} for n, t in outputs], **extra)
    if widgets_values is not None:
        doc["widgets_values"] = widgets_values
    wf["nodes"].append(doc)
    return nid


def _image_source(wf: Workflow) -> int:
    """A LoadImage feeding nothing yet (output 0: IMAGE)."""
    return add_node(wf, "LoadImage", ["example.png", "image"],
                    outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])


@case
def dynamic_combo_saved_choice() -> Case:
    """ResizeImageMaskNode.resize_type (COMFY_DYNAMICCOMBO_V3): the chosen option brings
    its own inputs (``resize_type.multiplier``), filled from the next saved values."""
    wf = default()
    src = _image_source(wf)
    nid = add_node(wf, "ResizeImageMaskNode", ["scale by multiplier", 1.5, "area"],
                   outputs=[("resized", "IMAGE")])
    connect(wf, src, 0, nid, "input", "IMAGE", widget=False)
    out = add_node(wf, "PreviewImage", [])
    connect(wf, nid, 0, out, "images", "IMAGE", widget=False)
    return Case(wf)


@case
def dynamic_combo_default_choice() -> Case:
    """No saved values: the combo keeps its first option and that option's defaults."""
    wf = default()
    src = _image_source(wf)
    nid = add_node(wf, "ResizeImageMaskNode", outputs=[("resized", "IMAGE")])
    connect(wf, src, 0, nid, "input", "IMAGE", widget=False)
    return Case(wf)


@case
def dynamic_combo_nested() -> Case:
    """SaveVideo.codec → codec.encoding → codec.encoding.crf: a dynamic combo inside the
    option of another, each level filled from the saved values in turn."""
    wf = default()
    video = add_node(wf, "CreateVideo", [24], outputs=[("VIDEO", "VIDEO")])
    connect(wf, 8, 0, video, "images", "IMAGE", widget=False)
    save = add_node(wf, "SaveVideo", ["video/x", "mp4", "h264", "re-encode", 18])
    connect(wf, video, 0, save, "video", "VIDEO", widget=False)
    return Case(wf)


@case
def dynamic_combo_unknown_choice() -> Case:
    """A choice this server does not offer (saved by a newer one): no option inputs, and
    the values meant for them go to the widgets that follow."""
    wf = default()
    src = _image_source(wf)
    nid = add_node(wf, "ResizeImageMaskNode", ["scale to megapixels v2", 2.0, "lanczos"],
                   outputs=[("resized", "IMAGE")])
    connect(wf, src, 0, nid, "input", "IMAGE", widget=False)
    return Case(wf)


@case
def dynamic_combo_option_input_linked() -> Case:
    """An option input fed by a link keeps its link through the rebuild."""
    wf = default()
    src = _image_source(wf)
    nid = add_node(wf, "ResizeImageMaskNode", ["scale dimensions", 640, 480, "center",
                                               "area"],
                   outputs=[("resized", "IMAGE")])
    connect(wf, src, 0, nid, "input", "IMAGE", widget=False)
    prim = add_node(wf, "PrimitiveInt", [768, "fixed"], outputs=[("INT", "INT")])
    connect(wf, prim, 0, nid, "resize_type.width", "INT")
    return Case(wf)


@case
def autogrow_connected_inputs() -> Case:
    """BatchImagesNode.images (COMFY_AUTOGROW_V3): sockets images.image0, image1, ... one
    more group appears past every connected one while loading."""
    wf = default()
    batch = add_node(wf, "BatchImagesNode", [], outputs=[("IMAGE", "IMAGE")])
    for _ in range(3):
        src = _image_source(wf)
        k = len(node(wf, batch)["inputs"])
        connect(wf, src, 0, batch, f"images.image{k}", "IMAGE", widget=False)
    out = add_node(wf, "PreviewImage", [])
    connect(wf, batch, 0, out, "images", "IMAGE", widget=False)
    return Case(wf)


@case
def autogrow_gap_in_connections() -> Case:
    """Connected image0 and image2 with image1 empty."""
    wf = default()
    batch = add_node(wf, "BatchImagesNode", [], outputs=[("IMAGE", "IMAGE")])
    node(wf, batch)["inputs"] = [{"name": n, "type": "IMAGE", "link": None}
                                 for n in ("images.image0", "images.image1", "images.image2")]
    for name in ("images.image0", "images.image2"):
        connect(wf, _image_source(wf), 0, batch, name, "IMAGE", widget=False)
    return Case(wf)


@case
def matchtype_switch() -> Case:
    """ComfySwitchNode (COMFY_MATCHTYPE_V3 inputs, output of the matched type)."""
    wf = default()
    switch = add_node(wf, "ComfySwitchNode", [True], outputs=[("output", "*")])
    connect(wf, _image_source(wf), 0, switch, "on_false", "IMAGE", widget=False)
    connect(wf, 8, 0, switch, "on_true", "IMAGE", widget=False)
    out = add_node(wf, "PreviewImage", [])
    connect(wf, switch, 0, out, "images", "IMAGE", widget=False)
    return Case(wf)


@case
def matchtype_switch_bypassed() -> Case:
    """A bypassed switch hands its consumer the input of the matching type."""
    wf = matchtype_switch().workflow
    next(n for n in wf["nodes"] if n["type"] == "ComfySwitchNode")["mode"] = 4
    return Case(wf)


@case
def preview_any_saved_preview_text() -> Case:
    """PreviewAny saved by an older editor with its ``preview`` value: the editor no
    longer sends it."""
    wf = default()
    prev = add_node(wf, "PreviewAny", ["some earlier preview text"])
    connect(wf, 4, 2, prev, "source", "*", widget=False)
    return Case(wf)


@case
def painter_mask_widget() -> Case:
    """Painter.mask (a STRING drawn by the PAINTER widget) is a widget with a value."""
    wf = default()
    painter = add_node(wf, "Painter", ["painter-1-2.png [input]", 768, 512, "#202020"],
                       outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    connect(wf, _image_source(wf), 0, painter, "image", "IMAGE", widget=False)
    return Case(wf)


@case
def curve_widget_array_value() -> Case:
    """A CURVE widget holding an array is sent as {"__type__": "CURVE", "__value__": ...}."""
    wf = default()
    add_node(wf, "CurveEditor", [[[0, 0], [0.5, 0.7], [1, 1]]], outputs=[("curve", "CURVE")])
    return Case(wf)


@case
def custom_combo_options() -> Case:
    """CustomCombo grows an option widget per saved option; ``index`` is computed."""
    wf = default()
    add_node(wf, "CustomCombo", ["beta", 0, "alpha", "beta", "gamma", ""],
             outputs=[("STRING", "STRING"), ("INDEX", "INT")])
    return Case(wf)


@case
def remote_combo_load_image_output() -> Case:
    """LoadImageOutput: a COMBO whose options the editor fetches from the server."""
    wf = default()
    add_node(wf, "LoadImageOutput", ["ComfyUI_00001_.png [output]", False, "refresh",
                                     "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    return Case(wf)


@case
def combo_null_takes_first_option() -> Case:
    wf = default()
    node(wf, 3)["widgets_values"][4] = None
    return Case(wf)


@case
def unknown_node_types_all_named() -> Case:
    """Two node types this ComfyUI lacks, one used twice: the error names them all."""
    wf = default()
    for type_name in ("FancySampler", "FancyUpscale", "FancySampler"):
        add_node(wf, type_name, [1, 2])
    return Case(wf)


@case
def unknown_type_sanitized_to_known_type() -> Case:
    """A type nobody registered loses ``&<>"'`=``: "EmptyLatentImage=" becomes a real
    EmptyLatentImage."""
    wf = default()
    node(wf, 5)["type"] = "EmptyLatentImage="
    return Case(wf)


@case
def older_server_lacks_a_widget() -> Case:
    """A workflow saved with newer node definitions than the server's: the server's
    EmptyLatentImage has no ``batch_size``; the saved values are assigned by position."""
    wf = default()
    node(wf, 5)["widgets_values"] = [640, 448, 3]
    info = object_info()["EmptyLatentImage"]
    del info["input"]["required"]["batch_size"]
    info["input_order"]["required"].remove("batch_size")
    return Case(wf, object_info={"EmptyLatentImage": info})


@case
def older_server_widget_in_another_place() -> Case:
    """The server's KSampler lists ``steps`` before ``seed`` (an older definition): the
    saved values still go to the widgets by position."""
    wf = default()
    info = object_info()["KSampler"]
    order = info["input_order"]["required"]
    order.remove("steps")
    order.insert(order.index("seed"), "steps")
    return Case(wf, object_info={"KSampler": info})


@case
def subgraph_unfed_input_keeps_inner_widget_value() -> Case:
    """A BasicScheduler inside a subgraph whose ``steps`` is linked to a subgraph input
    that nothing feeds: ``steps`` is the inner widget's 20, not another saved value."""
    wf = default()
    sched = add_node(wf, "BasicScheduler", ["simple", 20, 1], outputs=[("SIGMAS", "SIGMAS")])
    connect(wf, 4, 0, sched, "model", "MODEL", widget=False)
    inst = wrap_subgraph(wf, [sched], random.Random(11), name="scheduler")
    definition = definition_of(wf, inst)
    inner = node(definition, sched)
    index, slot = input_slot(inner, "steps", "INT")
    link_id = 1000 + len(definition["links"]) + 50
    definition["links"].append({"id": link_id, "origin_id": -10, "origin_slot":
                                len(definition["inputs"]), "target_id": sched,
                                "target_slot": index, "type": "INT"})
    slot["link"] = link_id
    definition["inputs"].append({"id": str(uuid.UUID(int=5)), "name": "steps", "type": "INT",
                                 "linkIds": [link_id]})
    node(wf, inst)["inputs"].append({"name": "steps", "type": "INT", "link": None})
    return Case(wf)


@case
def subgraph_inner_id_clashes_with_top_level() -> Case:
    """Inner node ids that a top-level node also has are renumbered before loading, so
    the flattened ids follow the new numbers."""
    wf, _ = _sd_subgraph()
    save = add_node(wf, "PreviewImage", [], node_id=3)
    connect(wf, 8, 0, save, "images", "IMAGE", widget=False)
    add_node(wf, "EmptyLatentImage", [320, 320, 1], node_id=6,
             outputs=[("LATENT", "LATENT")])
    return Case(wf)


@case
def subgraph_ids_clash_between_definitions() -> Case:
    """Two subgraph definitions with the same inner node id: the later one's node is
    renumbered."""
    wf, _ = _sd_subgraph()
    wrap_subgraph(wf, [9], random.Random(21), name="save")
    definition = wf["definitions"]["subgraphs"][-1]
    definition["nodes"][0]["id"] = 3
    for link in definition["links"]:
        for end in ("origin_id", "target_id"):
            if link[end] == 9:
                link[end] = 3
    return Case(wf)


@case
def subgraph_bypassed_with_passthrough() -> Case:
    """A bypassed subgraph is dropped whole; its consumer gets the input of the same
    type."""
    wf, inst = _sd_subgraph()
    node(wf, inst)["mode"] = 4
    return Case(wf)


@case
def legacy_fixes_inside_subgraphs() -> Case:
    """The editor's load-time fixes (old sampler names, boolean controls) now reach the
    nodes inside subgraphs too."""
    wf, inst = _sd_subgraph(promote=False)
    values = node(definition_of(wf, inst), 3)["widgets_values"]
    values[4] = "sample_dpmpp_2m"
    values[1] = False
    return Case(wf)


def _proxy_case(entries: list[list[str]], values: list[Any] | dict[str, Any],
                promote: bool = True) -> Workflow:
    wf, inst = _sd_subgraph(promote=promote)
    host = node(wf, inst)
    host["properties"]["proxyWidgets"] = entries
    host["widgets_values"] = values
    return wf


@case
def proxy_widgets_already_promoted() -> Case:
    """Legacy ``proxyWidgets`` naming widgets already promoted through a subgraph input:
    the saved values go to those inputs."""
    wf = _proxy_case([["3", "seed"], ["3", "steps"], ["6", "text"]],
                     [1111, 9, "proxy text"])
    return Case(wf)


@case
def proxy_widgets_new_subgraph_input() -> Case:
    """``proxyWidgets`` naming inner widgets no subgraph input feeds: the editor adds a
    subgraph input linked to each, holding the saved value."""
    wf = _proxy_case([["3", "cfg"], ["7", "text"]], [5.5, "proxy negative"], promote=False)
    return Case(wf)


@case
def proxy_widgets_quarantined_host_value() -> Case:
    """A ``-1`` entry (a widget the host itself owns) cannot be migrated: its saved value
    still lands on the host input of that name."""
    wf = _proxy_case([["-1", "p0_seed"], ["99", "nothing"]], [2222, 0])
    return Case(wf)


@case
def proxy_widgets_null_host_value_keeps_inner_value() -> Case:
    """A ``null`` saved host value is a hole: the promoted widget keeps the inner node's
    own value, while the next entry's value still applies."""
    wf = _proxy_case([["3", "cfg"], ["7", "text"]], [None, "proxy negative"],
                     promote=False)
    return Case(wf)


@case
def proxy_widgets_values_saved_as_object() -> Case:
    """Host ``widgets_values`` saved as an object: entries are looked up by their index
    as a key, a missing key is a hole."""
    wf = _proxy_case([["3", "cfg"], ["7", "text"]], {"1": "keyed negative"},
                     promote=False)
    return Case(wf)


@case
def proxy_widgets_primitive_inside() -> Case:
    """A PrimitiveNode inside the subgraph named by ``proxyWidgets`` is replaced by a
    subgraph input that feeds its targets."""
    wf = primitive_seed_fixed().workflow
    pid = next(n["id"] for n in wf["nodes"] if n["type"] == "PrimitiveNode")
    inst = wrap_subgraph(wf, [3, pid], random.Random(4), name="primitive inside")
    host = node(wf, inst)
    host["properties"]["proxyWidgets"] = [[str(pid), "value"]]
    host["widgets_values"] = [777]
    return Case(wf)


@case
def links_that_disagree_are_kept() -> Case:
    """The editor no longer repairs links on load (workflow validation is off by
    default): an output that does not list its link still feeds the input."""
    wf = default()
    for out in node(wf, 4)["outputs"]:
        out["links"] = []
    return Case(wf)


@case
def duplicate_ids_in_a_subgraph_share_widget_values() -> Case:
    """Two nodes with one id inside a subgraph: the second is renumbered when added, then
    takes its saved id back, and the prompt keeps one entry for that id."""
    wf, inst = _sd_subgraph(promote=False)
    definition = definition_of(wf, inst)
    twin = copy.deepcopy(node(definition, 6))
    twin["widgets_values"] = ["twin prompt"]
    for slot in twin.get("inputs", []):
        slot["link"] = None
    for out in twin.get("outputs", []):
        out["links"] = []
    definition["nodes"].append(twin)
    return Case(wf)


@case
def string_top_level_ids_reserve_nothing() -> Case:
    """Only numeric top-level ids are reserved against inner ids: a top-level "3" (a
    string) and an inner 3 keep their ids, and their widgets share the store key."""
    wf, _ = _sd_subgraph(promote=False)
    add_node(wf, "EmptyLatentImage", [384, 384, 4], node_id="3",
             outputs=[("LATENT", "LATENT")])
    return Case(wf)


@case
def matchtype_output_type_drops_a_link_it_cannot_feed() -> Case:
    """The switch's output takes the type its inputs share (IMAGE); a link from it into
    a LATENT input is dropped on the frame after loading."""
    wf = matchtype_switch().workflow
    switch = next(n["id"] for n in wf["nodes"] if n["type"] == "ComfySwitchNode")
    decode = add_node(wf, "VAEDecode", [], outputs=[("IMAGE", "IMAGE")])
    connect(wf, switch, 0, decode, "samples", "LATENT", widget=False)
    connect(wf, 4, 2, decode, "vae", "VAE", widget=False)
    return Case(wf)


def _switch_fed_through_reroutes(both: bool) -> Workflow:
    """The switch of the case above fed through reroutes saved with the output type "*",
    listed after them (so the reroutes come first in the graph's node order)."""
    wf = matchtype_output_type_drops_a_link_it_cannot_feed().workflow
    switch = node(wf, next(n["id"] for n in wf["nodes"] if n["type"] == "ComfySwitchNode"))
    names = ["on_false", "on_true"] if both else ["on_true"]
    if not both:
        on_false = link_into(wf, switch["id"], "on_false")
        gone = next(x for x in wf["links"] if x[0] == on_false)
        wf["links"].remove(gone)
        node(wf, gone[1])["outputs"][gone[2]]["links"].remove(on_false)
        switch["inputs"] = [s for s in switch["inputs"] if s["name"] != "on_false"]
        for link in wf["links"]:
            if link[3] == switch["id"]:
                link[4] = next(i for i, s in enumerate(switch["inputs"])
                               if s["link"] == link[0])
    for name in names:
        reroute_link(wf, link_into(wf, switch["id"], name), [0])
    wf["nodes"].remove(switch)
    wf["nodes"].append(switch)
    return wf


@case
def matchtype_settles_before_the_reroutes_feeding_it() -> Case:
    """A switch fed through a reroute saved untyped: the switch's frame (asked for when
    the node was built) runs before the reroute's (asked for once the graph was
    configured), so it still sees "*" and the link into LATENT stays."""
    return Case(_switch_fed_through_reroutes(both=False))


@case
def matchtype_retyped_by_a_second_reroute() -> Case:
    """Both switch inputs fed through untyped reroutes: each reroute's frame calls the
    switch's connection handler before typing itself, so the second one finds the first
    already typed IMAGE."""
    return Case(_switch_fed_through_reroutes(both=True))


@case
def matchtype_output_retypes_the_switch_it_feeds() -> Case:
    """Switch A feeds switch B, which comes first in the node order and feeds a LATENT
    input: B's frame still sees A's saved "*", then A's output turns IMAGE and calls B's
    handler, which drops B's link into LATENT."""
    wf = default()
    first = add_node(wf, "ComfySwitchNode", [False], outputs=[("output", "*")])
    second = add_node(wf, "ComfySwitchNode", [True], outputs=[("output", "*")])
    connect(wf, _image_source(wf), 0, second, "on_false", "IMAGE", widget=False)
    connect(wf, 8, 0, second, "on_true", "IMAGE", widget=False)
    connect(wf, second, 0, first, "on_true", "*", widget=False)
    decode = add_node(wf, "VAEDecode", [], outputs=[("IMAGE", "IMAGE")])
    connect(wf, first, 0, decode, "samples", "LATENT", widget=False)
    connect(wf, 4, 2, decode, "vae", "VAE", widget=False)
    return Case(wf)


@case
def autogrow_named_inputs() -> Case:
    """StringFormat.values: autogrow with fixed names (values.a, values.b, ...)."""
    wf = default()
    fmt = add_node(wf, "StringFormat", ["{a} and {b}"], outputs=[("STRING", "STRING")])
    node(wf, fmt)["inputs"] = [{"name": "values.a", "type": "*", "link": None},
                               {"name": "values.b", "type": "*", "link": None}]
    connect(wf, 4, 2, fmt, "values.a", "*", widget=False)
    connect(wf, 5, 0, fmt, "values.b", "*", widget=False)
    return Case(wf)


@case
def primitive_on_a_dynamic_option_input() -> Case:
    """A PrimitiveNode feeding an input a dynamic combo's option created."""
    wf = dynamic_combo_saved_choice().workflow
    nid = next(n["id"] for n in wf["nodes"] if n["type"] == "ResizeImageMaskNode")
    pid = add_primitive(wf, 2.5, "fixed", title="multiplier")
    connect(wf, pid, 0, nid, "resize_type.multiplier", "FLOAT")
    return Case(wf)


@case
def dynamic_combo_inside_a_subgraph_promoted() -> Case:
    """A dynamic combo inside a subgraph, its choice promoted to the subgraph node."""
    wf = dynamic_combo_saved_choice().workflow
    nid = next(n["id"] for n in wf["nodes"] if n["type"] == "ResizeImageMaskNode")
    wrap_subgraph(wf, [nid], random.Random(31), name="resize",
                  promote=[(nid, "resize_type", "COMBO", "scale longer dimension")])
    return Case(wf)


@case
def save_glb_viewer_widget_is_always_empty() -> Case:
    """SaveGLB's 3D viewer (a component widget without a value of its own) is sent as ""
    whatever ``widgets_values`` holds for it."""
    wf = default()
    add_node(wf, "SaveGLB", ["3d/mesh", "saved-render.png"])
    return Case(wf)


# --- seeded random variants of the templates ------------------------------------------------------


def widget_slots(n: dict[str, Any], info: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(widget name, saved value, type) of a node's plain widgets, per /object_info."""
    spec = info.get(n.get("type"))
    values = n.get("widgets_values")
    if not spec or not isinstance(values, list):
        return []
    out, i = [], 0
    for group in ("required", "optional"):
        for name in (spec.get("input_order") or {}).get(group, []):
            head, *rest = spec["input"][group][name]
            opts = rest[0] if rest else {}
            typ = "COMBO" if isinstance(head, list) else head
            if typ not in WIDGET_TYPES or opts.get("forceInput"):
                continue
            if i < len(values):
                out.append((name, values[i], typ))
            i += 1
            if typ == "INT" and (opts.get("control_after_generate") or name in ("seed",
                                                                                 "noise_seed")):
                i += 1
            if typ == "COMBO" and opts.get("control_after_generate"):
                i += 2
    return out


def _mutate(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.randint(0, 3)
    if isinstance(value, float):
        return round(value + rng.random(), 3)
    return value


def random_variant(name: str, seed: int, info: dict[str, Any], *, legacy: bool = False
                   ) -> Workflow:
    """A template with random primitives, reroutes, subgraphs (nested, promoted widgets,
    copied instances) and muted/bypassed nodes."""
    rng = random.Random(seed)
    wf = legacy_template(name) if legacy else template(name)
    for _ in range(rng.randint(0, 2)):
        cands = [(n, w) for n in wf["nodes"] for w in widget_slots(n, info)]
        if not cands:
            break
        n, (widget, value, typ) = rng.choice(cands)
        if input_slot(n, widget, typ)[1].get("link") is not None:
            continue
        control = "fixed" if typ in ("INT", "FLOAT", "COMBO") else None
        pid = add_primitive(wf, _mutate(value, rng), control, title=widget)
        connect(wf, pid, 0, n["id"], widget, typ)
    for _ in range(rng.randint(0, 3)):
        if wf["links"]:
            reroute_link(wf, rng.choice(wf["links"])[0], [rng.choice([0, 0, 0, 2, 4])])
    for _ in range(rng.randint(0, 2)):
        skip = ("Note", "MarkdownNote", "PrimitiveNode")
        cands = [n["id"] for n in wf["nodes"] if n["type"] not in skip
                 and isinstance(n["id"], int)]
        if len(cands) < 2:
            break
        chosen = rng.sample(cands, rng.randint(1, max(1, len(cands) // 2)))
        promote = [(n["id"], w, t, _mutate(v, rng))
                   for n in wf["nodes"] if n["id"] in chosen
                   for (w, v, t) in widget_slots(n, info)]
        rng.shuffle(promote)
        wrap_subgraph(wf, chosen, rng, promote=promote[:rng.randint(0, 3)])
    subs = (wf.get("definitions") or {}).get("subgraphs") or []
    if subs and rng.random() < 0.5:
        rng.shuffle(subs)
    for n in [*wf["nodes"], *(m for s in subs for m in s["nodes"])]:
        roll = rng.random()
        if roll < 0.06:
            n["mode"] = 2
        elif roll < 0.12:
            n["mode"] = 4
    return wf


def random_cases(count: int, info: dict[str, Any], seed: int = 0) -> Iterator[tuple[str, Case]]:
    """``count`` variants: two thirds of today's templates, one third of the legacy ones."""
    rng = random.Random(seed)
    names, legacy = template_names(), legacy_names()
    for i in range(count):
        if i % 3 == 2:
            name = rng.choice(legacy)
            yield f"random_legacy_{name}_{i}", Case(random_variant(name, 1000 + i, info,
                                                                   legacy=True))
        else:
            name = rng.choice(names)
            yield f"random_{name}_{i}", Case(random_variant(name, 1000 + i, info))


# --- damaged documents --------------------------------------------------------------------------

JUNK: tuple[Any, ...] = (None, 0, -1, 1.5, "x", "", [], {}, [1, 2], {"a": 1}, True, "5",
                         2**70, float("nan"))


def damage(doc: Any, rng: random.Random, depth: int = 0) -> None:
    """Delete or replace one random value somewhere inside ``doc`` (in place)."""
    if isinstance(doc, dict) and doc:
        key = rng.choice(list(doc))
        roll = rng.random()
        if roll < 0.3:
            del doc[key]
        elif roll < 0.6 or depth > 6:
            doc[key] = copy.deepcopy(rng.choice(JUNK))
        else:
            damage(doc[key], rng, depth + 1)
    elif isinstance(doc, list) and doc:
        index = rng.randrange(len(doc))
        roll = rng.random()
        if roll < 0.2:
            del doc[index]
        elif roll < 0.5 or depth > 6:
            doc[index] = copy.deepcopy(rng.choice(JUNK))
        else:
            damage(doc[index], rng, depth + 1)
