"""The RunPod adapter's pure parts and the `run` command's job input assembly."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from comfy_worker.commands.run import build_job_input, write_outputs
from comfy_worker.entrypoints.runpod import Throttle
from comfy_worker.errors import JobInputInvalid
from comfy_worker.job import JobResult, OutputItem


def test_throttle_lets_the_first_call_through_then_one_per_interval() -> None:
    now = [100.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    seen = []
    for t in (100.0, 100.2, 100.9, 101.0, 101.5, 102.1):
        now[0] = t
        seen.append(throttle.ready())
    assert seen == [True, False, False, True, False, True]


WF = {"1": {"class_type": "SaveImage", "inputs": {}}}


def test_run_accepts_a_workflow_a_job_input_or_a_runpod_request(tmp_path: Path) -> None:
    assert build_job_input(WF, [], None) == {"workflow": WF}
    assert build_job_input({"workflow": WF, "timeout": 5}, [], None) == {"workflow": WF,
                                                                          "timeout": 5}
    assert build_job_input({"input": {"workflow": WF}}, [], 9.0) == {"workflow": WF,
                                                                      "timeout": 9.0}


def test_run_adds_image_files_by_their_file_name(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"png-bytes")
    job = build_job_input({"workflow": WF, "images": [{"name": "a.png", "image": "eA=="}]},
                          [tmp_path / "cat.png"], None)
    assert job["images"] == [{"name": "a.png", "image": "eA=="},
                             {"name": "cat.png", "image": base64.b64encode(b"png-bytes")
                              .decode()}]
    with pytest.raises(JobInputInvalid, match=r"missing\.png"):
        build_job_input(WF, [tmp_path / "missing.png"], None)


def test_outputs_are_written_under_out_by_base_name_and_urls_listed(tmp_path: Path) -> None:
    result = JobResult(
        images=(OutputItem("a_00001_.png", "base64", base64.b64encode(b"A").decode(), "9"),),
        videos=(OutputItem("v.mp4", "s3_url", "https://x/v.mp4", "3"),))
    lines = write_outputs(result, tmp_path / "out")
    assert (tmp_path / "out" / "a_00001_.png").read_bytes() == b"A"
    assert lines == [str(tmp_path / "out" / "a_00001_.png"), "v.mp4: https://x/v.mp4"]


class OneResultWorker:
    """The Worker interface, answering every job with ``result`` (or raising it)."""

    def __init__(self, result: object) -> None:
        self.result = result

    def run_job(self, body: object, **kwargs: object) -> JobResult:
        if isinstance(self.result, Exception):
            raise self.result
        assert isinstance(self.result, JobResult)
        return self.result


@pytest.mark.parametrize("refresh", [True, False])
@pytest.mark.parametrize("outcome", ["result", "error"])
def test_refresh_worker_makes_the_runpod_sdk_ask_for_a_fresh_worker_after_each_job(
        refresh: bool, outcome: str) -> None:
    """Through the runpod SDK's own run_job, as on RunPod: ``refresh_worker`` in the
    handler's answer becomes ``stopPod`` and leaves the job's output."""
    import asyncio

    from runpod.serverless.modules.rp_job import run_job

    from comfy_worker.entrypoints.runpod import make_handler
    from comfy_worker.errors import WorkflowInvalid

    result = JobResult(images=(OutputItem("a.png", "base64", "QQ==", "9"),))
    worker = OneResultWorker(result if outcome == "result" else WorkflowInvalid("bad node"))
    handler = make_handler(worker, None, refresh_worker=refresh)  # type: ignore[arg-type]
    answer = asyncio.run(run_job(handler, {"id": "j1", "input": {"workflow": WF}}))
    assert answer.get("stopPod", False) is refresh
    if outcome == "result":
        assert answer["output"]["images"][0]["data"] == "QQ=="
        assert "refresh_worker" not in answer["output"]
    else:
        assert answer["error"] == "bad node" and "refresh_worker" not in answer["output"]


def test_refresh_worker_is_read_from_the_environment() -> None:
    from comfy_worker.config import load_settings

    assert load_settings({"REFRESH_WORKER": "true"}).refresh_worker is True
    assert load_settings({}).refresh_worker is False
