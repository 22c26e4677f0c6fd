"""Preflight: every missing model and unknown node found at once, from /object_info."""

from __future__ import annotations

from comfy_worker.job.preflight import (
    JOB_MARKER_INPUT,
    combo_options,
    find_preflight_problems,
    locked_names,
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


def test_locked_names_strip_the_models_folder() -> None:
    assert locked_names(["loras/a.safetensors", "checkpoints/sub/b.ckpt"]) == {
        "a.safetensors", "sub/b.ckpt"}


def test_present_and_locked_models_pass() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="present.safetensors"),
          "2": node("UpscaleModelLoader", model_name="4x.pth"),
          "3": node("LoraLoaderV3", lora_name="style.safetensors", strength=1.0)}
    assert find_preflight_problems(wf, OBJECT_INFO, frozenset({"4x.pth"})) == []


def test_windows_separators_match_a_locked_subfolder_path() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="sub\\new.safetensors")}
    assert find_preflight_problems(wf, OBJECT_INFO, frozenset({"sub/new.safetensors"})) == []


def test_all_missing_models_and_nodes_are_reported_together() -> None:
    wf = {"1": node("CheckpointLoaderSimple", ckpt_name="gone.safetensors"),
          "2": node("UpscaleModelLoader", model_name="4x.pth"),
          "3": node("IPAdapterAdvanced", weight=1.0),
          "4": node("LoraLoaderV3", lora_name="nope.safetensors", strength=1.0),
          "5": node("SaveImage", images=["1", 0])}
    problems = find_preflight_problems(wf, OBJECT_INFO, frozenset())
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
    assert find_preflight_problems(wf, OBJECT_INFO, frozenset()) == []


def test_output_nodes_get_the_job_marker_and_the_original_is_untouched() -> None:
    wf = {"1": node("KSampler", sampler_name="euler"),
          "2": node("SaveImage", images=["1", 0]),
          "3": node("PreviewImage", images=["1", 0])}
    marked = mark_output_nodes(wf, OBJECT_INFO, "job-1")
    assert marked["1"] is wf["1"]
    assert marked["2"]["inputs"] == {"images": ["1", 0], JOB_MARKER_INPUT: "job-1"}
    assert marked["3"]["inputs"][JOB_MARKER_INPUT] == "job-1"
    assert JOB_MARKER_INPUT not in wf["2"]["inputs"]
