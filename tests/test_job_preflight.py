"""Preflight: every missing model and unknown node found at once, from /object_info."""

from __future__ import annotations

from comfy_worker.job.preflight import (
    JOB_MARKER_INPUT,
    Available,
    combo_options,
    find_preflight_problems,
    mark_output_nodes,
    preflight_error,
)

# Shapes as ComfyUI 0.3.75's /object_info answers them (classic and v3 combos).
OBJECT_INFO = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["present.safetensors", "sub/other.ckpt"], {}]}},
        "output_node": False},
    "UpscaleModelLoader": {
        "input": {"required": {"model_name": [[]]}}, "output_node": False},
    "LoraLoaderV3": {
        "input": {"required": {"lora_name": ["COMBO", {"options": ["style.safetensors"]}],
                               "strength": ["FLOAT", {"default": 1.0}]}},
        "output_node": False},
    "KSampler": {
        "input": {"required": {"sampler_name": [["euler", "dpmpp_2m"]],
                               "model": ["MODEL"]}}, "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True},
}


def node(class_type: str, **inputs: object) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def test_combo_options_reads_classic_and_v3_spellings() -> None:
    assert combo_options([["a", "b"], {}]) == ["a", "b"]
    assert combo_options(["COMBO", {"options": ["x"]}]) == ["x"]
    assert combo_options(["FLOAT", {"default": 1}]) is None
    assert combo_options(["MODEL"]) is None
    assert combo_options(None) is None


def test_available_models_are_kept_by_folder() -> None:
    available = Available.of(["loras/a.safetensors", "checkpoints/sub/b.ckpt"])
    assert available.has("a.safetensors", frozenset({"loras"}))
    assert not available.has("a.safetensors", frozenset({"checkpoints"}))
    assert available.has("sub/b.ckpt", frozenset())  # no folder known: any folder
    merged = available | Available.of(["loras/c.safetensors"])
    assert merged.has("c.safetensors", frozenset({"loras"}))
    assert merged.has("a.safetensors", frozenset({"loras"}))


def test_present_and_locked_models_pass() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="present.safetensors"),
          "2": node("UpscaleModelLoader", model_name="4x.pth"),
          "3": node("LoraLoaderV3", lora_name="style.safetensors", strength=1.0)}
    assert find_preflight_problems(wf, OBJECT_INFO, Available.of(["upscale_models/4x.pth"])) == []


def test_windows_separators_match_a_locked_subfolder_path() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="sub\\new.safetensors")}
    available = Available.of(["checkpoints/sub/new.safetensors"])
    assert find_preflight_problems(wf, OBJECT_INFO, available) == []


def test_all_missing_models_and_nodes_are_reported_together() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="gone.safetensors"),
          "2": node("UpscaleModelLoader", model_name="4x.pth"),
          "3": node("IPAdapterAdvanced", weight=1.0),
          "4": node("LoraLoaderV3", lora_name="nope.safetensors", strength=1.0),
          "5": node("SaveImage", images=["1", 0])}
    problems = find_preflight_problems(wf, OBJECT_INFO, Available({}))
    assert [(p.node_id, p.kind, p.value) for p in problems] == [
        ("1", "missing_model", "gone.safetensors"),
        ("2", "missing_model", "4x.pth"),
        ("3", "missing_node", None),
        ("4", "missing_model", "nope.safetensors"),
    ]
    err = preflight_error(problems)
    assert err.message == ("workflow cannot run: 3 missing model(s): 4x.pth, "
                           "gone.safetensors, nope.safetensors; 1 unknown node type(s): "
                           "IPAdapterAdvanced")
    assert "lock add" in (err.hint or "") and "custom nodes" in (err.hint or "")
    assert err.details == [p.to_json() for p in problems]
    assert err.details[0] == {"node_id": "1", "class_type": "CheckpointLoaderSimple",
                              "type": "missing_model", "input_name": "ckpt_name",
                              "value": "gone.safetensors",
                              "message": 'model "gone.safetensors" (input "ckpt_name") is '
                              "not in the lock and not present"}
    assert "input_name" not in err.details[2]


def test_non_model_combos_links_and_non_combo_inputs_are_not_models() -> None:
    wf = {"1": node("KSampler", sampler_name="not_a_sampler", model=["9", 0]),
          "2": node("LoraLoaderV3", lora_name="style.safetensors",
                    strength="x.safetensors")}  # not a combo: ComfyUI validates it
    assert find_preflight_problems(wf, OBJECT_INFO, Available({})) == []


def test_output_nodes_get_the_job_marker_and_the_original_is_untouched() -> None:
    wf = {"1": node("KSampler", sampler_name="euler"),
          "2": node("SaveImage", images=["1", 0]),
          "3": node("PreviewImage", images=["1", 0])}
    marked = mark_output_nodes(wf, OBJECT_INFO, "job-1")
    assert marked["1"] is wf["1"]
    assert marked["2"]["inputs"] == {"images": ["1", 0], JOB_MARKER_INPUT: "job-1"}
    assert marked["3"]["inputs"][JOB_MARKER_INPUT] == "job-1"
    assert JOB_MARKER_INPUT not in wf["2"]["inputs"]


MARKED = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [
        ["comfy-worker-folder--checkpoints.safetensors", "present.safetensors"], {}]}}},
    "CLIPLoader": {"input": {"required": {"clip_name": [
        ["comfy-worker-folder--clip.safetensors",
         "comfy-worker-folder--text_encoders.safetensors"], {}],
        "type": [["sd1", "flux"], {}]}}},
}


def test_with_folder_markers_any_loader_value_is_checked_even_without_an_extension() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="__list__"),
          "2": node("CheckpointLoaderSimple", ckpt_name="present.safetensors"),
          "3": node("CLIPLoader", clip_name="t5.safetensors", type="not_a_type")}
    problems = find_preflight_problems(wf, MARKED, Available({}))
    assert [(p.node_id, p.value) for p in problems] == [("1", "__list__"),
                                                         ("3", "t5.safetensors")]
    assert "present in checkpoints" in problems[0].message
    assert "present in clip, text_encoders" in problems[1].message


def test_a_name_locked_in_another_folder_does_not_satisfy_a_loader() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="x.safetensors"),
          "2": node("CLIPLoader", clip_name="t5.safetensors", type="sd1")}
    wrong = Available.of(["loras/x.safetensors", "text_encoders/t5.safetensors"])
    assert [p.node_id for p in find_preflight_problems(wf, MARKED, wrong)] == ["1"]
    right = wrong | Available.of(["checkpoints/x.safetensors"])
    assert find_preflight_problems(wf, MARKED, right) == []


def test_markers_never_count_as_present_models() -> None:
    wf = {"1": node("CheckpointLoaderSimple",
                    ckpt_name="comfy-worker-folder--checkpoints.safetensors")}
    assert len(find_preflight_problems(wf, MARKED, Available({}))) == 1
