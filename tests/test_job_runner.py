"""The job runner and its prompt tracker, driven by scripted ComfyUI connections.

No ComfyUI here: ``ScriptedConnection`` implements the runner's ``Connection`` protocol
with a script of websocket events and failures, and a fake clock that advances by what
the runner waits, so timeouts, cancels, deaths, dropped websockets and late history run
in milliseconds. tests/e2e runs the same runner against a real ComfyUI.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.comfy import events as ev
from comfy_worker.comfy.client import PromptResponse
from comfy_worker.errors import (
    ComfyDied,
    ComfyError,
    JobCancelled,
    JobTimeout,
    WorkflowExecutionError,
    WorkflowInvalid,
)
from comfy_worker.job import JobRequest, JobResult
from comfy_worker.job.delivery import InlineDelivery
from comfy_worker.job.events import NodeProgress
from comfy_worker.job.preflight import Available
from comfy_worker.job.request import InputImage
from comfy_worker.job.runner import JobRunner
from comfy_worker.job.tracker import PromptTracker, State

PID = "prompt-1"
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
    "2": {"class_type": "Upscale", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
}
OBJECT_INFO = {
    "EmptyImage": {"input": {"required": {"width": ["INT", {}]}}, "output_node": False},
    "Upscale": {"input": {"required": {"image": ["IMAGE"]}}, "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True},
    "Loader": {"input": {"required": {"name": [["here.safetensors"]]}}, "output_node": False},
}
HISTORY = {PID: {"outputs": {"3": {"images": [
    {"filename": "out_00001_.png", "subfolder": "", "type": "output"}]}}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def executing(node: str | None, pid: str = PID) -> ev.Executing:
    return ev.Executing(pid, node=node)


def progress(node: str, value: int, maximum: int) -> ev.Progress:
    return ev.Progress(PID, node=node, value=value, max=maximum)


DROP = "drop"    # the websocket breaks
DIE = "die"      # ComfyUI's process exits
Step = ev.Event | str | None | Callable[[], None]


@dataclass
class ScriptedConnection:
    """A ComfyUI as the runner sees it: events from a script, calls recorded."""

    clock: Clock
    script: list[Step]
    dirs: dict[str, Path]
    history_answer: dict[str, Any] = field(default_factory=lambda: dict(HISTORY))
    history_after_drop: dict[str, Any] | None = None
    respond: PromptResponse = field(
        default_factory=lambda: PromptResponse(200, {"prompt_id": PID}))
    fail_queue_with_death: bool = False
    reconnects: bool = True
    stops_on_interrupt: bool = True
    calls: list[str] = field(default_factory=list)
    is_alive: bool = True
    is_current: bool = True
    queued: list[dict[str, Any]] = field(default_factory=list)
    extra_data: list[dict[str, Any] | None] = field(default_factory=list)

    # process
    def current(self) -> bool:
        return self.is_current

    def alive(self) -> bool:
        return self.is_alive

    def gone(self) -> bool:
        return not self.is_alive

    def death(self) -> ComfyDied:
        return ComfyDied("ComfyUI stopped while running this job: was killed by SIGKILL")

    def kill(self) -> None:
        self.calls.append("kill")
        self.is_alive = False

    # HTTP
    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        self.calls.append(f"object_info {node_class}" if node_class else "object_info")
        return dict(OBJECT_INFO) if node_class is None else {node_class: OBJECT_INFO[
            node_class]}

    def upload_image(self, name: str, data: bytes) -> str:
        (self.dirs["input"] / name).write_bytes(data)
        self.calls.append(f"upload {name}")
        return name

    def queue_prompt(self, prompt: dict[str, Any],
                     extra_data: dict[str, Any] | None = None) -> PromptResponse:
        self.extra_data.append(extra_data)
        if self.fail_queue_with_death:  # dies; its supervisor starts a new process
            self.is_alive = self.is_current = False
            raise ComfyError("ComfyUI request POST /prompt failed: connection refused")
        self.queued.append(prompt)
        self.calls.append("queue_prompt")
        return self.respond

    def history(self, prompt_id: str) -> dict[str, Any]:
        self.calls.append("history")
        return self.history_answer

    def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        path = self.dirs[kind] / filename
        path.write_bytes(b"PNG" + filename.encode())  # the file ComfyUI wrote
        return path.read_bytes()

    def prompt_active(self, prompt_id: str) -> bool:
        return prompt_id == PID and not self.stops_on_interrupt

    def cancel_prompt(self, prompt_id: str) -> None:
        self.calls.append(f"cancel {prompt_id}")
        if self.stops_on_interrupt:
            self.script.insert(0, executing(None))

    def delete_history(self, prompt_id: str) -> None:
        self.calls.append(f"delete_history {prompt_id}")

    def close(self) -> None:
        self.calls.append("close")

    # websocket
    def next_event(self, timeout: float) -> ev.Event | None:
        if not self.script:
            self.clock.now += timeout
            return None
        step = self.script.pop(0)
        if step == DROP:
            raise ComfyError("ComfyUI websocket closed: connection reset")
        if step == DIE:
            self.is_alive = False
            return None
        if callable(step) and not isinstance(step, ev.Event):
            step()
            return None
        if step is None:
            self.clock.now += timeout
        return step  # type: ignore[return-value]

    def reconnect(self) -> bool:
        self.calls.append("reconnect")
        if self.history_after_drop is not None:
            self.history_answer = self.history_after_drop
        return self.reconnects and self.is_alive


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    out = {k: tmp_path / k for k in ("input", "output", "temp")}
    for d in out.values():
        d.mkdir()
    return out


def runner_for(*conns: ScriptedConnection, clock: Clock, max_bytes: int = 10_000,
               available: tuple[str, ...] = ()) -> JobRunner:
    queue = list(conns)
    return JobRunner(lambda: queue.pop(0), InlineDelivery(max_bytes),
                     available_models=Available.of(available), clock=clock, abort_grace=5.0)


def finished_script() -> list[Step]:
    return [ev.ExecutionStart(PID), executing("1"), executing("2"), progress("2", 1, 4),
            progress("2", 4, 4), executing("3"), ev.ExecutionSuccess(PID), executing(None)]


# --- the tracker alone ---------------------------------------------------------------


def test_tracker_folds_events_into_progress_and_ignores_other_prompts() -> None:
    t = PromptTracker(PID, WORKFLOW, deadline=10.0)
    assert t.feed(executing("1")) == NodeProgress("1", "EmptyImage", None, None, 0.0, 0, 3)
    assert t.feed(executing("2", pid="someone-else")) is None
    update = t.feed(progress("2", 2, 4))
    assert update is not None and update.node == "2" and update.percent == pytest.approx(16.7)
    t.feed(ev.ExecutionCached(PID, nodes=("1",)))
    assert t.feed(executing("3")) == NodeProgress("3", "SaveImage", None, None, 33.3, 1, 3)
    assert t.state(now=0, cancelled=False, alive=True) is State.RUNNING
    t.feed(executing(None))
    assert t.state(now=99, cancelled=True, alive=False) is State.FINISHED


def test_tracker_counts_nodes_that_progress_state_reports_finished() -> None:
    t = PromptTracker(PID, WORKFLOW, deadline=10.0)
    t.feed(executing("1"))
    # Newer ComfyUI: every active node's state; "5.0.0.1" is node 2 expanded at run time.
    t.feed(ev.ProgressState(PID, nodes={
        "1": {"state": "finished", "value": 1, "max": 1, "display_node_id": "1"},
        "5.0.0.1": {"state": "finished", "value": 1, "max": 1, "display_node_id": "2"},
        "3": {"state": "running", "value": 0, "max": 1, "display_node_id": "3"},
        "99": {"state": "finished"}}))  # not a node of this workflow
    assert t.done == {"1", "2"}
    update = t.feed(progress("3", 1, 2))
    assert update is not None and (update.nodes_done, update.percent) == (2, 83.3)


@pytest.mark.parametrize(("now", "cancelled", "alive", "expected"), [
    (0.0, True, False, State.CANCELLED),
    (10.0, False, False, State.TIMED_OUT),
    (9.9, False, False, State.DIED),
    (9.9, False, True, State.RUNNING),
])
def test_tracker_state_order_cancel_then_deadline_then_death(
        now: float, cancelled: bool, alive: bool, expected: State) -> None:
    t = PromptTracker(PID, WORKFLOW, deadline=10.0)
    assert t.state(now=now, cancelled=cancelled, alive=alive) is expected


def test_tracker_waits_at_most_a_poll_and_never_past_the_deadline() -> None:
    t = PromptTracker(PID, WORKFLOW, deadline=10.0)
    assert t.wait_time(0.0) == 0.25
    assert t.wait_time(9.9) == pytest.approx(0.1)
    assert t.wait_time(11.0) == 0.0


def test_tracker_records_error_and_interrupt_without_finishing() -> None:
    t = PromptTracker(PID, WORKFLOW, deadline=10.0)
    t.feed(ev.ExecutionError(PID, node_id="2", node_type="Upscale", exception_type="OOM"))
    t.feed(ev.ExecutionInterrupted(PID, node_id="2"))
    assert t.error is not None and t.interrupted
    assert t.state(now=0, cancelled=False, alive=True) is State.RUNNING
    t.finish_from_history()
    assert t.state(now=0, cancelled=False, alive=True) is State.FINISHED


# --- the runner ----------------------------------------------------------------------


def test_a_finished_prompt_returns_its_outputs_reports_progress_and_cleans_up(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, finished_script(), dirs)
    seen: list[NodeProgress] = []
    request = JobRequest(WORKFLOW, images=(InputImage("in.png", b"img"),), timeout=60)
    result = runner_for(conn, clock=clock).run(request, job_id="j1", progress=seen.append)
    assert isinstance(result, JobResult)
    assert [(i.filename, i.type, i.node_id) for i in result.images] == [
        ("out_00001_.png", "base64", "3")]
    assert {"preflight_ms", "upload_ms", "execution_ms", "outputs_ms", "total_ms"} <= set(
        result.timings)
    assert [(p.node, p.step) for p in seen] == [("1", None), ("2", None), ("2", 1), ("2", 4),
                                               ("3", None)]
    assert conn.queued[0]["3"]["inputs"]["comfy_worker_job"] == "j1"
    assert "comfy_worker_job" not in conn.queued[0]["2"]["inputs"]
    assert f"delete_history {PID}" in conn.calls
    assert list(dirs["input"].iterdir()) == [] and list(dirs["output"].iterdir()) == []


def test_a_partner_node_key_goes_to_comfyui_as_extra_data_of_its_prompt_only(
        dirs: dict[str, Path]) -> None:
    from comfy_worker.config import Secret

    clock = Clock()
    conn = ScriptedConnection(clock, finished_script(), dirs)
    runner_for(conn, clock=clock).run(
        JobRequest(WORKFLOW, timeout=60, comfy_org_api_key=Secret("comfyui-k1")))
    conn.script = finished_script()
    conn.respond = PromptResponse(200, {"prompt_id": PID})
    runner = runner_for(conn, clock=clock)
    runner.run(JobRequest(WORKFLOW, timeout=60))
    assert conn.extra_data == [{"api_key_comfy_org": "comfyui-k1"}, None]
    assert "comfyui-k1" not in json.dumps(conn.queued)


def test_cancel_mid_step_stops_its_prompt_by_id_and_raises_cancelled(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    cancel = threading.Event()
    script: list[Step] = [executing("1"), executing("2"), progress("2", 1, 4), None, None,
                          progress("2", 2, 4)]
    conn = ScriptedConnection(clock, script, dirs)

    def on_progress(update: NodeProgress) -> None:
        if update.step == 1:
            cancel.set()

    with pytest.raises(JobCancelled, match="job cancelled; ComfyUI was interrupted") as info:
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60),
                                          progress=on_progress, cancel=cancel)
    assert info.value.details == [{"prompt_id": PID}]
    assert conn.calls.count(f"cancel {PID}") == 1
    assert "kill" not in conn.calls


def test_timeout_names_the_running_node_and_interrupts(dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, [executing("1"), executing("2")], dirs)  # then silence
    with pytest.raises(JobTimeout, match="timed out after 3 s") as info:
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=3))
    (detail,) = info.value.details
    assert detail == {"prompt_id": PID, "timeout_s": 3, "node_id": "2",
                      "class_type": "Upscale"}
    assert f"cancel {PID}" in conn.calls and "kill" not in conn.calls
    assert info.value.status == 504


def test_a_prompt_that_ignores_interrupt_gets_comfyui_killed(dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, [executing("1")], dirs, stops_on_interrupt=False)
    with pytest.raises(JobTimeout):
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=1))
    assert "kill" in conn.calls
    assert conn.calls.index(f"cancel {PID}") < conn.calls.index("kill")


def test_comfyui_dying_mid_prompt_is_comfy_died(dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, [executing("1"), progress("1", 1, 9), DIE], dirs)
    with pytest.raises(ComfyDied, match="SIGKILL") as info:
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))
    assert info.value.status == 503
    assert f"cancel {PID}" not in conn.calls


def test_a_dropped_websocket_is_reconnected_and_the_job_finishes(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    script: list[Step] = [executing("1"), DROP, executing("2"), executing("3"),
                          executing(None)]
    conn = ScriptedConnection(clock, script, dirs, history_answer={})
    conn.history_after_drop = {}  # not finished yet when we look after the drop

    def finished_history() -> None:
        conn.history_answer = dict(HISTORY)

    script.insert(-1, finished_history)
    result = runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))
    assert "reconnect" in conn.calls
    assert len(result.images) == 1


def test_history_arriving_late_after_a_drop_finishes_the_job(dirs: dict[str, Path]) -> None:
    clock = Clock()
    # The websocket breaks right before ComfyUI sends executing(None): only /history
    # tells that the prompt finished.
    conn = ScriptedConnection(clock, [executing("1"), executing("3"), DROP], dirs,
                              history_answer={}, history_after_drop=dict(HISTORY))
    result = runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))
    assert conn.calls.count("reconnect") == 1
    assert [i.filename for i in result.images] == ["out_00001_.png"]


def test_a_websocket_that_cannot_reconnect_means_comfyui_died(dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, [executing("1"), DROP], dirs, reconnects=False)
    with pytest.raises(ComfyDied):
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))


def test_a_node_error_is_a_workflow_execution_error(dirs: dict[str, Path]) -> None:
    clock = Clock()
    script: list[Step] = [executing("1"), executing("2"), ev.ExecutionError(
        PID, node_id="2", node_type="Upscale", exception_type="RuntimeError",
        exception_message="out of memory", traceback=("a", "b")), executing(None)]
    conn = ScriptedConnection(clock, script, dirs)
    with pytest.raises(WorkflowExecutionError,
                       match="node 2 \\(Upscale\\) failed: RuntimeError: out of memory"):
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))
    assert f"delete_history {PID}" in conn.calls


def test_someone_elses_interrupt_is_reported_as_cancelled(dirs: dict[str, Path]) -> None:
    clock = Clock()
    script: list[Step] = [executing("1"), ev.ExecutionInterrupted(PID, node_id="1"),
                          executing(None)]
    conn = ScriptedConnection(clock, script, dirs)
    with pytest.raises(JobCancelled, match="someone called /interrupt"):
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))


def test_a_rejected_prompt_is_workflow_invalid_with_comfyuis_node_errors(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "failed"},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min",
                                              "message": "Value 0 smaller than min of 1",
                                              "extra_info": {"input_name": "width"}}],
                                  "class_type": "EmptyImage"}}}
    conn = ScriptedConnection(clock, [], dirs, respond=PromptResponse(400, body))
    with pytest.raises(WorkflowInvalid, match="HTTP 400") as info:
        runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60))
    assert info.value.details[0]["input_name"] == "width"


def test_preflight_refuses_a_missing_model_before_anything_is_queued(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    wf = {**WORKFLOW, "4": {"class_type": "Loader", "inputs": {"name": "gone.safetensors"}}}
    conn = ScriptedConnection(clock, [], dirs)
    with pytest.raises(WorkflowInvalid, match=r"1 missing model\(s\): gone\.safetensors"):
        runner_for(conn, clock=clock).run(JobRequest(wf, timeout=60))
    assert "queue_prompt" not in conn.calls
    assert "object_info Loader" in conn.calls  # the cached list was refreshed first
    ok = {**WORKFLOW, "4": {"class_type": "Loader", "inputs": {"name": "locked.safetensors"}}}
    conn2 = ScriptedConnection(clock, finished_script(), dirs)
    runner_for(conn2, clock=clock, available=("checkpoints/locked.safetensors",)).run(
        JobRequest(ok, timeout=60))


def test_comfyui_dying_before_it_took_the_prompt_is_retried_once_on_the_new_one(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    dead = ScriptedConnection(clock, [], dirs, fail_queue_with_death=True)
    fresh = ScriptedConnection(clock, finished_script(), dirs)
    runner = runner_for(dead, fresh, clock=clock)
    result = runner.run(JobRequest(WORKFLOW, images=(InputImage("a.png", b"x"),),
                                   timeout=60))
    assert len(result.images) == 1
    assert "close" in dead.calls and "queue_prompt" in fresh.calls
    assert "upload a.png" in fresh.calls


def test_a_failing_progress_sink_never_fails_the_job(dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, finished_script(), dirs)

    def broken(update: NodeProgress) -> None:
        raise RuntimeError("sink down")

    result = runner_for(conn, clock=clock).run(JobRequest(WORKFLOW, timeout=60),
                                               progress=broken)
    assert len(result.images) == 1


def test_outputs_over_the_inline_limit_fail_and_are_still_cleaned_up(
        dirs: dict[str, Path]) -> None:
    clock = Clock()
    conn = ScriptedConnection(clock, finished_script(), dirs)
    from comfy_worker.errors import OutputTooLarge

    with pytest.raises(OutputTooLarge):
        runner_for(conn, clock=clock, max_bytes=4).run(JobRequest(WORKFLOW, timeout=60))
    assert list(dirs["output"].iterdir()) == []
