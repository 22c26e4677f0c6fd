"""UI-format workflow → API prompt, checked against what ComfyUI's editor produced.

``tests/fixtures/workflows`` holds the editor's own answers (frontend 1.48.7 on ComfyUI
v0.33.0, recorded by ``scripts/frontend_oracle.py``): one per template of
``comfyui-workflow-templates`` 0.11.41 the test ComfyUI can run, one per legacy template
(those ComfyUI 0.3.75 shipped, saved by older editors) and one per case of
``tests/support/workflow_cases.py``. Every answer must be matched exactly, key order
included; where the editor failed, the converter must refuse too. The targeted tests
below spell out each rule on small workflows.
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.workflow_cases import (
    FIXTURES,
    damage,
    expected,
    index,
    legacy_names,
    legacy_template,
    load_gz,
    object_info,
    template,
    template_names,
)

from comfy_worker.errors import WorkerError, WorkflowConversionError, WorkflowInvalid
from comfy_worker.workflow.convert import is_ui_workflow, ui_to_api

CASE_FILES = sorted((FIXTURES / "cases").glob("*.json.gz"))
OBJECT_INFO = object_info()
# Node types whose value the editor renders in the browser (its 3D viewer): a template
# using one cannot be converted here, and the converter says so.
BROWSER_ONLY_TYPES = {"Load3D", "Load3DAdvanced", "Preview3DAdvanced", "Save3DAdvanced",
                      "PreviewGaussianSplat", "PreviewPointCloud", "SaveGaussianSplat",
                      "SavePointCloud", "WebcamCapture"}


class FixedRandom(random.Random):
    """``Math.random()`` pinned to one value, as the recordings were made."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def convert(wf: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return ui_to_api(wf, OBJECT_INFO, **kwargs)


def _active_types(wf: dict[str, Any]) -> set[str]:
    subs = (wf.get("definitions") or {}).get("subgraphs") or []
    return {n.get("type") for nodes in [wf.get("nodes") or []] + [s.get("nodes") or []
                                                                 for s in subs]
            for n in nodes if n.get("mode") not in (2, 4)}


def _assert_as_the_editor(wf: dict[str, Any], prompt: dict[str, Any], now: datetime) -> None:
    if _active_types(wf) & BROWSER_ONLY_TYPES:
        with pytest.raises(WorkflowConversionError, match="cannot be converted outside the "
                           "editor"):
            convert(wf, now=now, rng=FixedRandom(index()["template_random"]))
        return
    got = convert(wf, now=now, rng=FixedRandom(index()["template_random"]))
    assert got == prompt
    assert list(got) == list(prompt)            # the editor's key order too
    for node_id, entry in got.items():
        assert list(entry["inputs"]) == list(prompt[node_id]["inputs"]), node_id


# --- the editor's own answers -----------------------------------------------------------------


def test_fixtures_cover_the_templates_and_record_why_others_are_skipped() -> None:
    info = index()
    assert info["frontend_version"] == "1.48.7"
    assert info["templates_version"] == "0.11.41"
    assert len(template_names()) >= 490 and len(legacy_names()) >= 170
    for name, why in {**info["skipped"], **info["legacy_skipped"]}.items():
        assert why.get("unknown_node_types") or why.get("frontend_error"), name


@pytest.mark.parametrize("name", template_names())
def test_template_converts_exactly_as_the_editor(name: str) -> None:
    prompt, now = expected(name)
    _assert_as_the_editor(template(name), prompt, now)


@pytest.mark.parametrize("name", legacy_names())
def test_template_saved_by_an_older_editor_converts_as_the_new_editor_loads_it(
        name: str) -> None:
    prompt, now = expected(name, legacy=True)
    _assert_as_the_editor(legacy_template(name), prompt, now)


def _undefined_types(record: dict[str, Any]) -> list[str]:
    return [e for e in record.get("expected", {}).values()
            if e.get("class_type") == "__undefined__"]


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.name[:-8] for p in CASE_FILES])
def test_case_converts_exactly_as_the_editor(path: Path) -> None:
    record = load_gz(path)
    fixed = record["fixed_random"]
    rng = FixedRandom(fixed) if fixed is not None else random.Random(0)
    now = datetime.fromisoformat(record["now"]) if "now" in record else None
    info = {**OBJECT_INFO, **(record.get("object_info") or {})}
    if "error" in record or _undefined_types(record):
        # the editor could not queue it (or would queue nodes without a type): neither can we
        with pytest.raises(WorkflowConversionError):
            ui_to_api(record["workflow"], info, rng=rng, now=now)
        return
    got = ui_to_api(record["workflow"], info, rng=rng, now=now)
    assert got == record["expected"]
    assert list(got) == list(record["expected"])


