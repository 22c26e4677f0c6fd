"""The worker image end to end: build it, run it as `docker run` users and RunPod would.

Each test starts a real container of the image built by ``build.sh`` (see conftest.py)
with a volume holding a real (tiny, random-weight) upscale model and a lock pinning it.
The lock's source URL does not resolve, so the job can only work if the worker found
and verified the file on the volume. Skipped when no Docker daemon is reachable.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from container_helpers import (
    decode_png,
    first_png,
    upscale_workflow,
    write_volume_with_locked_model,
)

from comfy_worker.comfy.launch import free_port

pytestmark = pytest.mark.container

READY_TIMEOUT = 600.0
JOB_TIMEOUT = 300.0
# A value that must never show in any log.
FAKE_SECRET = "hf_containerTestSecretValue0123456789"


def _logs(container: Any) -> str:
    return container.logs(stdout=True, stderr=True).decode("utf-8", "replace")


@pytest.fixture
def run_container(docker_client: Any, worker_image: str) -> Iterator[Any]:
    """``run_container(**kwargs)`` starts a detached container of the worker image on the
    host network (the engine here has no bridge); all are removed after the test."""
    started: list[Any] = []

    def run(**kwargs: Any) -> Any:
        kwargs.setdefault("network_mode", "host")
        container = docker_client.containers.run(worker_image, detach=True, **kwargs)
        started.append(container)
        return container

    yield run
    for container in started:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def _wait_healthy(container: Any, base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            pytest.fail(f"container exited before it was healthy:\n{_logs(container)[-4000:]}")
        try:
            resp = requests.get(f"{base_url}/health", timeout=5)
            if resp.status_code == 200:
                return
            last = f"{resp.status_code} {resp.text[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(2)
    pytest.fail(f"/health not 200 after {timeout:.0f}s (last: {last}):\n"
                f"{_logs(container)[-4000:]}")


def test_local_mode_serves_a_job_on_a_model_from_the_volume(
    run_container: Any, tmp_path: Path
) -> None:
    volume = tmp_path / "workspace"
    model = write_volume_with_locked_model(volume)
    port = free_port()
    container = run_container(
        environment={
            "MODE": "local",
            "COMFY_WORKER_PORT": str(port),
            "COMFY_WORKER_LOCK": "/workspace/models.lock.json",
            "COMFYUI_CPU": "1",
            "HF_TOKEN": FAKE_SECRET,
        },
        volumes={str(volume): {"bind": "/workspace", "mode": "rw"}},
    )
    base_url = f"http://127.0.0.1:{port}"
    _wait_healthy(container, base_url, READY_TIMEOUT)

    workflow = upscale_workflow(Path(model.lock_entry_path).name, width=64, height=48)
    resp = requests.post(f"{base_url}/generate/sync", json={"input": {"workflow": workflow}},
                         timeout=JOB_TIMEOUT)
    assert resp.status_code == 200, resp.text[:2000]
    png = decode_png(first_png(resp.json()))
    # The x2 model doubled the 64x48 EmptyImage.
    assert (png.width, png.height) == (128, 96)
    assert png.channels in (3, 4)

    logs = _logs(container)
    assert "mode=local" in logs
    assert "volume=/workspace" in logs
    assert FAKE_SECRET not in logs
    # The lock's URL does not resolve: the job ran on the volume's file, still in place.
    lock_entry = json.loads(model.lock_path.read_text())["models"][0]
    assert hashlib.sha256(model.model_path.read_bytes()).hexdigest() == lock_entry["sha256"]


def _job_result_from_runpod_log(logs: str) -> dict[str, Any]:
    """The runpod SDK's local test logs ``Job result: {...}`` (a Python dict repr), as a
    JSON log record ``{"message": ...}`` when RUNPOD_ENDPOINT_ID is set."""
    marker = "Job result: "
    for line in logs.splitlines():
        message = line
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("message"), str):
            message = record["message"]
        if marker in message:
            return dict(ast.literal_eval(message.split(marker, 1)[1].strip()))
    raise AssertionError(f"no 'Job result:' line in the logs:\n{logs[-4000:]}")


def test_runpod_mode_runs_test_input_with_runpod_volume(
    run_container: Any, tmp_path: Path
) -> None:
    volume = tmp_path / "runpod-volume"
    model = write_volume_with_locked_model(volume)
    workflow = upscale_workflow(Path(model.lock_entry_path).name, width=32, height=32)
    container = run_container(
        # Autodetected from RUNPOD_ENDPOINT_ID; /runpod-volume mounted → used as the volume.
        command=["--test_input", json.dumps({"input": {"workflow": workflow}})],
        environment={
            "RUNPOD_ENDPOINT_ID": "container-test",
            "COMFY_WORKER_LOCK": "/runpod-volume/models.lock.json",
            "COMFYUI_CPU": "1",
            "HF_TOKEN": FAKE_SECRET,
        },
        volumes={str(volume): {"bind": "/runpod-volume", "mode": "rw"}},
    )
    result = container.wait(timeout=READY_TIMEOUT + JOB_TIMEOUT)
    logs = _logs(container)
    assert result["StatusCode"] == 0, logs[-4000:]
    assert "mode=runpod" in logs
    assert "volume=/runpod-volume" in logs
    assert FAKE_SECRET not in logs
    job = _job_result_from_runpod_log(logs)
    output = job.get("output", job)
    png = decode_png(first_png(output))
    assert (png.width, png.height) == (64, 64)


def test_run_command_writes_the_image_to_out_as_quickstart_does(
    run_container: Any, tmp_path: Path
) -> None:
    """scripts/quickstart.sh's `docker run ... IMAGE run WORKFLOW --out /out`, on the tiny
    locked model instead of the default set (Hugging Face is not reachable here)."""
    volume = tmp_path / "models-volume"
    model = write_volume_with_locked_model(volume)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    workflow = upscale_workflow(Path(model.lock_entry_path).name, width=40, height=24)
    (jobs / "upscale.json").write_text(json.dumps(workflow))
    out = tmp_path / "out"
    out.mkdir()
    container = run_container(
        command=["run", "/jobs/upscale.json", "--out", "/out"],
        environment={
            "COMFY_WORKER_VOLUME": "/workspace",
            "COMFY_WORKER_LOCK": "/workspace/models.lock.json",
            "COMFYUI_CPU": "1",
        },
        volumes={str(volume): {"bind": "/workspace", "mode": "rw"},
                 str(jobs): {"bind": "/jobs", "mode": "ro"},
                 str(out): {"bind": "/out", "mode": "rw"}},
    )
    result = container.wait(timeout=READY_TIMEOUT + JOB_TIMEOUT)
    logs = _logs(container)
    assert result["StatusCode"] == 0, logs[-4000:]
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 1, (list(out.rglob("*")), logs[-2000:])
    png = decode_png(pngs[0].read_bytes())
    assert (png.width, png.height) == (80, 48)


def test_image_runs_as_documented(docker_client: Any, worker_image: str) -> None:
    """Entrypoint, env and layout the docs promise (docs/deploy.md "Image layout")."""
    image = docker_client.images.get(worker_image)
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["/app/scripts/start.sh"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["COMFYUI_DIR"] == "/opt/comfyui/ComfyUI"
    assert env["COMFYUI_PYTHON"] == "/opt/comfyui/venv/bin/python"
    assert env["COMFY_WORKER_LOCK"] == "/app/models.lock.json"
    out = docker_client.containers.run(
        worker_image,
        entrypoint=["/bin/bash", "-c"],
        command=["test -f /app/models.lock.json && test -f /app/workflows/default.json "
                 "&& test -f /opt/comfyui/ComfyUI/main.py && comfy-worker --help >/dev/null "
                 "&& /opt/comfyui/venv/bin/python -c 'import torch, torchvision; "
                 "print(torch.__version__)' && ! /opt/comfyui/venv/bin/python -c "
                 "'import comfy_worker' 2>/dev/null "
                 # the editor's template media are left out (TEMPLATE_MEDIA=0), the
                 # templates' JSON and manifest are not
                 "&& /opt/comfyui/venv/bin/python -c 'import comfyui_workflow_templates_json, "
                 "comfyui_workflow_templates_core' && ! /opt/comfyui/venv/bin/python -c "
                 "'import comfyui_workflow_templates_media_video' 2>/dev/null "
                 "&& echo layout-ok"],
        network_mode="host", remove=True,
    ).decode()
    assert "layout-ok" in out


def test_vast_pyworker_and_worker_live_in_separate_venvs(
    docker_client: Any, worker_image: str
) -> None:
    """vastai pins cryptography 49, runpod needs >= 50: two venvs, one image."""
    script = (
        "set -e; "
        "/opt/vast-pyworker/bin/python -c 'import vastai, cryptography; "
        "print(\"vast\", cryptography.__version__)'; "
        "/opt/worker/bin/python -c 'import runpod, cryptography; "
        "print(\"worker\", cryptography.__version__)'; "
        "! /opt/worker/bin/python -c 'import vastai' 2>/dev/null"
    )
    out = docker_client.containers.run(worker_image, entrypoint=["/bin/bash", "-c"],
                                       command=[script], network_mode="host",
                                       remove=True).decode()
    versions = dict(line.split() for line in out.strip().splitlines())
    assert int(versions["vast"].split(".")[0]) < 50 <= int(versions["worker"].split(".")[0])
