"""UI-format workflows (the editor's "Save" format) as real jobs on a real CPU ComfyUI.

A UI workflow with the locked Compact upscaler runs through the session's Worker, through
`comfy-worker serve` as an HTTP client sends it (object, JSON string, whole input as a
JSON string), a PNG the worker returned runs again through `comfy-worker run PNG`, and
`comfy-worker workflow convert` reads the node definitions from a running ComfyUI's URL.
ComfyUI boots added here: one for `serve` and one for `run` (the Worker is the session's).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.workflow_cases import expected, template

from comfy_worker.errors import WorkerError
from comfy_worker.job.preflight import JOB_MARKER_INPUT
from comfy_worker.worker import Worker
from comfy_worker.workflow.embedded import embedded_texts
from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import CLI, png_size, serving, ui_upscale_workflow

pytestmark = pytest.mark.comfyui



def _result(worker: Worker, job_input: Any) -> dict[str, Any]:
    try:
        return worker.run_job(job_input).to_json()
    except WorkerError as err:
        raise AssertionError(err.to_json()) from None


def _pngs(result: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(item["data"]) for item in result["images"]]


@pytest.mark.compat
def test_ui_workflow_with_a_locked_model_runs_through_the_worker_as_object_and_string(
        worker: Worker, model_env: ModelEnv) -> None:
    as_object = _result(worker, {"workflow": ui_upscale_workflow(model_env.model_name, 14, 10,
                                                                 prefix="ui-object")})
    as_string = _result(worker, {"workflow": json.dumps(ui_upscale_workflow(
        model_env.model_name, 12, 6, prefix="ui-string"))})

    assert [png_size(p) for p in _pngs(as_object)] == [(28, 20)]  # the x2 model ran
    assert [png_size(p) for p in _pngs(as_string)] == [(24, 12)]
    for result in (as_object, as_string):
        assert result["timings"]["convert_ms"] > 0
        assert result["images"][0]["filename"].startswith(("ui-object", "ui-string"))
    assert (model_env.models_dir / "upscale_models" / model_env.model_name).is_file()


@pytest.fixture
def served_url(comfy_install: ComfyInstall, model_env: ModelEnv,
               tmp_path: Path) -> Iterator[str]:
    """`comfy-worker serve` on a free port, ready (its own ComfyUI), stopped afterwards."""
    env = e2e_env(comfy_install, model_env)
    env["COMFY_WORKER_WORK_DIR"] = str(tmp_path / "serve-work")
    with serving(env, tmp_path / "serve.log", verbose=False) as (url, _):
        yield url


def test_ui_workflow_through_serve_as_a_real_client_sends_it(served_url: str,
                                                             model_env: ModelEnv) -> None:
    def ui(width: int, height: int) -> dict[str, Any]:
        return ui_upscale_workflow(model_env.model_name, width, height, prefix="http-ui")

    bodies = {
        "wrapped object": {"input": {"workflow": ui(10, 8)}},
        "workflow as a JSON string": {"input": {"workflow": json.dumps(ui(10, 6))}},
        "input as a JSON string": {"input": json.dumps({"workflow": ui(8, 6)})},
        "bare object": {"workflow": ui(6, 4)},
    }
    sizes = {}
    for name, body in bodies.items():
        # as a client sends it: the JSON text of the body, posted
        r = requests.post(f"{served_url}/generate/sync", data=json.dumps(body),
                          headers={"Content-Type": "application/json"}, timeout=120)
        assert r.status_code == 200, (name, r.text[:2000])
        sizes[name] = [png_size(p) for p in _pngs(r.json())]
    assert sizes == {"wrapped object": [(20, 16)], "workflow as a JSON string": [(20, 12)],
                     "input as a JSON string": [(16, 12)], "bare object": [(12, 8)]}

    broken = ui(8, 8)
    broken["nodes"].append({"id": 7, "type": "NoSuchNodeType", "pos": [0, 0], "size": [200, 80],
                            "flags": {}, "order": 7, "mode": 0, "inputs": [], "outputs": [],
                            "properties": {}, "widgets_values": [1]})
    r = requests.post(f"{served_url}/generate/sync", json={"input": {"workflow": broken}},
                      timeout=60)
    assert r.status_code == 422, r.text[:2000]
    assert r.json()["reference"] == "workflow-conversion-failed"
    assert r.json()["error"].startswith('node 7 ("NoSuchNodeType")'), r.json()


def test_png_the_worker_returned_runs_again_through_the_run_command(
        worker: Worker, comfy_install: ComfyInstall, model_env: ModelEnv,
        tmp_path: Path) -> None:
    result = _result(worker, {"workflow": ui_upscale_workflow(model_env.model_name, 18, 6,
                                                              prefix="again")})
    (returned,) = _pngs(result)
    assert png_size(returned) == (36, 12)
    embedded = json.loads(embedded_texts(returned)["prompt"])
    assert {n["class_type"] for n in embedded.values()} == {
        "EmptyImage", "UpscaleModelLoader", "ImageUpscaleWithModel", "SaveImage"}
    (tmp_path / "returned.png").write_bytes(returned)

    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "run", "returned.png", "--out", str(out)],
                          env=e2e_env(comfy_install, model_env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)

    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["again_00001_.png"], proc.stdout
    again = written[0].read_bytes()
    assert png_size(again) == (36, 12)
    # the same prompt ran (each job marks its output nodes with its own id)
    assert _unmarked(json.loads(embedded_texts(again)["prompt"])) == _unmarked(embedded)


def _unmarked(prompt: dict[str, Any]) -> dict[str, Any]:
    """``prompt`` without the job marker the worker adds to output nodes' inputs."""
    return {node_id: {**node, "inputs": {k: v for k, v in node["inputs"].items()
                                         if k != JOB_MARKER_INPUT}}
            for node_id, node in prompt.items()}


@pytest.mark.parametrize(("name", "suffix"), [("01_qwen_t2i_subgraphed", ""),
                                              ("hiresfix_latent_workflow", "/object_info")])
def test_workflow_convert_reads_node_definitions_from_a_running_comfyui(
        worker: Worker, tmp_path: Path, name: str, suffix: str) -> None:
    assert worker.comfy is not None
    (tmp_path / "wf.json").write_text(json.dumps(template(name)))
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFYUI_DIR", "COMFYUI_PYTHON")}  # it must not start a ComfyUI
    url = worker.comfy.base_url.rstrip("/") + suffix

    proc = subprocess.run([*CLI, "workflow", "convert", "wf.json", "--object-info", url,
                           "--out", "prompt.json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/object_info" in proc.stderr  # logged where the definitions came from
    got = json.loads((tmp_path / "prompt.json").read_text())
    prompt = expected(name)[0]
    assert got == prompt
    assert list(got) == list(prompt)