def case(name: str) -> dict[str, Any]:
    """A recorded case: its workflow and the editor's answer."""
    return load_gz(FIXTURES / "cases" / f"{name}.json.gz")


def answer(name: str) -> dict[str, Any]:
    record = case(name)
    return record["expected"]


# --- the rules, one by one ---------------------------------------------------------------------


def test_widget_values_become_named_inputs_in_definition_order_and_links_become_pairs() -> None:
    prompt = convert(template("default"))
    ksampler = prompt["3"]
    assert ksampler["class_type"] == "KSampler"
    assert ksampler["_meta"] == {"title": "KSampler"}
    # widgets_values [seed, "randomize", steps, cfg, sampler, scheduler, denoise]: the
    # control_after_generate slot after the seed is skipped
    assert ksampler["inputs"]["seed"] == 685468484323813
    assert ksampler["inputs"]["steps"] == 20
    assert ksampler["inputs"]["sampler_name"] == "euler"
    assert "control_after_generate" not in ksampler["inputs"]
    assert ksampler["inputs"]["model"] == ["4", 0]
    assert list(ksampler["inputs"]) == ["seed", "steps", "cfg", "sampler_name", "scheduler",
                                        "denoise", "model", "positive", "negative",
                                        "latent_image"]
    assert all(isinstance(k, str) for k in prompt)


def test_notes_and_markdown_notes_are_left_out() -> None:
    prompt = answer("notes_left_out")
    assert {e["class_type"] for e in prompt.values()} == {
        "KSampler", "CheckpointLoaderSimple", "EmptyLatentImage", "CLIPTextEncode",
        "VAEDecode", "SaveImage"}


def test_muted_node_is_left_out_and_inputs_fed_by_it_are_dropped() -> None:
    prompt = convert(case("mute_ksampler")["workflow"])
    assert "3" not in prompt
    assert "samples" not in prompt["8"]["inputs"]       # its consumer loses the link
    assert prompt["8"]["inputs"]["vae"] == ["4", 2]


def test_bypassed_node_passes_the_input_of_the_same_type() -> None:
    prompt = convert(case("bypass_ksampler")["workflow"])
    assert "3" not in prompt
    # VAEDecode.samples wanted the KSampler's LATENT: it gets KSampler's latent_image
    assert prompt["8"]["inputs"]["samples"] == ["5", 0]


def test_bypassed_node_without_an_input_of_that_type_gives_nothing() -> None:
    prompt = convert(case("bypass_vae_decode_no_matching_type")["workflow"])
    assert "8" not in prompt
    assert "images" not in prompt["9"]["inputs"]


def test_bypassed_unknown_node_still_passes_through() -> None:
    prompt = convert(case("unknown_type_bypassed_passes_through")["workflow"])
    assert "50" not in prompt
    assert prompt["8"]["inputs"]["samples"] == ["3", 0]


def test_reroute_chains_are_followed_and_a_muted_reroute_cuts_the_link() -> None:
    for name in ("reroute_single", "reroute_chain_of_three", "reroute_bypassed"):
        prompt = convert(case(name)["workflow"])
        assert prompt["8"]["inputs"]["samples"] == ["3", 0], name
        assert all(e["class_type"] != "Reroute" for e in prompt.values())
    # a muted node gives nothing, a muted reroute too (frontend 1.4x)
    muted = convert(case("reroute_muted_cuts_the_link")["workflow"])
    assert "samples" not in muted["8"]["inputs"]
    assert muted == answer("reroute_muted_cuts_the_link")


def test_primitive_value_is_folded_into_its_target_and_the_primitive_left_out() -> None:
    prompt = convert(case("primitive_seed_fixed")["workflow"])
    assert prompt["3"]["inputs"]["seed"] == 12345
    assert all(e["class_type"] != "PrimitiveNode" for e in prompt.values())


def test_primitive_value_goes_through_the_target_widgets_rounding_and_range() -> None:
    assert convert(case("primitive_steps_rounded")["workflow"])["3"]["inputs"]["steps"] == 8
    assert convert(case("primitive_steps_clamped")["workflow"])["3"]["inputs"]["steps"] \
        == 10000
    assert convert(case("primitive_cfg_rounded")["workflow"])["3"]["inputs"]["cfg"] == 7.1
    assert convert(case("primitive_denoise_rounded")["workflow"])["3"]["inputs"]["denoise"] \
        == 0.33


