"""`comfy-worker run` and `comfy-worker runpod` (the runpod SDK's local modes) as real
subprocesses, each with its own ComfyUI. This module sorts before test_worker_e2e.py, so
these run before the session's shared ComfyUI starts: one ComfyUI at a time."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from comfy_worker.comfy.process import free_port
from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import CLI, b64, empty_image_workflow, png_bytes, png_size, upscale_workflow

pytestmark = pytest.mark.comfyui



def _run(args: list[str], env: dict[str, str], cwd: Path,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_run_command_writes_outputs_of_an_img2img_job(comfy_install: ComfyInstall,
                                                      model_env: ModelEnv,
                                                      tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(png_bytes(10, 12))
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageScale",
              "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                         "width": 20, "height": 24, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                   "filename_prefix": "cli"}},
    }
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    out = tmp_path / "out"
    proc = _run(["run", "wf.json", "--images", "photo.png", "--out", str(out)],
                e2e_env(comfy_install, model_env), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["cli_00001_.png"]
    assert png_size(written[0].read_bytes()) == (20, 24)
    assert str(written[0]) in proc.stdout


def test_runpod_test_input_flag_runs_the_job_and_exits_0(comfy_install: ComfyInstall,
                                                         model_env: ModelEnv,
                                                         tmp_path: Path) -> None:
    job = {"input": {"workflow": upscale_workflow(model_env.model_name, 16, 8)}}
    proc = _run(["runpod", "--test_input", json.dumps(job)],
                e2e_env(comfy_install, model_env), tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "completed successfully" in log
    assert "'type': 'base64'" in log and "'node_id': '4'" in log


def test_runpod_test_input_json_with_a_broken_workflow_exits_1(comfy_install: ComfyInstall,
                                                               model_env: ModelEnv,
                                                               tmp_path: Path) -> None:
    wf = empty_image_workflow()
    wf["3"] = {"class_type": "NoSuchNode", "inputs": {}}
    (tmp_path / "test_input.json").write_text(json.dumps({"input": {"workflow": wf}}))
    proc = _run(["runpod", "--lock", str(model_env.lock_path)],
                e2e_env(comfy_install, model_env), tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "Using test_input.json" in log
    assert "NoSuchNode" in log


def test_runpod_serve_api_answers_runsync_and_stops_on_sigterm(comfy_install: ComfyInstall,
                                                               model_env: ModelEnv,
                                                               tmp_path: Path) -> None:
    port = free_port()
    env = e2e_env(comfy_install, model_env)
    env["COMFY_WORKER_WORK_DIR"] = str(tmp_path / "work")
    proc = subprocess.Popen([*CLI, "runpod", "--rp_serve_api", "--rp_api_port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        result = _runsync_when_up(port, {"input": {
            "workflow": empty_image_workflow(12, 12, batch=2),
            "images": [{"name": "unused.png", "image": b64(png_bytes(2, 2))}]}})
        assert result["status"] == "COMPLETED", result
        images = result["output"]["images"]
        assert len(images) == 2 and images[0]["type"] == "base64"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode is not None, output[-2000:]
    assert "ComfyUI stopped" in output, output[-3000:]


def _runsync_when_up(port: int, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    url = f"http://localhost:{port}/runsync"
    while True:
        try:
            resp = requests.post(url, json=body, timeout=60)
            return resp.json()
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
