"""The Comfy API v2 over a real uvicorn server on 127.0.0.1, driven by the real comfy-sdk
0.5.0 (``COMFY_BASE_URL`` pointing at it), with a scripted Worker behind the real job
queue: the worker reads each job input with the real parser (so what the v2 layer queues
is a valid job input) and answers with its first input image, or a fixed PNG, as the
output of node 9. tests/e2e/test_api_v2_e2e.py runs the same client against `serve` with
a real ComfyUI.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from comfy_sdk import (
    Comfy,
    ComfyError,
    IdempotencyKeyReuse,
    JobFailed,
    MissingAsset,
    NotFound,
    QueueFull,
    Unauthorized,
)
from comfy_sdk.events import OutputReady, Progress, StatusChange
from test_http_api_helpers import RunningApi, running_api, wait_for

from comfy_worker import errors
from comfy_worker.config import Secret
from comfy_worker.job import JobResult
from comfy_worker.job.events import NodeProgress, WaitProgress
from comfy_worker.job.outputs import OutputItem
from comfy_worker.job.request import JobRequest, parse_job_input
from comfy_worker.readiness import Phase, Readiness

OUT_PNG = b"\x89PNG\r\n\x1a\n generated output"
WF = {"10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
      "9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0],
                                                   "filename_prefix": "ComfyUI"}}}


class ImageWorker:
    """The Worker interface (start / readiness / run_job / stop) without ComfyUI."""

    def __init__(self, *, failed: bool = False) -> None:
        self.start_gate = threading.Event()
        self.start_gate.set()
        self.job_gate = threading.Event()
        self.job_gate.set()
        self.running = threading.Event()
        self.failed = failed
        self.requests: list[JobRequest] = []
        self.bodies: list[str] = []

    def start(self) -> None:
        if self.failed:
            raise errors.ComfyStartError("ComfyUI exited with code 1 during start-up")

    def readiness(self) -> Readiness:
        return Readiness(Phase.READY, "ready")

    def stop(self) -> None:
        pass

    def run_job(self, body: Any, *, job_id: str | None = None,
                progress: Callable[[Any], None] | None = None,
                cancel: threading.Event | None = None) -> JobResult:
        self.bodies.append(json.dumps(body))
        request = parse_job_input(body, default_timeout=60)
        self.requests.append(request)
        if progress is not None:
            progress(WaitProgress(0, 1, 0, 10, 0.0, ("upscale_models/x.safetensors",)))
            progress(NodeProgress("9", "SaveImage", 1.0, 2.0, 50.0, 1, 2))
        self.running.set()
        while not self.job_gate.wait(0.02):
            if cancel is not None and cancel.is_set():
                raise errors.JobCancelled("job cancelled; ComfyUI was interrupted")
        if any(n.get("class_type") == "Boom" for n in request.workflow.values()):
            raise errors.WorkflowExecutionError("Boom failed: kaput",
                                                details=[{"node_id": "7",
                                                          "node_type": "Boom"}])
        data = request.images[0].data if request.images else OUT_PNG
        return JobResult(images=(OutputItem("ComfyUI_00001_.png", "base64",
                                            base64.b64encode(data).decode(), "9"),),
                         timings={"models_wait_ms": 12.5, "execution_ms": 30.0,
                                  "total_ms": 50.0})


@contextlib.contextmanager
def served(tmp_path: Path, worker: ImageWorker | None = None, *,
           api_token: str | None = None, max_request_bytes: int = 1 << 20,
           **options: Any) -> Iterator[RunningApi]:
    worker = worker or ImageWorker()
    service_options = {k: options.pop(k) for k in ("max_queued",) if k in options}
    with running_api(worker, v2_dir=tmp_path / "assets", v2_options=options,
                     api_token=api_token, max_request_bytes=max_request_bytes,
                     **service_options) as api:
        yield api


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningApi]:
    with served(tmp_path, keepalive_s=0.3) as running:
        monkeypatch.setenv("COMFY_BASE_URL", running.url)
        monkeypatch.delenv("COMFY_API_KEY", raising=False)
        yield running


@pytest.fixture
def client(api: RunningApi) -> Iterator[Comfy]:
    with Comfy() as c:
        yield c


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n a photo")
    (tmp_path / "workflow_api.json").write_text(json.dumps(WF))
    return tmp_path


def v2(api: RunningApi, path: str) -> str:
    return f"{api.url}/api/v2{path}"


# --- the SDK's getting-started code, unchanged ----------------------------------------------


def test_the_sdks_getting_started_code_runs_unchanged(api: RunningApi, files: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files)
    client = Comfy()
    wf = client.workflows.from_file("workflow_api.json")
    asset = client.assets.from_file("photo.png")
    wf.set_input("10", "image", asset)
    job = client.run(wf)
    for output in job.get_outputs("9"):
        output.to_file(output.name)
    assert (files / "ComfyUI_00001_.png").read_bytes() == (files / "photo.png").read_bytes()
    request = api.worker.requests[0]
    name = request.workflow["10"]["inputs"]["image"]
    assert name == f"asset-{asset.id}-photo.png"
    assert [(i.name, i.data) for i in request.images] == [(name, b"\x89PNG\r\n\x1a\n a photo")]
    assert asset.created_new is True and asset.hash.startswith("blake3:")


def test_outputs_read_as_bytes_whole_and_by_range_with_their_metadata(
        client: Comfy, api: RunningApi) -> None:
    job = client.run(client.workflows.from_json(copy.deepcopy(WF)))
    (out,) = job.outputs
    assert out.to_bytes() == OUT_PNG
    assert out.to_bytes(range=(0, 3)) == OUT_PNG[:4]
    assert out.to_bytes(range=(4, 7)) == OUT_PNG[4:8]
    assert (out.type, out.content_type, out.size_bytes, out.job_id) == (
        "image", "image/png", len(OUT_PNG), job.id)
    assert out.get_download_url().url.endswith(f"/api/v2/assets/{out.id}/content")
    r = requests.get(v2(api, f"/assets/{out.id}/content"), headers={"Range": "bytes=-4"},
                     timeout=5)
    assert r.status_code == 206 and r.content == OUT_PNG[-4:]
    assert r.headers["Content-Range"] == f"bytes {len(OUT_PNG) - 4}-{len(OUT_PNG) - 1}/" \
        f"{len(OUT_PNG)}"
    bad = requests.get(v2(api, f"/assets/{out.id}/content"),
                       headers={"Range": "bytes=999-"}, timeout=5)
    assert bad.status_code == 416


def test_the_same_file_twice_is_uploaded_once_and_deduplicated(client: Comfy, files: Path,
                                                               api: RunningApi) -> None:
    first = client.assets.from_file(files / "photo.png")
    first.commit()
    (files / "copy.png").write_bytes((files / "photo.png").read_bytes())
    again = client.assets.from_file(files / "copy.png")
    again.commit()
    assert again.id == first.id and again.created_new is False
    assert api.v2 is not None and api.v2.store.usage()["assets"] == 1


def test_an_upload_whose_bytes_do_not_match_its_hash_is_hash_mismatch(api: RunningApi) -> None:
    r = requests.post(v2(api, "/assets"), files={"file": ("a.png", b"real bytes")},
                      data={"file_path": "a.png", "expected_hash": "blake3:" + "0" * 64},
                      timeout=5)
    assert r.status_code == 409 and r.json()["error"]["code"] == "hash_mismatch"
    assert api.v2 is not None and api.v2.store.usage()["assets"] == 0


def test_an_asset_can_be_read_back_and_deleted(client: Comfy, files: Path) -> None:
    asset = client.assets.from_file(files / "photo.png")
    asset_id = asset.commit()
    url = asset.get_download_url()
    assert url.url.endswith(f"/assets/{asset_id}/content") and url.expires_at is None
    client.assets.delete(asset_id)
    with pytest.raises(NotFound):
        client.assets.delete(asset_id)


# --- jobs: events, list, cancel, workflow -------------------------------------------------


def test_events_stream_status_progress_outputs_then_the_terminal_status(
        client: Comfy, api: RunningApi) -> None:
    api.worker.job_gate.clear()
    job = client.submit(client.workflows.from_json(copy.deepcopy(WF)))
    seen: list[Any] = []
    for event in job.events():
        seen.append(event)
        if isinstance(event, Progress) and event.step == 1:
            api.worker.job_gate.set()
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "StatusChange" and kinds[-1] == "StatusChange"
    assert seen[-1] == StatusChange(status="succeeded")
    progress = [e for e in seen if isinstance(e, Progress)]
    assert progress and progress[-1].message == "SaveImage 1/2" and progress[-1].value == 0.5
    (ready,) = [e for e in seen if isinstance(e, OutputReady)]
    assert ready.output.to_bytes() == OUT_PNG and kinds.index("OutputReady") == len(kinds) - 2


def test_the_stream_sends_keepalive_comments_while_nothing_changes(api: RunningApi) -> None:
    api.worker.job_gate.clear()
    job = requests.post(v2(api, "/jobs"), json={"workflow": WF}, timeout=5).json()
    lines: list[str] = []
    with httpx.stream("GET", v2(api, f"/jobs/{job['id']}/events"), timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            lines.append(line)
            if lines.count(": keepalive") == 2:
                api.worker.job_gate.set()
    assert lines[:2] == ["event: status", 'data: {"status":"running"}'] or lines[:2] == [
        "event: status", 'data: {"status":"queued","queue_position":1}']
    assert lines[-2:] == ['data: {"status":"succeeded"}', ""]
    assert not any(line.startswith("id:") for line in lines)


def test_jobs_are_listed_newest_first_by_status_labels_and_pages(client: Comfy) -> None:
    wf = client.workflows.from_json(copy.deepcopy(WF))
    ran = [client.run(wf) for _ in range(3)]
    labelled = client.submit(wf, metadata={"client": "acme", "batch": "7"})
    labelled.result()
    assert labelled.metadata == {"client": "acme", "batch": "7"}
    ids = [s.id for s in client.list_jobs(limit=2)]  # pages of two, every page read
    assert ids == [labelled.id] + [j.id for j in reversed(ran)]
    assert [s.id for s in client.list_jobs(metadata={"client": "acme"})] == [labelled.id]
    page = client._low.list_jobs(limit=1)
    assert [j["id"] for j in page["jobs"]] == [labelled.id] and page["next_cursor"]
    assert client._low.list_jobs(limit=100, cursor=page["next_cursor"])["jobs"][0]["id"] == \
        ran[-1].id


def test_the_list_filters_on_status(client: Comfy, api: RunningApi) -> None:
    done = client.run(client.workflows.from_json(copy.deepcopy(WF)))
    api.worker.job_gate.clear()
    running = client.submit(client.workflows.from_json(copy.deepcopy(WF)))
    waiting = client.submit(client.workflows.from_json(copy.deepcopy(WF)))
    wait_for(api.worker.running.is_set)
    by_status = {s: [j["id"] for j in client._low.list_jobs(limit=100)["jobs"]
                     if j["status"] == s] for s in ("queued", "running", "succeeded")}
    assert by_status == {"queued": [waiting.id], "running": [running.id],
                         "succeeded": [done.id]}
    r = requests.get(v2(api, "/jobs"), params={"status": "queued,succeeded"}, timeout=5)
    assert [j["id"] for j in r.json()["jobs"]] == [waiting.id, done.id]
    assert r.json()["jobs"][0]["queue_position"] == 1
    api.worker.job_gate.set()


def test_cancel_stops_a_waiting_or_running_job_and_is_idempotent(client: Comfy,
                                                                 api: RunningApi) -> None:
    api.worker.job_gate.clear()
    wf = client.workflows.from_json(copy.deepcopy(WF))
    running, waiting = client.submit(wf), client.submit(wf)
    wait_for(api.worker.running.is_set)
    assert waiting.cancel().status == "canceled"
    assert running.cancel().status in {"canceling", "canceled"}
    with pytest.raises(JobFailed, match="ended canceled"):
        running.result()
    assert running.cancel().status == "canceled" and waiting.cancel().status == "canceled"
    assert len(api.worker.requests) == 1  # the waiting one never ran
    api.worker.job_gate.set()
    done = client.run(wf)
    assert done.cancel().status == "succeeded"  # an ended job stays as it ended


def test_the_workflow_reads_back_as_it_ran(client: Comfy, files: Path) -> None:
    wf = client.workflows.from_json(json.loads(json.dumps(WF)))
    asset = client.assets.from_file(files / "photo.png")
    wf.set_input("10", "image", asset)
    job = client.run(wf)
    back = client.jobs.get(job.id).get_workflow()
    assert back.format == "api"
    assert back.graph["10"]["inputs"]["image"] == f"asset-{asset.id}-photo.png"
    assert back.graph["9"] == WF["9"]


def test_a_failed_job_says_which_node_failed(client: Comfy) -> None:
    wf = client.workflows.from_json({**WF, "7": {"class_type": "Boom", "inputs": {}}})
    with pytest.raises(JobFailed) as info:
        client.run(wf)
    assert info.value.error.code == "node_execution_error"
    assert info.value.error.node_id == "7" and info.value.error.class_type == "Boom"


# --- the partner-node key -------------------------------------------------------------------


def test_the_partner_node_key_reaches_the_job_and_is_never_echoed(client: Comfy,
                                                                  api: RunningApi) -> None:
    job = client.run(client.workflows.from_json(copy.deepcopy(WF)), api_key="comfyui-PARTNER")
    assert api.worker.requests[-1].comfy_org_api_key == Secret("comfyui-PARTNER")
    answers = [requests.get(v2(api, path), timeout=5).text for path in (
        f"/jobs/{job.id}", f"/jobs/{job.id}/workflow", "/jobs")]
    assert not any("PARTNER" in text for text in answers)


# --- errors: the SDK's typed exceptions ----------------------------------------------------


def test_an_unknown_job_or_asset_is_not_found(client: Comfy, api: RunningApi) -> None:
    with pytest.raises(NotFound):
        client.jobs.get("4b0a3e92-6a8f-4a0e-8f6c-2f1a9f1c0d11")
    with pytest.raises(NotFound):
        client.jobs.get("../../etc/passwd")
    for path in ("/assets/x", "/assets/x/content", "/jobs/x/workflow", "/nope"):
        r = requests.get(v2(api, path), timeout=5)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    r = requests.put(v2(api, "/jobs"), timeout=5)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_reference_to_an_unknown_asset_is_missing_asset(client: Comfy) -> None:
    wf = client.workflows.from_json(copy.deepcopy(WF))
    wf.set_input("10", "image", {"__type": "core/ASSET",
                                 "info": {"id": "4b0a3e92-6a8f-4a0e-8f6c-2f1a9f1c0d11"}})
    with pytest.raises(MissingAsset, match="node 10 input 'image'"):
        client.submit(wf)


def test_an_idempotency_key_is_single_use_but_a_refused_submission_does_not_spend_it(
        client: Comfy, api: RunningApi) -> None:
    wf = client.workflows.from_json(copy.deepcopy(WF))
    bad = requests.post(v2(api, "/jobs"), json={"workflow": 3},
                        headers={"Idempotency-Key": "k-1"}, timeout=5)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_workflow"
    job = client.submit(wf, idempotency_key="k-1")
    with pytest.raises(IdempotencyKeyReuse):
        client.submit(wf, idempotency_key="k-1")
    job.result()
    assert len(api.worker.requests) == 1


def test_a_full_queue_is_queue_full_with_retry_after(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    worker = ImageWorker()
    worker.job_gate.clear()
    monkeypatch.setattr("comfy_sdk.client._QUEUE_RETRY_BUDGET", 0.0)  # no waiting here
    with served(tmp_path, worker, max_queued=1) as running:
        monkeypatch.setenv("COMFY_BASE_URL", running.url)
        client = Comfy()
        wf = client.workflows.from_json(copy.deepcopy(WF))
        client.submit(wf)
        wait_for(worker.running.is_set)
        client.submit(wf)
        with pytest.raises(QueueFull) as info:
            client.submit(wf, idempotency_key="k-full")
        assert info.value.retry_after == 10
        worker.job_gate.set()
        wait_for(lambda: running.service.queue.waiting == 0)
        client.submit(wf, idempotency_key="k-full").result()  # a 429 spent no key


def test_with_a_token_every_v2_route_but_health_needs_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    with served(tmp_path, api_token="v2-token") as running:
        monkeypatch.setenv("COMFY_BASE_URL", running.url)
        monkeypatch.delenv("COMFY_API_KEY", raising=False)
        with pytest.raises(Unauthorized):
            Comfy().run(Comfy().workflows.from_json(copy.deepcopy(WF)))
        with pytest.raises(Unauthorized):
            Comfy(api_key="wrong").jobs.get("4b0a3e92-6a8f-4a0e-8f6c-2f1a9f1c0d11")
        r = requests.get(f"{running.url}/api/v2/jobs", timeout=5)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert requests.get(f"{running.url}/api/v2/health", timeout=5).status_code == 200
        monkeypatch.setenv("COMFY_API_KEY", "v2-token")
        client = Comfy()
        assert client.run(client.workflows.from_json(copy.deepcopy(WF))).status == "succeeded"
        assert "v2-token" not in repr(client)


def test_an_upload_over_the_request_limit_is_refused_in_the_v2_envelope(
        tmp_path: Path) -> None:
    with served(tmp_path, max_request_bytes=1000) as running:
        r = requests.post(f"{running.url}/api/v2/assets",
                          files={"file": ("a.bin", b"x" * 2000)},
                          data={"file_path": "a.bin"}, timeout=5)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert running.v2 is not None and running.v2.store.usage()["assets"] == 0


@pytest.mark.parametrize(("body", "code"), [
    (b"not json", "invalid_request"),
    (json.dumps({"workflow": {"nodes": [], "links": []}}).encode(), "workflow_format_ui"),
    (json.dumps({"workflow": WF, "extra_data": {"other": 1}}).encode(), "invalid_request"),
    (json.dumps({"workflow": WF, "metadata": {"bad key": "v"}}).encode(), "metadata_invalid"),
    (json.dumps({"workflow": {"1": {"inputs": {}}}}).encode(), "invalid_workflow"),
])
def test_bad_submissions_are_refused_with_the_contracts_code(api: RunningApi, body: bytes,
                                                             code: str) -> None:
    r = requests.post(v2(api, "/jobs"), data=body,
                      headers={"Content-Type": "application/json"}, timeout=5)
    assert r.json()["error"]["code"] == code and r.status_code in (400, 422)
    assert api.worker.requests == []


@pytest.mark.parametrize(("files", "data"), [
    ({}, {"file_path": "a.png"}),
    ({"file": ("a.png", b"x")}, {}),
    ({"file": ("a.png", b"x")}, {"file_path": "../../etc/passwd"}),
    ({"file": ("a.png", b"x")}, {"file_path": "a.png", "content_type": "not a type"}),
    ({"file": ("a.png", b"x")}, {"file_path": "a.png", "expected_hash": "md5:abc"}),
])
def test_bad_uploads_are_invalid_request_and_leave_nothing(api: RunningApi, files: dict,
                                                          data: dict) -> None:
    r = requests.post(v2(api, "/assets"), files=files or None, data=data, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert api.v2 is not None and api.v2.store.usage()["assets"] == 0
    assert list((api.v2.store.root / "tmp").iterdir()) == []


def test_a_worker_whose_start_up_failed_is_deployment_stopped(tmp_path: Path) -> None:
    with served(tmp_path, ImageWorker(failed=True)) as running:
        wait_for(lambda: running.service.failed)
        r = requests.post(f"{running.url}/api/v2/jobs", json={"workflow": WF}, timeout=5)
        assert r.status_code == 422 and r.json()["error"]["code"] == "deployment_stopped"
        health = requests.get(f"{running.url}/api/v2/health", timeout=5)
        assert health.status_code == 503 and health.json()["phase"] == "failed"


def test_the_worker_stays_up_after_every_error(client: Comfy, api: RunningApi,
                                              files: Path) -> None:
    for method, path, kwargs in [
            ("POST", "/jobs", {"data": b"\xff\xfe"}), ("POST", "/assets", {"data": b"x"}),
            ("POST", "/assets/from-hash", {"json": {"hash": "blake3:" + "a" * 64}}),
            ("HEAD", "/assets/by-hash/zzz", {}), ("DELETE", "/assets/x", {}),
            ("GET", "/jobs?limit=-1", {}), ("POST", "/jobs/x/cancel", {})]:
        r = requests.request(method, v2(api, path), timeout=5, **kwargs)
        assert 400 <= r.status_code < 500, (path, r.status_code)
    job = client.run(client.workflows.from_json(copy.deepcopy(WF)))
    assert job.status == "succeeded"
    health = requests.get(v2(api, "/health"), timeout=5).json()
    assert health["status"] == "healthy" and health["ready"] is True


def test_the_openapi_document_lists_the_v2_routes(api: RunningApi) -> None:
    paths = requests.get(f"{api.url}/openapi.json", timeout=5).json()["paths"]
    assert {"/api/v2/jobs", "/api/v2/jobs/{job_id}/events", "/api/v2/assets",
            "/api/v2/assets/by-hash/{digest}", "/health"} <= set(paths)


def test_a_list_limit_over_100_is_invalid_request(client: Comfy) -> None:
    with pytest.raises(ComfyError) as info:
        list(client.list_jobs(limit=500))
    assert info.value.code == "invalid_request" and info.value.http_status == 400


def test_a_timeout_is_bounded_at_submit_by_the_operators_limit(tmp_path: Path) -> None:
    """POST /jobs checks the ``timeout`` extension against COMFY_WORKER_MAX_JOB_TIMEOUT as
    the job pipeline will, not against the default limit."""
    def submit(api: RunningApi, timeout: float) -> requests.Response:
        return requests.post(v2(api, "/jobs"), json={"workflow": WF, "timeout": timeout},
                             timeout=5)

    with served(tmp_path / "raised", max_timeout=7200.0) as api:
        assert submit(api, 5000).status_code == 201
        r = submit(api, 7201)
        assert r.status_code == 422 and "allows, 7200 s" in r.json()["error"]["message"], r.text
    with served(tmp_path / "lowered", max_timeout=900.0) as api:
        r = submit(api, 1000)
        assert r.status_code == 422 and "allows, 900 s" in r.json()["error"]["message"], r.text
        assert api.worker.requests == []