def test_primitive_feeding_two_inputs_sets_both() -> None:
    inputs = convert(case("primitive_two_targets")["workflow"])["5"]["inputs"]
    assert inputs["width"] == inputs["height"] == 704      # 700 snapped to the step of 8


def test_muted_primitive_still_applies_its_value() -> None:
    assert convert(case("primitive_muted_still_applies")["workflow"])["3"]["inputs"]["seed"] \
        == 99


def test_primitive_through_a_reroute_takes_the_targets_default() -> None:
    # the editor re-makes such a primitive's widget from the reroute's target spec, so the
    # KSampler keeps its own value (the link through the reroute resolves to nothing)
    expected = answer("primitive_through_reroute_takes_target_default")
    assert convert(case("primitive_through_reroute_takes_target_default")["workflow"]) \
        == expected
    assert expected["3"]["inputs"]["steps"] == 20


def test_converted_widget_input_that_is_linked_overrides_the_widget_value() -> None:
    prompt = convert(case("converted_widget_linked_from_node")["workflow"])
    assert prompt["3"]["inputs"]["steps"] == ["80", 0]
    assert prompt["80"]["class_type"] == "PrimitiveInt"


def test_linked_widget_whose_source_is_muted_keeps_the_widget_value() -> None:
    prompt = convert(case("converted_widget_linked_from_muted_node_keeps_value")["workflow"])
    assert prompt["3"]["inputs"]["steps"] == 20         # the link gives nothing
    assert "80" not in prompt


def test_control_after_generate_slot_is_skipped_and_the_seed_kept_as_saved() -> None:
    wf = template("default")
    ks = next(n for n in wf["nodes"] if n["id"] == 3)
    ks["widgets_values"] = [7, "increment", 30, 6.5, "dpmpp_2m", "karras", 0.5]
    inputs = convert(wf)["3"]["inputs"]
    assert inputs["seed"] == 7           # applied after queueing, not before
    assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"],
            inputs["denoise"]) == (30, 6.5, "dpmpp_2m", "karras", 0.5)


def test_upload_widget_takes_a_slot_but_is_no_input() -> None:
    wf = template("image2image")
    loader = next(n for n in wf["nodes"] if n["type"] == "LoadImage")
    assert len(loader["widgets_values"]) == 2           # [file, "image"]
    inputs = convert(wf)[str(loader["id"])]["inputs"]
    assert inputs == {"image": loader["widgets_values"][0]}


def test_load_image_sends_its_value_as_saved() -> None:
    # frontend 1.4x: the upload button no longer rewrites the file COMBO's value
    prompt = convert(case("load_image_empty_value")["workflow"])
    assert prompt == answer("load_image_empty_value")
    loader = next(e for e in prompt.values() if e["class_type"] == "LoadImage")
    assert loader["inputs"]["image"] == ""


def test_subgraph_nodes_are_flattened_with_outer_colon_inner_ids() -> None:
    prompt = convert(case("subgraph_flattened_ids")["workflow"])
    inner = [k for k in prompt if ":" in k]
    assert sorted(inner) == ["16:3", "16:6", "16:7"]
    assert prompt["16:3"]["inputs"]["positive"] == ["16:6", 0]     # links inside
    assert prompt["16:3"]["inputs"]["model"] == ["4", 0]           # in through an input
    assert prompt["8"]["inputs"]["samples"] == ["16:3", 0]         # out through an output


def test_promoted_widget_values_on_the_subgraph_node_win() -> None:
    prompt = convert(case("subgraph_promoted_widgets")["workflow"])
    assert prompt["16:3"]["inputs"]["seed"] == 4242
    assert prompt["16:3"]["inputs"]["steps"] == 12
    assert prompt["16:6"]["inputs"]["text"] == "promoted prompt"


def test_two_instances_of_one_subgraph_keep_their_own_values() -> None:
    prompt = convert(case("subgraph_two_instances")["workflow"])
    seeds = sorted(e["inputs"]["seed"] for k, e in prompt.items()
                   if e["class_type"] == "KSampler")
    assert seeds == [777, 4242]


