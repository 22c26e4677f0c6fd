"""Websocket frames (as ComfyUI 0.3.75 sends them) → typed events."""

from __future__ import annotations

import json

from comfy_worker.comfy import events as ev


def frame(kind: str, **data: object) -> str:
    return json.dumps({"type": kind, "data": data})


def test_each_followed_message_type_parses_to_its_event() -> None:
    assert ev.parse_event(frame("status", status={"exec_info": {"queue_remaining": 2}},
                                sid="c")) == ev.Status(None, queue_remaining=2)
    assert ev.parse_event(frame("execution_start", prompt_id="p", timestamp=1)) == \
        ev.ExecutionStart("p")
    assert ev.parse_event(frame("execution_cached", nodes=["1", 2], prompt_id="p")) == \
        ev.ExecutionCached("p", nodes=("1", "2"))
    assert ev.parse_event(frame("executing", node="3", display_node="3", prompt_id="p")) == \
        ev.Executing("p", node="3")
    assert ev.parse_event(frame("executing", node=None, prompt_id="p")) == \
        ev.Executing("p", node=None)
    assert ev.parse_event(frame("progress", value=3, max=8, prompt_id="p", node="3")) == \
        ev.Progress("p", node="3", value=3, max=8)
    assert ev.parse_event(frame("progress_state", prompt_id="p", nodes={"3": {"value": 1}})) \
        == ev.ProgressState("p", nodes={"3": {"value": 1}})
    out = {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
    assert ev.parse_event(frame("executed", node="9", output=out, prompt_id="p")) == \
        ev.Executed("p", node="9", output=out)
    assert ev.parse_event(frame("execution_success", prompt_id="p")) == \
        ev.ExecutionSuccess("p")
    assert ev.parse_event(frame("execution_interrupted", prompt_id="p", node_id="4",
                                node_type="KSampler", executed=[])) == \
        ev.ExecutionInterrupted("p", node_id="4", node_type="KSampler")


def test_execution_error_keeps_node_exception_and_traceback() -> None:
    parsed = ev.parse_event(frame(
        "execution_error", prompt_id="p", node_id="1", node_type="LoadImage", executed=[],
        exception_message="cannot identify image file\n",
        exception_type="PIL.UnidentifiedImageError",
        traceback=["  File x\n", "  line y\n"], current_inputs={}, current_outputs={}))
    assert parsed == ev.ExecutionError("p", node_id="1", node_type="LoadImage",
                                       exception_type="PIL.UnidentifiedImageError",
                                       exception_message="cannot identify image file",
                                       traceback=("  File x\n", "  line y\n"))


def test_unknown_types_binary_and_junk_frames() -> None:
    assert ev.parse_event(frame("crystools.monitor", cpu=3)) == \
        ev.Other(None, type="crystools.monitor", data={"cpu": 3})
    assert ev.parse_event(b"\x00\x00\x00\x01png...") is None
    assert ev.parse_event("not json") is None
    assert ev.parse_event("[1, 2]") is None
    assert ev.parse_event(json.dumps({"type": "executing"})) is None
