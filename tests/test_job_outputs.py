"""Outputs, size limits and the error/progress payloads a job returns."""

from __future__ import annotations

import pytest

from comfy_worker.comfy.client import PromptResponse
from comfy_worker.comfy.events import ExecutionError
from comfy_worker.errors import OutputTooLarge, WorkflowInvalid
from comfy_worker.job.answers import execution_error, validation_error
from comfy_worker.job.outputs import (
    OutputFile,
    base64_size,
    check_inline_size,
    collect_output_files,
)
from comfy_worker.job.s3 import s3_region
from comfy_worker.job.tracker import node_progress


def test_every_file_of_every_output_node_is_collected_and_videos_are_told_apart() -> None:
    history_outputs = {
        "9": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                         {"filename": "a_00002_.png", "subfolder": "", "type": "output"}]},
        "12": {"gifs": [{"filename": "clip_00001.mp4", "subfolder": "vhs", "type": "output",
                         "format": "video/h264-mp4"}]},
        "13": {"images": [{"filename": "anim_00001_.webp", "subfolder": "", "type": "output"}],
               "animated": [True]},
        "14": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
        "15": {"text": ["not a file"]},
    }
    assert collect_output_files(history_outputs) == [
        OutputFile("9", "a_00001_.png", "", "output", False),
        OutputFile("9", "a_00002_.png", "", "output", False),
        OutputFile("12", "clip_00001.mp4", "vhs", "output", True),
        OutputFile("13", "anim_00001_.webp", "", "output", True),
        OutputFile("14", "p.png", "", "temp", False),
    ]


def test_base64_size_rounds_up_to_whole_quads() -> None:
    assert [base64_size(n) for n in (0, 1, 2, 3, 4, 300)] == [0, 4, 4, 4, 8, 400]


def test_inline_limit_is_inclusive_and_the_error_names_the_size() -> None:
    assert check_inline_size([300, 300], limit=800) == 800
    with pytest.raises(OutputTooLarge) as err:
        check_inline_size([300, 301], limit=800)
    assert err.value.message == ("outputs are 804 bytes as base64 (2 file(s)), over the "
                                 "800 bytes limit for inline results")
    with pytest.raises(OutputTooLarge, match=r"outputs are 26\.7 MB as base64 \(1 file"):
        check_inline_size([20_000_000], limit=20 * 1024 * 1024)
    assert err.value.details == [{"total_base64_bytes": 804, "limit_bytes": 800, "files": 2}]
    assert "BUCKET_ENDPOINT_URL" in (err.value.hint or "")


def test_validation_error_has_one_detail_per_node_error() -> None:
    body = {
        "error": {"type": "prompt_outputs_failed_validation",
                  "message": "Prompt outputs failed validation", "details": "",
                  "extra_info": {}},
        "node_errors": {"3": {"errors": [
            {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1",
             "details": "width", "extra_info": {"input_name": "width"}}],
            "dependent_outputs": ["9"], "class_type": "EmptyImage"}},
    }
    err = validation_error(PromptResponse(400, body), {})
    assert isinstance(err, WorkflowInvalid)
    assert err.details == [{"node_id": "3", "class_type": "EmptyImage",
                            "type": "value_smaller_than_min",
                            "message": "Value 0 smaller than min of 1", "details": "width",
                            "input_name": "width"}]
    assert "node 3 (EmptyImage): Value 0 smaller than min of 1: width" in err.message


def test_validation_error_without_node_errors_keeps_comfyuis_message() -> None:
    body = {"error": {"type": "invalid_prompt",
                      "message": "Cannot execute because node X does not exist.",
                      "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}}
    err = validation_error(PromptResponse(400, body), {"1": {"class_type": "X"}})
    assert err.details[0]["type"] == "invalid_prompt"
    assert "node X does not exist" in err.message


def test_validation_error_from_a_plain_text_500() -> None:
    err = validation_error(PromptResponse(500, "500 Internal Server Error"), {})
    assert "HTTP 500" in err.message and "Internal Server Error" in err.message


def test_execution_error_names_node_class_and_exception() -> None:
    event = ExecutionError("p1", node_id="4", node_type="VAEDecode",
                           exception_type="torch.OutOfMemoryError",
                           exception_message="CUDA out of memory",
                           traceback=tuple(f"line {i}" for i in range(10)))
    err = execution_error(event)
    assert err.message == ("node 4 (VAEDecode) failed: torch.OutOfMemoryError: "
                           "CUDA out of memory")
    (detail,) = err.details
    assert detail["node_id"] == "4" and detail["class_type"] == "VAEDecode"
    assert detail["traceback"] == [f"line {i}" for i in range(4, 10)]


def test_error_json_shape() -> None:
    err = WorkflowInvalid("bad", hint="fix it", details=[{"node_id": "1"}])
    assert err.to_json() == {"error": "bad", "details": [{"node_id": "1"}],
                             "reference": "workflow-invalid", "hint": "fix it"}
    assert "hint" not in WorkflowInvalid("bad").to_json()


def test_progress_percent_counts_finished_nodes_and_the_current_step() -> None:
    p = node_progress(node="3", class_type="KSampler", step=5, max_steps=20,
                      nodes_done=2, nodes_total=4)
    assert p.to_json() == {"stage": "running", "node": "3", "class_type": "KSampler",
                           "step": 5, "max": 20, "percent": 56.2, "nodes_done": 2,
                           "nodes_total": 4}
    assert node_progress(node=None, class_type=None, step=None, max_steps=None,
                         nodes_done=9, nodes_total=4).percent == 100.0


def test_s3_region_from_aws_style_endpoints() -> None:
    assert s3_region("https://bucket.s3.eu-west-1.amazonaws.com") == "eu-west-1"
    assert s3_region("https://s3.us-east-2.amazonaws.com") == "us-east-2"
    assert s3_region("http://127.0.0.1:9000") is None