def test_nested_subgraphs_get_chained_ids() -> None:
    for name in ("subgraph_nested", "subgraph_nested_outer_defined_first"):
        prompt = convert(case(name)["workflow"])
        assert prompt == answer(name)
        assert any(k.count(":") == 2 for k in prompt), name
    deep = convert(case("subgraph_nested_three_levels")["workflow"])
    assert any(k.count(":") == 3 for k in deep)


def test_muted_or_bypassed_nodes_inside_a_subgraph() -> None:
    muted = convert(case("subgraph_inner_node_muted")["workflow"])
    assert "16:7" not in muted and "negative" not in muted["16:3"]["inputs"]
    bypassed = convert(case("subgraph_inner_node_bypassed")["workflow"])
    assert "16:3" not in bypassed
    assert bypassed["8"]["inputs"]["samples"] == ["5", 0]


def test_a_muted_or_bypassed_subgraph_is_dropped_whole() -> None:
    # frontend 1.4x: a muted or bypassed subgraph node contributes no inner node; a
    # bypassed one hands its consumers the input of the same type
    muted = convert(case("subgraph_instance_muted")["workflow"])
    assert muted == answer("subgraph_instance_muted")
    assert not any(":" in k for k in muted) and "samples" not in muted["8"]["inputs"]
    bypassed = convert(case("subgraph_bypassed_with_passthrough")["workflow"])
    assert bypassed == answer("subgraph_bypassed_with_passthrough")
    assert not any(":" in k for k in bypassed)
    assert bypassed["8"]["inputs"]["samples"] == ["5", 0]   # the LATENT the subgraph took


def test_titles_default_to_the_editors_labels() -> None:
    prompt = convert(case("titles_missing")["workflow"])
    assert prompt["5"]["_meta"]["title"] == "Empty Latent Image"
    assert prompt["4"]["_meta"]["title"] == "Load Checkpoint"


def test_widget_values_given_as_an_object_leave_the_widgets_undefined() -> None:
    # widgets_values {..}: each widget takes widgets_values[i], which is undefined
    inputs = convert(case("widgets_values_as_dict")["workflow"])["5"]["inputs"]
    assert inputs == {}


def test_legacy_sampler_names_and_boolean_control_values_are_migrated() -> None:
    inputs = convert(case("legacy_sampler_name_and_control")["workflow"])["3"]["inputs"]
    assert inputs["sampler_name"] == "euler_ancestral"


def test_dynamic_prompts_pick_one_choice_and_drop_comments() -> None:
    inputs = convert(case("dynamic_prompt_middle_choice")["workflow"],
                     rng=FixedRandom(0.5))["6"]["inputs"]
    assert inputs["text"] == answer("dynamic_prompt_middle_choice")["6"]["inputs"]["text"]
    assert "comment" not in inputs["text"] and "{" in inputs["text"]      # \{ kept literal
    first = convert(case("dynamic_prompt_first_choice")["workflow"], rng=FixedRandom(0.0))
    assert first["6"]["inputs"]["text"] == "a nested"


def test_filename_prefix_replacements_use_titles_widgets_and_the_date() -> None:
    record = case("filename_prefix_replacements")
    now = datetime.fromisoformat(record["now"])
    prefix = convert(record["workflow"], now=now)["9"]["inputs"]["filename_prefix"]
    assert prefix == record["expected"]["9"]["inputs"]["filename_prefix"]
    assert prefix.startswith(now.strftime("%Y-%m-%d") + "/x_685468484323813_512_")


def test_numbers_follow_javascript_doubles() -> None:
    inputs = convert(case("seed_beyond_double_precision")["workflow"])["3"]["inputs"]
    assert inputs["seed"] == 18446744073709552000    # what JSON.stringify writes for 2**64


def test_duplicate_node_ids_behave_as_in_the_editor() -> None:
    assert convert(case("duplicate_node_id")["workflow"]) == answer("duplicate_node_id")


def test_string_node_ids_and_schema_version_1_documents_convert() -> None:
    reference = convert(template("default"))
    assert convert(case("string_node_ids")["workflow"]) == reference
    assert convert(case("schema_version_1")["workflow"]) == reference


# --- frontend 1.48.7: V3 inputs, new widgets, subgraph loading --------------------------------


def test_dynamic_combo_sends_the_choice_and_its_own_inputs() -> None:
    prompt = convert(case("dynamic_combo_saved_choice")["workflow"])
    assert prompt == answer("dynamic_combo_saved_choice")
    assert list(prompt["17"]["inputs"].items())[:3] == [
        ("resize_type", "scale by multiplier"), ("resize_type.multiplier", 1.5),
        ("scale_method", "area")]
    default = convert(case("dynamic_combo_default_choice")["workflow"])["17"]["inputs"]
    assert default["resize_type"] == "scale dimensions"
    assert (default["resize_type.width"], default["resize_type.crop"]) == (512, "center")


