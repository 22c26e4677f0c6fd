"""The worker against a real ComfyUI on CPU: jobs that succeed, fail, time out, get
cancelled, and survive ComfyUI being killed. One ComfyUI for the whole module (the
session ``worker`` fixture); the ComfyUI-killing test runs last."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.process import State
from comfy_worker.errors import WorkerError
from comfy_worker.job.delivery import InlineDelivery, delivery_for
from comfy_worker.job.preflight import combo_options
from comfy_worker.worker import Worker
from e2e.helpers import (
    b64,
    empty_image_workflow,
    png_bytes,
    png_size,
    slow_upscale_workflow,
    upscale_workflow,
)

pytestmark = pytest.mark.comfyui



def run(worker: Worker, job_input: Any, **kwargs: Any) -> dict[str, Any]:
    """The job's JSON as every edge sends it: the result, or the error's own JSON."""
    progress = kwargs.pop("progress", None)
    if progress is not None:
        kwargs["progress"] = lambda update: progress(update.to_json())
    try:
        return worker.run_job(job_input, **kwargs).to_json()
    except WorkerError as err:
        return err.to_json()


def _images(result: dict[str, Any]) -> list[bytes]:
    assert "error" not in result, result
    return [base64.b64decode(item["data"]) for item in result["images"]]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _assert_idle(worker: Worker) -> None:
    """ComfyUI runs nothing and has nothing queued."""
    queue = ComfyClient(worker.comfy.base_url).queue()
    assert queue["queue_running"] == [] and queue["queue_pending"] == [], queue


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.compat
def test_worker_is_ready_at_boot_and_the_first_job_fetches_its_locked_model(
        worker: Worker, model_env: Any) -> None:
    assert worker.readiness().ready and worker.readiness().reason == "ready"
    assert {"boot_s", "ready_s"} <= set(worker.timings)
    result = run(worker, {"workflow": upscale_workflow(model_env.model_name, 8, 8)})
    assert len(_images(result)) == 1
    assert "models_wait_ms" in result["timings"]
    assert (model_env.models_dir / "upscale_models" / model_env.model_name).is_file()
    assert worker.readiness().to_json()["sync"]["files_done"] == 1


def test_read_ahead_reads_a_jobs_cold_model_and_can_be_turned_off(
        worker: Worker, model_env: Any) -> None:
    from support.slowfs import evict_file

    from comfy_worker.readahead import resident_bytes

    model = model_env.models_dir / "upscale_models" / model_env.model_name
    run(worker, {"workflow": upscale_workflow(model_env.model_name, 8, 8)})  # present
    evict_file(model)
    assert resident_bytes(model) == 0
    updates: list[dict[str, Any]] = []
    on = run(worker, {"workflow": upscale_workflow(model_env.model_name, 9, 9)},
             progress=updates.append)
    assert "readahead_ms" in on["timings"]
    assert on["timings"]["readahead"] == on["timings"]["readahead_ms"]  # deprecated alias
    assert any(u.get("stage") == "readahead" for u in updates)
    original = worker.settings
    worker.settings = original.replace(readahead=False)
    try:
        evict_file(model)
        off = run(worker, {"workflow": upscale_workflow(model_env.model_name, 10, 10)})
    finally:
        worker.settings = original
    assert len(_images(off)) == 1
    assert "readahead_ms" not in off["timings"] and "readahead" not in off["timings"]


def test_batch_of_two_returns_both_images_with_their_node(worker: Worker) -> None:
    result = run(worker, {"workflow": empty_image_workflow(40, 24, batch=2)})
    images = _images(result)
    assert len(images) == 2
    assert [png_size(i) for i in images] == [(40, 24), (40, 24)]
    assert {item["node_id"] for item in result["images"]} == {"2"}
    assert {item["type"] for item in result["images"]} == {"base64"}
    assert result["videos"] == []
    assert result["timings"]["total_ms"] > 0


def test_animated_output_is_returned_under_videos_beside_the_images(worker: Worker) -> None:
    wf = empty_image_workflow(24, 16, batch=3, prefix="frames")
    wf["3"] = {"class_type": "SaveAnimatedWEBP",
               "inputs": {"images": ["1", 0], "filename_prefix": "anim", "fps": 6.0,
                          "lossless": True, "quality": 80, "method": "fastest"}}
    result = run(worker, {"workflow": wf})
    assert "error" not in result, result
    assert [item["node_id"] for item in result["images"]] == ["2", "2", "2"]
    assert len(result["videos"]) == 1, result["videos"]
    video = result["videos"][0]
    assert video["node_id"] == "3"
    assert video["type"] == "base64"
    assert video["filename"].endswith(".webp")
    data = base64.b64decode(video["data"])
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def test_same_workflow_twice_returns_fresh_files_both_times(worker: Worker) -> None:
    wf = empty_image_workflow(16, 16)
    first, second = run(worker, {"workflow": wf}), run(worker, {"workflow": wf})
    assert len(_images(first)) == 1 and len(_images(second)) == 1


def test_img2img_uses_the_uploaded_image_and_removes_it_afterwards(worker: Worker) -> None:
    source = png_bytes(30, 20)
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "source.png"}},
        "2": {"class_type": "ImageScale",
              "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                         "width": 60, "height": 40, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                   "filename_prefix": "i2i"}},
    }
    job = {"workflow": wf,
           "images": [{"name": "source.png", "image": "data:image/png;base64," + b64(source)}]}
    result = run(worker, job)
    (out,) = _images(result)
    assert png_size(out) == (60, 40)
    cfg = worker.comfy.cfg
    assert not (cfg.input_dir / "source.png").exists()
    assert _files(cfg.output_dir) == []


def test_workflow_as_json_string_is_accepted(worker: Worker) -> None:
    import json

    result = run(worker, {"workflow": json.dumps(empty_image_workflow(8, 8))})
    assert len(_images(result)) == 1


def test_locked_model_runs_through_upscale_model_loader(worker: Worker, model_env: Any) -> None:
    result = run(worker, {"workflow": upscale_workflow(model_env.model_name, 32, 16)})
    (out,) = _images(result)
    assert png_size(out) == (64, 32)


@pytest.mark.compat
def test_validation_error_names_node_class_and_comfyui_message(worker: Worker) -> None:
    wf = empty_image_workflow()
    del wf["2"]["inputs"]["images"]
    result = run(worker, {"workflow": wf})
    assert result["reference"] == "workflow-invalid"
    assert "Required input is missing" in result["error"]
    (detail,) = result["details"]
    assert detail["node_id"] == "2" and detail["class_type"] == "SaveImage"
    assert detail["type"] == "required_input_missing"
    assert run(worker, {"workflow": empty_image_workflow(8, 8)}).get("images")


def test_execution_error_names_the_failing_node_and_worker_stays_up(worker: Worker) -> None:
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                   "filename_prefix": "x"}},
    }
    job = {"workflow": wf, "images": [{"name": "broken.png", "image": b64(b"not a png")}]}
    result = run(worker, job)
    assert result["reference"] == "workflow-execution-error", result
    (detail,) = result["details"]
    assert detail["node_id"] == "1" and detail["class_type"] == "LoadImage"
    assert detail["message"]
    assert not (worker.comfy.cfg.input_dir / "broken.png").exists()
    assert len(_images(run(worker, {"workflow": empty_image_workflow(8, 8)}))) == 1


@pytest.mark.compat
def test_preflight_lists_every_missing_model_and_node_before_queueing(worker: Worker) -> None:
    wf = upscale_workflow("not_locked_a.safetensors", 8, 8)
    wf["5"] = {"class_type": "UpscaleModelLoader",
               "inputs": {"model_name": "not_locked_b.pth"}}
    wf["6"] = {"class_type": "NodeFromAMissingPack", "inputs": {}}
    result = run(worker, {"workflow": wf})
    assert result["reference"] == "workflow-invalid"
    assert "not_locked_a.safetensors" in result["error"]
    assert "not_locked_b.pth" in result["error"]
    assert "NodeFromAMissingPack" in result["error"]
    kinds = sorted((d["node_id"], d["type"]) for d in result["details"])
    assert kinds == [("2", "missing_model"), ("5", "missing_model"), ("6", "missing_node")]


def test_a_loader_value_without_a_model_extension_is_a_missing_model_before_queueing(
        worker: Worker) -> None:
    # ComfyUI itself would accept "__list__" at submit and fail at run time (a 500).
    wf = upscale_workflow("__list__", 8, 8)
    result = run(worker, {"workflow": wf})
    assert result["reference"] == "workflow-invalid", result
    (detail,) = result["details"]
    assert detail["node_id"] == "2" and detail["value"] == "__list__"
    assert "in upscale_models" in detail["message"]
    info = ComfyClient(worker.comfy.base_url).object_info("UpscaleModelLoader")
    options = combo_options(info["UpscaleModelLoader"]["input"]["required"]["model_name"])
    assert options is not None and "comfy-worker-folder--upscale_models.safetensors" in options


def test_invalid_input_is_rejected_without_touching_comfyui(worker: Worker) -> None:
    result = run(worker, {"workflow": empty_image_workflow(),
                             "images": [{"name": "../x.png", "image": b64(b"x")}]})
    assert result["reference"] == "job-input-invalid"
    assert "../x.png" in result["error"]


def test_outputs_over_the_size_limit_fail_with_the_size(worker: Worker) -> None:
    runner = worker.runner
    original = runner.delivery
    runner.delivery = InlineDelivery(max_bytes=1000)
    try:
        result = run(worker, {"workflow": empty_image_workflow(64, 64, batch=4)})
    finally:
        runner.delivery = original
    assert result["reference"] == "output-too-large"
    assert "bytes as base64" in result["error"] and result["details"][0]["files"] == 4
    assert _files(worker.comfy.cfg.output_dir) == []


@pytest.mark.compat
def test_timeout_interrupts_comfyui_and_the_next_job_runs(worker: Worker,
                                                          model_env: Any) -> None:
    wf = slow_upscale_workflow(model_env.model_name, "slow")
    started = time.monotonic()
    result = run(worker, {"workflow": wf, "timeout": 2})
    elapsed = time.monotonic() - started
    assert result["reference"] == "job-timeout", result
    assert "2 s" in result["error"]
    assert elapsed < 15, f"interrupt took {elapsed:.1f} s"
    _assert_idle(worker)
    assert len(_images(run(worker, {"workflow": empty_image_workflow(8, 8)}))) == 1


@pytest.mark.compat
def test_cancel_event_interrupts_the_running_prompt(worker: Worker, model_env: Any) -> None:
    cancel = threading.Event()
    seen: list[dict[str, Any]] = []

    def progress(payload: dict[str, Any]) -> None:
        seen.append(payload)
        if payload.get("class_type") == "ImageUpscaleWithModel" and payload.get("step"):
            cancel.set()

    wf = slow_upscale_workflow(model_env.model_name, "cancel")
    result = run(worker, {"workflow": wf}, progress=progress, cancel=cancel)
    assert result["reference"] == "job-cancelled", result
    steps = [p for p in seen if p["step"] is not None]
    assert steps and steps[0]["max"] > 1 and 0 < steps[0]["percent"] < 100
    _assert_idle(worker)
    assert len(_images(run(worker, {"workflow": empty_image_workflow(8, 8)}))) == 1


def test_runpod_handler_cancelled_by_the_sdk_interrupts_comfyui(worker: Worker,
                                                                model_env: Any) -> None:
    from comfy_worker.entrypoints.runpod import make_handler

    sent: list[dict[str, Any]] = []
    handler = make_handler(worker, lambda job, payload: sent.append(payload))
    job = {"id": "rp-cancel",
           "input": {"workflow": slow_upscale_workflow(model_env.model_name, "rp")}}

    async def scenario() -> None:
        task = asyncio.ensure_future(handler(job))
        deadline = time.monotonic() + 30
        while not any(p.get("step") for p in sent):
            assert not task.done(), f"the job ended before any progress: {task.result()}"
            assert time.monotonic() < deadline, "no progress"
            await asyncio.sleep(0.05)
        task.cancel()  # what the SDK's JobScaler does when RunPod stops the job
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    _assert_idle(worker)
    result = asyncio.run(handler({"id": "rp-next",
                                  "input": {"workflow": empty_image_workflow(8, 8)}}))
    assert len(_images(result)) == 1


def test_outputs_go_to_s3_when_a_bucket_is_configured(worker: Worker,
                                                      tmp_path: Path) -> None:
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    import subprocess
    import sys

    from comfy_worker.comfy.process import free_port
    from comfy_worker.config import Secret

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _answers(endpoint), 30, "moto server")
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                          aws_secret_access_key="s", region_name="us-east-1")
        s3.create_bucket(Bucket="outputs")
        runner = worker.runner
        original = runner.delivery
        runner.delivery = delivery_for(worker.settings.replace(
            bucket_endpoint_url=endpoint, bucket_access_key_id=Secret("k"),
            bucket_secret_access_key=Secret("s"), bucket_name="outputs"))
        try:
            result = run(worker, {"workflow": empty_image_workflow(24, 24, batch=2)},
                         job_id="s3job")
        finally:
            runner.delivery = original
        assert "error" not in result, result
        assert [i["type"] for i in result["images"]] == ["s3_url", "s3_url"]
        for item in result["images"]:
            body = requests.get(item["data"], timeout=10).content
            assert png_size(body) == (24, 24)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="outputs")["Contents"]]
        assert len(keys) == 2 and all(k.startswith("s3job/") for k in keys)
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


def test_comfyui_killed_mid_job_fails_the_job_then_restarts(worker: Worker,
                                                            model_env: Any) -> None:
    comfy = worker.comfy
    old_pid, restarts = comfy.pid, comfy.restarts
    killed = threading.Event()

    def progress(payload: dict[str, Any]) -> None:
        if payload.get("class_type") == "ImageUpscaleWithModel" and not killed.is_set():
            killed.set()
            comfy.kill()

    wf = slow_upscale_workflow(model_env.model_name, "killed")
    result = run(worker, {"workflow": wf}, progress=progress)
    assert killed.is_set()
    assert result["reference"] == "comfyui-died", result
    assert "SIGKILL" in result["error"]
    _wait_for(lambda: worker.readiness().ready, 90, "ComfyUI restart")
    assert comfy.state is State.READY and comfy.pid != old_pid
    assert comfy.restarts == restarts + 1
    assert len(_images(run(worker, {"workflow": empty_image_workflow(8, 8)}))) == 1


def test_comfyui_killed_between_jobs_next_job_waits_for_the_restart(worker: Worker) -> None:
    comfy = worker.comfy
    _wait_for(lambda: worker.readiness().ready, 90, "ComfyUI ready")
    old_pid = comfy.pid
    comfy.kill()
    result = run(worker, {"workflow": empty_image_workflow(8, 8)})
    assert len(_images(result)) == 1
    assert comfy.pid != old_pid
