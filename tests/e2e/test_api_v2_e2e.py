"""The Comfy API v2 end to end: the real comfy-sdk 0.5.0, pointed at `comfy-worker serve`
(a subprocess) with a real CPU ComfyUI, as an integrator's code would be, changing only
``COMFY_BASE_URL`` (and ``COMFY_API_KEY``, the worker's ``COMFY_WORKER_API_TOKEN``).

The lock pins one upscaler that nothing has synced: the first job fetches it on demand.
One ``serve`` process for the module; after every error case the worker serves a normal
job.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from comfy_sdk import Comfy, ComfyError, JobFailed, MissingAsset, NotFound, Unauthorized
from comfy_sdk.events import StatusChange

from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import png_bytes, png_size, serving, upscale_workflow

pytestmark = pytest.mark.comfyui

TOKEN = "v2-e2e-token-0123456789"


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    models: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")



@pytest.fixture(scope="module")
def served(comfy_install: ComfyInstall, model_env: ModelEnv,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("v2")
    models = root / "models"  # empty: the locked upscaler comes on demand
    env = e2e_env(comfy_install, ModelEnv(hub=model_env.hub, lock_path=model_env.lock_path,
                                          models_dir=models, model_name=model_env.model_name,
                                          model_sha256=model_env.model_sha256))
    env |= {"COMFY_WORKER_WORK_DIR": str(root / "work"), "COMFY_WORKER_API_TOKEN": TOKEN,
            "COMFY_WORKER_PREFETCH": "0"}
    log_path = root / "serve.log"
    with serving(env, log_path, health="/api/v2/health", interval=0.2) as (url, proc):
        yield Served(url, proc, log_path, models)


@pytest.fixture
def client(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", served.url)
    monkeypatch.setenv("COMFY_API_KEY", TOKEN)
    with Comfy() as c:
        yield c


def upscale_from_image(model: str) -> dict[str, Any]:
    """LoadImage (node 10) → the locked upscaler → SaveImage (node 9)."""
    return {"10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
            "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
            "3": {"class_type": "ImageUpscaleWithModel",
                  "inputs": {"upscale_model": ["2", 0], "image": ["10", 0]}},
            "9": {"class_type": "SaveImage",
                  "inputs": {"images": ["3", 0], "filename_prefix": "v2"}}}


def normal_job(client: Comfy, served: Served, model: str) -> None:
    job = client.run(client.workflows.from_json(upscale_workflow(model, 4, 3, prefix="ok")))
    assert job.status == "succeeded"
    assert served.proc.poll() is None


def test_the_sdks_getting_started_code_runs_unchanged_with_a_model_on_demand(
        client: Comfy, served: Served, model_env: ModelEnv, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(png_bytes(5, 4))
    (tmp_path / "workflow_api.json").write_text(json.dumps(upscale_from_image(
        model_env.model_name)))
    assert not (served.models / "upscale_models" / model_env.model_name).exists()

    # The SDK's getting-started code, as its README has it:
    wf = client.workflows.from_file("workflow_api.json")
    asset = client.assets.from_file("photo.png")
    wf.set_input("10", "image", asset)
    job = client.run(wf)
    for output in job.get_outputs("9"):
        output.to_file(output.name)

    (out,) = job.get_outputs("9")
    assert png_size((tmp_path / out.name).read_bytes()) == (10, 8)  # 5x4, upscaled x2
    assert (served.models / "upscale_models" / model_env.model_name).is_file()
    assert out.to_bytes() == (tmp_path / out.name).read_bytes()
    assert out.to_bytes(range=(0, 7)) == (tmp_path / out.name).read_bytes()[:8]


def test_events_stream_to_the_terminal_status_and_the_job_is_listed(
        client: Comfy, model_env: ModelEnv) -> None:
    job = client.submit(client.workflows.from_json(
        upscale_workflow(model_env.model_name, 6, 5, prefix="ev")))
    events = list(job.events())
    assert events[-1] == StatusChange(status="succeeded")
    assert job.id in [s.id for s in client.list_jobs(limit=10)]
    back = client.jobs.get(job.id)
    assert back.status == "succeeded"
    graph = back.get_workflow().graph
    assert graph["2"]["inputs"]["model_name"] == model_env.model_name


def test_cancel_is_idempotent(client: Comfy, served: Served, model_env: ModelEnv) -> None:
    wf = client.workflows.from_json(upscale_workflow(model_env.model_name, 64, 64,
                                                     prefix="cancel"))
    first, second = client.submit(wf), client.submit(wf)
    assert second.cancel().status in {"canceled", "succeeded", "canceling"}
    first.cancel()
    for job in (first, second):
        with contextlib.suppress(JobFailed):
            job.result()
        assert job.cancel().status in {"canceled", "succeeded"}  # an ended job stays
    normal_job(client, served, model_env.model_name)


def test_errors_come_out_as_the_sdks_typed_exceptions_and_the_worker_stays_up(
        client: Comfy, served: Served, model_env: ModelEnv) -> None:
    with pytest.raises(NotFound):
        client.jobs.get("00000000-0000-0000-0000-000000000000")
    wf = client.workflows.from_json(upscale_workflow(model_env.model_name, 4, 3))
    wf.set_input("1", "width", {"__type": "core/ASSET",
                                "info": {"id": "4b0a3e92-6a8f-4a0e-8f6c-2f1a9f1c0d11"}})
    with pytest.raises(MissingAsset):
        client.submit(wf)
    r = requests.post(f"{served.url}/api/v2/jobs", json={"workflow": 3},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_workflow", r.text
    with pytest.raises(ComfyError) as info:
        list(client.list_jobs(limit=500))
    assert info.value.code == "invalid_request" and info.value.http_status == 400
    boom = client.workflows.from_json({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    with pytest.raises(JobFailed) as failed:
        client.run(boom)
    assert "NoSuchNode" in str(failed.value.error), failed.value.error
    normal_job(client, served, model_env.model_name)


def test_without_the_token_v2_is_unauthorized_but_health_answers(
        served: Served, model_env: ModelEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_BASE_URL", served.url)
    monkeypatch.setenv("COMFY_API_KEY", "wrong")
    with Comfy() as stranger, pytest.raises(Unauthorized):
        stranger.jobs.get("00000000-0000-0000-0000-000000000000")
    assert requests.get(f"{served.url}/api/v2/health", timeout=5).status_code == 200
    assert TOKEN not in served.log()
    monkeypatch.setenv("COMFY_API_KEY", TOKEN)
    with Comfy() as client:
        normal_job(client, served, model_env.model_name)