def test_a_templates_save_image_advanced_sends_format_and_its_sub_inputs() -> None:
    # comfyui-workflow-templates 0.11.41: the format dropdown brings its own inputs
    name = "api_bytedance_seedream_5_0_pro_t2i"
    prompt, now = expected(name)
    got = convert(template(name), now=now, rng=FixedRandom(index()["template_random"]))
    assert got == prompt
    assert got["2"]["class_type"] == "SaveImageAdvanced"
    assert {k: v for k, v in got["2"]["inputs"].items() if k.startswith("format")} == {
        "format": "png", "format.bit_depth": "8-bit", "format.input_color_space": "sRGB"}


def test_dynamic_combo_inside_a_dynamic_combo() -> None:
    inputs = convert(case("dynamic_combo_nested")["workflow"])["17"]["inputs"]
    assert (inputs["codec"], inputs["codec.encoding"], inputs["codec.encoding.crf"]) == (
        "h264", "re-encode", 18)


def test_dynamic_combo_choice_the_server_lacks_shifts_the_saved_values() -> None:
    # saved by a newer ComfyUI: the editor assigns the values by position
    inputs = convert(case("dynamic_combo_unknown_choice")["workflow"])["17"]["inputs"]
    assert inputs["resize_type"] == "scale to megapixels v2"
    assert inputs["scale_method"] == 2
    assert not any(k.startswith("resize_type.") for k in inputs)


def test_dynamic_combo_option_input_keeps_its_link() -> None:
    inputs = convert(case("dynamic_combo_option_input_linked")["workflow"])["17"]["inputs"]
    assert inputs["resize_type.width"] == ["18", 0]
    assert inputs["resize_type.height"] == 480


def test_autogrow_inputs_follow_their_connections() -> None:
    prompt = convert(case("autogrow_connected_inputs")["workflow"])
    assert prompt == answer("autogrow_connected_inputs")
    assert list(prompt["16"]["inputs"]) == ["images.image0", "images.image1", "images.image2"]
    gap = convert(case("autogrow_gap_in_connections")["workflow"])
    assert gap == answer("autogrow_gap_in_connections")


def test_match_type_inputs_and_a_bypassed_switch() -> None:
    assert convert(case("matchtype_switch")["workflow"]) == answer("matchtype_switch")
    bypassed = convert(case("matchtype_switch_bypassed")["workflow"])
    assert bypassed == answer("matchtype_switch_bypassed")
    assert "16" not in bypassed


def test_match_types_settle_on_the_frame_after_loading_in_the_editors_order() -> None:
    # the switch's own frame runs before the reroute's: it still sees "*", the link stays
    kept = convert(case("matchtype_settles_before_the_reroutes_feeding_it")["workflow"])
    assert kept == answer("matchtype_settles_before_the_reroutes_feeding_it")
    assert kept["19"]["inputs"]["samples"] == ["16", 0]
    # a reroute, then an upstream switch whose output changed type, call the switch's
    # handler again: it turns IMAGE and the link into LATENT goes
    for name in ("matchtype_retyped_by_a_second_reroute",
                 "matchtype_output_retypes_the_switch_it_feeds"):
        dropped = convert(case(name)["workflow"])
        assert dropped == answer(name)
        assert dropped["19"]["inputs"] == {"vae": ["4", 2]}, name


def test_widgets_the_editor_no_longer_sends_and_new_widget_types() -> None:
    preview = convert(case("preview_any_saved_preview_text")["workflow"])["16"]
    assert preview["inputs"] == {"source": ["4", 2]}          # no "preview"
    assert preview["_meta"]["title"] == "Preview as Text"
    painter = convert(case("painter_mask_widget")["workflow"])["16"]["inputs"]
    assert painter["mask"] == "painter-1-2.png [input]"
    curve = convert(case("curve_widget_array_value")["workflow"])["16"]["inputs"]["curve"]
    assert curve == {"__type__": "CURVE", "__value__": [[0, 0], [0.5, 0.7], [1, 1]]}


def test_custom_combo_option_widgets_and_computed_index() -> None:
    inputs = convert(case("custom_combo_options")["workflow"])["16"]["inputs"]
    assert inputs == {"choice": "beta", "index": 1, "option1": "alpha", "option2": "beta",
                      "option3": "gamma", "option4": ""}


def test_remote_combo_takes_its_default_once_the_empty_list_arrives() -> None:
    inputs = convert(case("remote_combo_load_image_output")["workflow"])["16"]["inputs"]
    assert inputs == {"image": "Loading...", "refresh": "refresh"}


def test_combo_holding_null_takes_its_first_option() -> None:
    inputs = convert(case("combo_null_takes_first_option")["workflow"])["3"]["inputs"]
    assert inputs["sampler_name"] == OBJECT_INFO["KSampler"]["input"]["required"][
        "sampler_name"][0][0]


def test_unknown_type_is_sanitized_before_it_is_looked_up() -> None:
    prompt = convert(case("unknown_type_sanitized_to_known_type")["workflow"])
    assert prompt["5"]["class_type"] == "EmptyLatentImage"


def test_node_definitions_other_than_the_workflows_assign_values_by_position() -> None:
    for name in ("older_server_lacks_a_widget", "older_server_widget_in_another_place"):
        record = case(name)
        info = {**OBJECT_INFO, **record["object_info"]}
        assert ui_to_api(record["workflow"], info) == record["expected"], name
    lacking = case("older_server_lacks_a_widget")["expected"]["5"]["inputs"]
    assert lacking == {"width": 640, "height": 448}
    moved = case("older_server_widget_in_another_place")["expected"]["3"]["inputs"]
    assert (moved["steps"], moved["seed"]) == (685468484323813, "randomize")


def test_subgraph_input_nothing_feeds_leaves_the_inner_widget_value() -> None:
    # the known defect: steps took the scheduler's "simple"; the editor sends 20
    prompt = convert(case("subgraph_unfed_input_keeps_inner_widget_value")["workflow"])
    scheduler = next(e for e in prompt.values() if e["class_type"] == "BasicScheduler")
    assert scheduler["inputs"] == {"scheduler": "simple", "steps": 20, "denoise": 1,
                                   "model": ["4", 0]}


def test_inner_node_ids_that_clash_are_renumbered() -> None:
    prompt = convert(case("subgraph_inner_id_clashes_with_top_level")["workflow"])
    assert prompt == answer("subgraph_inner_id_clashes_with_top_level")
    assert prompt["3"]["class_type"] == "PreviewImage"
    assert prompt["16:17"]["class_type"] == "KSampler"        # inner 3 renumbered
    assert prompt["16:17"]["inputs"]["positive"] == ["16:18", 0]     # inner 6 too
    between = convert(case("subgraph_ids_clash_between_definitions")["workflow"])
    assert between == answer("subgraph_ids_clash_between_definitions")
    assert between["19:17"]["class_type"] == "SaveImage"


def test_load_time_fixes_reach_nodes_inside_subgraphs() -> None:
    inputs = convert(case("legacy_fixes_inside_subgraphs")["workflow"])["16:3"]["inputs"]
    assert inputs["sampler_name"] == "dpmpp_2m"


def test_legacy_proxy_widgets_are_migrated() -> None:
    linked = convert(case("proxy_widgets_already_promoted")["workflow"])
    assert linked == answer("proxy_widgets_already_promoted")
    created = convert(case("proxy_widgets_new_subgraph_input")["workflow"])
    assert (created["16:3"]["inputs"]["cfg"], created["16:7"]["inputs"]["text"]) == (
        5.5, "proxy negative")
    quarantined = convert(case("proxy_widgets_quarantined_host_value")["workflow"])
    assert quarantined["16:3"]["inputs"]["seed"] == 2222
    primitive = convert(case("proxy_widgets_primitive_inside")["workflow"])
    assert primitive["20:3"]["inputs"]["seed"] == 777


def test_subgraph_values_saved_as_an_object_are_read_by_index() -> None:
    # configure sets every promoted widget from widgets_values[i] (undefined here), the
    # subgraph node then applies the keys it has; the load-time combo fix gives the
    # promoted sampler_name its first option, read from the copied inner options
    prompt = convert(case("subgraph_values_saved_as_object")["workflow"])
    assert prompt == answer("subgraph_values_saved_as_object")
    assert (prompt["16:3"]["inputs"]["seed"], prompt["16:3"]["inputs"]["sampler_name"],
            prompt["16:6"]["inputs"]["text"]) == (99, "euler", "keyed prompt")


def test_a_null_or_missing_proxy_host_value_keeps_the_inner_value() -> None:
    # null is no widget value (pickHostValue): cfg keeps the inner KSampler's 8
    held = convert(case("proxy_widgets_null_host_value_keeps_inner_value")["workflow"])
    assert (held["16:3"]["inputs"]["cfg"], held["16:7"]["inputs"]["text"]) == (
        8, "proxy negative")
    keyed = convert(case("proxy_widgets_values_saved_as_object")["workflow"])
    assert (keyed["16:3"]["inputs"]["cfg"], keyed["16:7"]["inputs"]["text"]) == (
        8, "keyed negative")


def test_links_are_used_as_saved_without_repair() -> None:
    # workflow validation (and its link repair) is off by default in frontend 1.4x
    prompt = convert(case("links_that_disagree_are_kept")["workflow"])
    assert prompt["3"]["inputs"]["model"] == ["4", 0]
    merged = convert(case("saved_inputs_out_of_order_are_merged_by_name")["workflow"])
    assert merged["3"]["inputs"]["model"] == ["4", 0]


def test_multiline_text_keeps_the_value_it_was_given() -> None:
    # the value lives in the widget store as saved, not as a <textarea> holds it
    assert convert(case("multiline_text_given_a_number_and_null")["workflow"]) \
        == answer("multiline_text_given_a_number_and_null")
    assert convert(case("multiline_text_given_a_number_and_null")["workflow"])["6"][
        "inputs"]["text"] == 12.5
    assert convert(case("multiline_text_with_crlf")["workflow"])["6"]["inputs"]["text"] \
        == "line1\r\nline2\rline3"


def test_more_v3_and_subgraph_behaviours() -> None:
    dropped = convert(case("matchtype_output_type_drops_a_link_it_cannot_feed")["workflow"])
    assert dropped["19"]["inputs"] == {"vae": ["4", 2]}      # IMAGE cannot feed LATENT
    named = convert(case("autogrow_named_inputs")["workflow"])["16"]["inputs"]
    assert list(named) == ["f_string", "values.a", "values.b"]
    primitive = convert(case("primitive_on_a_dynamic_option_input")["workflow"])
    assert primitive["17"]["inputs"]["resize_type.multiplier"] == 2.5
    promoted = convert(case("dynamic_combo_inside_a_subgraph_promoted")["workflow"])
    assert promoted == answer("dynamic_combo_inside_a_subgraph_promoted")
    shared = convert(case("string_top_level_ids_reserve_nothing")["workflow"])
    assert shared == answer("string_top_level_ids_reserve_nothing")
    assert "16:3" in shared and shared["3"]["class_type"] == "EmptyLatentImage"


def test_duplicate_ids_inside_a_subgraph() -> None:
    assert convert(case("duplicate_ids_in_a_subgraph_share_widget_values")["workflow"]) \
        == answer("duplicate_ids_in_a_subgraph_share_widget_values")


# --- refusals -------------------------------------------------------------------------------------


def test_unknown_node_type_names_node_id_type_and_fix() -> None:
    wf = template("default")
    next(n for n in wf["nodes"] if n["id"] == 8)["type"] = "FancyDecode"
    with pytest.raises(WorkflowConversionError) as err:
        convert(wf)
    assert isinstance(err.value, WorkflowInvalid)
    assert err.value.message == ('node 8 ("FancyDecode"): node type "FancyDecode" is not in '
                                 "this ComfyUI's /object_info")
    assert err.value.hint
    assert err.value.details == [{"node_id": "8", "class_type": "FancyDecode",
                                  "message": err.value.details[0]["message"]}]


def test_every_unknown_node_type_is_named_at_once() -> None:
    with pytest.raises(WorkflowConversionError) as err:
        convert(case("unknown_node_types_all_named")["workflow"])
    message = err.value.message
    assert message.startswith("3 nodes have types this ComfyUI's /object_info does not have")
    assert '"FancySampler" (node 16, 18)' in message and '"FancyUpscale" (node 17)' in message
    assert [d["class_type"] for d in err.value.details] == ["FancySampler", "FancyUpscale",
                                                           "FancySampler"]
    assert [d["node_id"] for d in err.value.details] == ["16", "17", "18"]


def test_unknown_type_is_named_as_the_workflow_spells_it() -> None:
    wf = template("default")
    next(n for n in wf["nodes"] if n["id"] == 8)["type"] = "Fancy<Decode>"
    with pytest.raises(WorkflowConversionError, match='node 8 \\("Fancy<Decode>"\\)'):
        convert(wf)


def test_unknown_types_inside_subgraphs_are_named_with_their_flattened_ids() -> None:
    wf = case("subgraph_flattened_ids")["workflow"]
    definition = wf["definitions"]["subgraphs"][0]
    next(n for n in definition["nodes"] if n["id"] == 7)["type"] = "FancyEncode"
    wf["nodes"].append({"id": 60, "type": "FancyTop", "mode": 0, "inputs": [],
                        "outputs": [], "properties": {}})
    with pytest.raises(WorkflowConversionError) as err:
        convert(wf)
    assert {(d["node_id"], d["class_type"]) for d in err.value.details} == {
        ("16:7", "FancyEncode"), ("60", "FancyTop")}


def test_unknown_node_that_is_muted_does_not_stop_the_conversion() -> None:
    assert "50" not in convert(case("unknown_type_muted")["workflow"])


def test_link_to_a_missing_node_is_refused_naming_the_input() -> None:
    with pytest.raises(WorkflowConversionError, match=r'node 8 \("VAEDecode"\): input '
                       r'"samples" is linked to node 77, which does not exist'):
        convert(case("link_from_missing_node")["workflow"])
    with pytest.raises(WorkflowConversionError, match="refers to link 555"):
        convert(case("input_refers_to_missing_link")["workflow"])


def test_primitive_inside_a_subgraph_applies_its_value() -> None:
    # frontend 1.4x looks a primitive's links up in its own graph
    prompt = convert(case("subgraph_primitive_inside")["workflow"])
    assert prompt == answer("subgraph_primitive_inside")
    ksampler = next(e for e in prompt.values() if e["class_type"] == "KSampler")
    assert ksampler["inputs"]["seed"] == 12345


def test_circular_links_are_refused() -> None:
    # a bypassed KSampler whose latent input is its own output: following the bypass
    # comes back to where it started
    wf = template("default")
    ks = next(n for n in wf["nodes"] if n["id"] == 3)
    ks["mode"] = 4
    latent = next(s for s in ks["inputs"] if s["name"] == "latent_image")
    wf["links"] = [x for x in wf["links"] if x[0] != latent["link"]]
    wf["links"].append([150, 3, 0, 3, 3, "LATENT"])
    latent["link"] = 150
    ks["outputs"][0]["links"].append(150)
    with pytest.raises(WorkflowConversionError, match=r'node 3 \("KSampler"\): .*circular'):
        convert(wf)


@pytest.mark.parametrize("bad", [[], "x", None, {"nodes": "no"}])
def test_malformed_documents_are_refused_with_json_type_names(bad: Any) -> None:
    with pytest.raises(WorkflowConversionError) as err:
        ui_to_api(bad, OBJECT_INFO)
    assert "NoneType" not in str(err.value) and "list" not in err.value.message


def test_conversion_without_node_definitions_is_refused() -> None:
    with pytest.raises(WorkflowConversionError, match="object_info"):
        ui_to_api(template("default"), {})


def test_browser_only_nodes_are_refused() -> None:
    wf = {"last_node_id": 1, "last_link_id": 0, "links": [], "version": 0.4, "nodes": [
        {"id": 1, "type": "WebcamCapture", "pos": [0, 0], "size": [1, 1], "flags": {},
         "order": 0, "mode": 0, "properties": {}, "widgets_values": ["", 640, 480, False]}]}
    with pytest.raises(WorkflowConversionError, match="camera"):
        convert(wf)


def test_is_ui_workflow_tells_the_formats_apart() -> None:
    assert is_ui_workflow(template("default"))
    assert not is_ui_workflow(convert(template("default")))
    assert not is_ui_workflow({"nodes": {"1": {"class_type": "X"}}})
    assert not is_ui_workflow([])


@pytest.mark.parametrize("block", range(4))
def test_damaged_documents_give_a_result_or_a_worker_error_never_a_crash(block: int) -> None:
    names = ["01_qwen_t2i_subgraphed", "sdxl_simple_example", "hidream_e1_1", "default",
             "image_qwen_image_instantx_inpainting_controlnet"]
    for seed in range(block * 80, block * 80 + 80):
        rng = random.Random(seed)
        wf = template(names[seed % len(names)])
        for _ in range(rng.randint(1, 20)):
            damage(wf, rng)
        try:
            result = ui_to_api(wf, OBJECT_INFO)
        except WorkerError:
            continue
        json.dumps(result, allow_nan=False)     # valid JSON for ComfyUI
