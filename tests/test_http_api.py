"""The local HTTP API over a real uvicorn server on 127.0.0.1, with a scripted Worker.

The Worker here is ``ScriptedWorker`` (tests/test_http_api_helpers.py), a real in-process
implementation of the documented interface, so queueing, ordering, limits and health
can be driven deterministically. tests/e2e/test_http_api_e2e.py runs the same API over
the real Worker and ComfyUI.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from test_http_api_helpers import ScriptedWorker, running_api, wait_for, wait_status

from comfy_worker import errors
from comfy_worker.entrypoints.http_api import (
    DISCONNECT_POLL_SECONDS,
    content_length,
    response_for,
)
from comfy_worker.entrypoints.job_queue import ApiService, Job, JobQueue
from comfy_worker.errors import ComfyStartError, JobInputInvalid, ShuttingDown
from comfy_worker.job import JobResult
from comfy_worker.job.request import job_input_of

# --- pure parts -------------------------------------------------------------------------


def test_unwrap_accepts_wrapped_and_bare_job_inputs() -> None:
    assert job_input_of({"input": {"workflow": {"1": {}}}}) == {"workflow": {"1": {}}}
    assert job_input_of({"workflow": {"1": {}}}) == {"workflow": {"1": {}}}


def test_unwrap_decodes_an_input_or_a_body_given_as_a_json_string() -> None:
    assert job_input_of({"input": '{"workflow": {}}'}) == {"workflow": {}}
    assert job_input_of('{"input": {"workflow": {}}}') == {"workflow": {}}
    assert job_input_of('{"workflow": {}}') == {"workflow": {}}


@pytest.mark.parametrize("body", [[1, 2], {"input": [1]}, {"input": 3}, "[1]", "3"])
def test_unwrap_rejects_non_objects_naming_the_type(body: object) -> None:
    with pytest.raises(JobInputInvalid, match="not an object"):
        job_input_of(body, where="request body")


def test_unwrap_rejects_a_string_that_is_not_json() -> None:
    with pytest.raises(JobInputInvalid, match="request body is a string but not valid JSON"):
        job_input_of("x", where="request body")


@pytest.mark.parametrize(("error", "status"), [
    (errors.JobInputInvalid, 422),
    (errors.WorkflowInvalid, 422),
    (errors.WorkflowExecutionError, 500),
    (errors.JobTimeout, 504),
    (errors.JobCancelled, 503),
    (errors.ComfyDied, 503),
    (errors.ComfyError, 503),
    (errors.WorkerStarting, 503),
    (errors.ModelNotFound, 502),
    (errors.DiskFull, 507),
    (errors.OutputTooLarge, 500),
    (errors.InternalError, 500),
])
def test_each_error_carries_its_http_status_and_serialises_itself(
        error: type[errors.WorkerError], status: int) -> None:
    err = error("it broke", hint="fix it", details=[{"node_id": "3"}])
    assert response_for(err) == (status, {"error": "it broke", "details": [{"node_id": "3"}],
                                          "reference": error.reference, "hint": "fix it"})


def test_a_result_is_200_with_its_own_json() -> None:
    from comfy_worker.job import JobResult

    assert response_for(JobResult(timings={"total_ms": 1.25})) == (
        200, {"images": [], "videos": [], "timings": {"total_ms": 1.2}})


def test_content_length_header_parsing() -> None:
    assert content_length([(b"host", b"x"), (b"Content-Length", b"12")]) == 12
    assert content_length([(b"content-length", b"nope")]) is None
    assert content_length([]) is None


# --- health and start-up ---------------------------------------------------------------


def test_health_is_503_with_the_phase_while_starting_then_200() -> None:
    worker = ScriptedWorker(started=False)
    with running_api(worker) as api:
        wait_for(lambda: worker.phase == "syncing models")
        r = requests.get(f"{api.url}/health", timeout=5)
        assert r.status_code == 503
        assert r.json()["reason"] == "syncing models"
        assert r.json()["phase"] == "starting"
        job = requests.post(f"{api.url}/generate/sync", json={"label": 1}, timeout=5)
        assert job.status_code == 503
        assert job.json()["error"] == "not ready: syncing models"
        assert job.json()["reference"] == "worker-starting"
        assert job.headers["Retry-After"] == "10"
        worker.start_gate.set()
        wait_for(lambda: requests.get(f"{api.url}/health", timeout=5).status_code == 200)
        assert requests.get(f"{api.url}/health", timeout=5).json()["reason"] == "ready"
    assert api.result == [0]
    assert worker.stopped


def test_fatal_start_up_failure_keeps_503_with_reason_and_exits_1() -> None:
    error = ComfyStartError("ComfyUI exited with code 1 during start-up",
                            hint="check COMFYUI_DIR")
    worker = ScriptedWorker(start_error=error)
    with running_api(worker) as api:
        wait_for(lambda: api.service.failed)
        r = requests.get(f"{api.url}/health", timeout=5)
        assert r.status_code == 503
        reason = r.json()["reason"]
        assert reason.startswith("start-up failed: ComfyUI exited with code 1")
        assert "hint: check COMFYUI_DIR" in reason
        job = requests.post(f"{api.url}/generate", json={"label": 1}, timeout=5)
        assert job.status_code == 503
        assert job.json()["error"] == f"not ready: {reason}"
        assert job.json()["reference"] == "worker-start-failed"
        assert r.json()["phase"] == "failed"
    assert api.result == [1]


# --- sync jobs ----------------------------------------------------------------------


def test_sync_accepts_wrapped_and_bare_input_and_returns_the_output() -> None:
    with running_api(ScriptedWorker()) as api:
        wait_for(lambda: api.service.health().ready)
        wrapped = requests.post(f"{api.url}/generate/sync",
                                json={"input": {"label": "w", "workflow": {}}}, timeout=10)
        bare = requests.post(f"{api.url}/generate/sync", json={"label": "b"}, timeout=10)
    assert wrapped.status_code == 200
    assert wrapped.json()["echo"] == {"label": "w", "workflow": {}}
    assert wrapped.json()["job_id"] == wrapped.headers["X-Job-Id"]
    assert bare.status_code == 200
    assert bare.json()["echo"] == {"label": "b"}


@pytest.mark.parametrize(("error", "status"), [
    ("WorkflowInvalid", 422), ("WorkflowExecutionError", 500), ("JobTimeout", 504),
    ("GatedModel", 502),
])
def test_sync_job_errors_map_to_status_with_error_and_details(error: str,
                                                               status: int) -> None:
    with running_api(ScriptedWorker()) as api:
        wait_for(lambda: api.service.health().ready)
        r = requests.post(f"{api.url}/generate/sync", json={"fail": error}, timeout=10)
    assert r.status_code == status
    assert r.json()["error"] == f"scripted failure {error}"
    assert r.json()["details"] == [{"node": "3"}]
    assert r.json()["reference"] == getattr(errors, error).reference


def test_a_job_that_raises_is_a_500_and_the_queue_keeps_going() -> None:
    with running_api(ScriptedWorker()) as api:
        wait_for(lambda: api.service.health().ready)
        r = requests.post(f"{api.url}/generate/sync", json={"raise": "boom"}, timeout=10)
        after = requests.post(f"{api.url}/generate/sync", json={"label": 2}, timeout=10)
    assert r.status_code == 500
    assert r.json()["error"] == "internal error: RuntimeError: boom"
    assert r.json()["reference"] == "internal-error"
    assert r.json()["details"] == []
    assert after.status_code == 200


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"{not json", 400, "request body is not valid JSON"),
    (b"[1, 2]", 422, "request body is a JSON array, not an object"),
    (b'{"input": 3}', 422, "'input' is a JSON number, not an object"),
    (b'{"input": null}', 422, "'input' is a JSON null, not an object"),
])
def test_malformed_bodies_are_refused_with_error_and_details(data: bytes, status: int,
                                                             message: str) -> None:
    worker = ScriptedWorker()
    with running_api(worker) as api:
        wait_for(lambda: api.service.health().ready)
        r = requests.post(f"{api.url}/generate/sync", data=data,
                          headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status
    assert r.json()["error"].startswith(message)
    assert isinstance(r.json()["details"], list)
    if status == 422:
        assert r.json()["reference"] == "job-input-invalid"
        assert r.json()["hint"].startswith("send {")
    else:
        assert r.json()["reference"] == "request-invalid"
    assert worker.calls == []


# --- async jobs ---------------------------------------------------------------------


def test_async_job_goes_queued_running_completed_with_output() -> None:
    worker = ScriptedWorker()
    worker.job_gate.clear()
    with running_api(worker) as api:
        wait_for(lambda: api.service.health().ready)
        first = requests.post(f"{api.url}/generate", json={"label": 1, "wait_gate": True},
                              timeout=5).json()
        second = requests.post(f"{api.url}/generate", json={"input": {"label": 2}},
                               timeout=5)
        assert second.status_code == 202
        second_id = second.json()["id"]
        assert second.json()["status"] == "queued"
        running = wait_status(api.url, first["id"], {"running"})
        assert running["progress"] == {"node": "1", "value": 1, "max": 2}
        assert requests.get(f"{api.url}/status/{second_id}", timeout=5).json()["status"] \
            == "queued"
        assert requests.get(f"{api.url}/health", timeout=5).json()["queued"] == 1
        worker.job_gate.set()
        done = wait_status(api.url, second_id, {"completed", "failed"})
    assert done["status"] == "completed"
    assert done["output"]["echo"] == {"label": 2}
    assert done["started"] >= done["created"]


def test_async_failed_job_reports_failed_with_the_error_output() -> None:
    with running_api(ScriptedWorker()) as api:
        wait_for(lambda: api.service.health().ready)
        job_id = requests.post(f"{api.url}/generate", json={"fail": "WorkflowInvalid"},
                               timeout=5).json()["id"]
        body = wait_status(api.url, job_id, {"completed", "failed"})
    assert body["status"] == "failed"
    assert body["output"]["error"] == "scripted failure WorkflowInvalid"
    assert body["output"]["reference"] == "workflow-invalid"


def test_unknown_job_id_is_404() -> None:
    with running_api(ScriptedWorker()) as api:
        r = requests.get(f"{api.url}/status/nope", timeout=5)
    assert r.status_code == 404
    assert r.json()["error"] == "unknown job id 'nope'"
    assert r.json()["reference"] == "job-not-found"


def test_finished_results_are_evicted_oldest_first_by_count() -> None:
    with running_api(ScriptedWorker(), max_finished=3) as api:
        wait_for(lambda: api.service.health().ready)
        ids = [requests.post(f"{api.url}/generate", json={"label": i}, timeout=5).json()["id"]
               for i in range(6)]
        wait_status(api.url, ids[-1], {"completed"})
        codes = [requests.get(f"{api.url}/status/{i}", timeout=5).status_code for i in ids]
    assert codes == [404, 404, 404, 200, 200, 200]


def test_finished_results_are_evicted_by_total_size_keeping_the_newest() -> None:
    with running_api(ScriptedWorker(), max_finished_bytes=50_000) as api:
        wait_for(lambda: api.service.health().ready)
        ids = [requests.post(f"{api.url}/generate", json={"label": i, "blob": 20_000},
                             timeout=5).json()["id"] for i in range(5)]
        wait_status(api.url, ids[-1], {"completed"})
        codes = [requests.get(f"{api.url}/status/{i}", timeout=5).status_code for i in ids]
    assert codes == [404, 404, 404, 200, 200]


def test_sync_results_are_not_kept_after_they_are_returned() -> None:
    with running_api(ScriptedWorker()) as api:
        wait_for(lambda: api.service.health().ready)
        r = requests.post(f"{api.url}/generate/sync", json={"label": 1}, timeout=10)
        assert requests.get(f"{api.url}/status/{r.headers['X-Job-Id']}",
                            timeout=5).status_code == 404


def test_queue_full_is_429() -> None:
    worker = ScriptedWorker()
    worker.job_gate.clear()
    with running_api(worker, max_queued=2) as api:
        wait_for(lambda: api.service.health().ready)
        requests.post(f"{api.url}/generate", json={"label": 0, "wait_gate": True}, timeout=5)
        wait_for(lambda: worker.running == 1)
        codes = [requests.post(f"{api.url}/generate", json={"label": i}, timeout=5).status_code
                 for i in (1, 2, 3)]
    assert codes == [202, 202, 429]


def test_queue_full_answer_names_the_error_and_says_when_to_retry() -> None:
    worker = ScriptedWorker()
    worker.job_gate.clear()
    with running_api(worker, max_queued=1) as api:
        wait_for(lambda: api.service.health().ready)
        requests.post(f"{api.url}/generate", json={"label": 0, "wait_gate": True}, timeout=5)
        wait_for(lambda: worker.running == 1)
        requests.post(f"{api.url}/generate", json={"label": 1}, timeout=5)
        full = requests.post(f"{api.url}/generate", json={"label": 2}, timeout=5)
    assert full.status_code == 429
    assert full.json()["reference"] == "queue-full"
    assert full.headers["Retry-After"] == "10"


# --- ordering and concurrency ------------------------------------------------------------


def test_jobs_run_one_at_a_time_in_arrival_order() -> None:
    worker = ScriptedWorker()
    worker.job_gate.clear()
    with running_api(worker) as api:
        wait_for(lambda: api.service.health().ready)
        ids = [requests.post(f"{api.url}/generate",
                             json={"label": i, "wait_gate": i == 0}, timeout=5).json()["id"]
               for i in range(20)]
        worker.job_gate.set()
        wait_status(api.url, ids[-1], {"completed"})
    assert worker.calls == list(range(20))
    assert worker.max_running == 1


def test_many_concurrent_clients_lose_no_job_and_never_overlap() -> None:
    worker = ScriptedWorker()
    clients = 64

    def client(i: int) -> tuple[int, dict]:
        payload = {"input": {"label": i, "sleep": 0.005}}
        if i % 2:
            r = requests.post(f"{api.url}/generate/sync", json=payload, timeout=60)
            assert r.status_code == 200, r.text
            return i, r.json()
        job_id = requests.post(f"{api.url}/generate", json=payload, timeout=60).json()["id"]
        return i, wait_status(api.url, job_id, {"completed", "failed"}, timeout=60)["output"]

    with running_api(worker) as api:
        wait_for(lambda: api.service.health().ready)
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, range(clients)))
    assert all(output["echo"]["label"] == i for i, output in results)
    assert sorted(worker.calls) == list(range(clients))
    assert worker.max_running == 1


def _post_then_hang_up(port: int, payload: dict, *, after: float | None = None,
                       until: object = None) -> None:
    """POST /generate/sync on a raw socket, then close it without reading the answer."""
    body = json.dumps(payload).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /generate/sync HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if until is not None:
            wait_for(until)  # type: ignore[arg-type]
        if after is not None:
            time.sleep(after)


def test_sync_client_hanging_up_while_its_job_runs_cancels_the_job() -> None:
    worker = ScriptedWorker()
    worker.job_gate.clear()
    with running_api(worker) as api:
        wait_for(lambda: api.service.health().ready)
        _post_then_hang_up(api.port, {"label": "gone", "wait_gate": True},
                           until=lambda: worker.running == 1)
        wait_for(lambda: worker.cancelled == ["gone"])
        after = requests.post(f"{api.url}/generate/sync", json={"label": "next"}, timeout=10)
    assert after.status_code == 200
    assert worker.calls == ["gone", "next"]


def test_sync_client_hanging_up_while_queued_means_its_job_never_runs() -> None:
    worker = ScriptedWorker()
    worker.job_gate.clear()
    with running_api(worker) as api:
        wait_for(lambda: api.service.health().ready)
        first = requests.post(f"{api.url}/generate", json={"label": 0, "wait_gate": True},
                              timeout=5).json()["id"]
        wait_for(lambda: worker.running == 1)
        _post_then_hang_up(api.port, {"label": "gone"},
                           until=lambda: api.service.queue.waiting == 1)
        time.sleep(4 * DISCONNECT_POLL_SECONDS)  # the server polls for the hang-up
        worker.job_gate.set()
        wait_status(api.url, first, {"completed"})
        last = requests.post(f"{api.url}/generate/sync", json={"label": 2}, timeout=10)
    assert last.status_code == 200
    assert worker.calls == [0, 2]


# --- request size limits -------------------------------------------------------------


def _raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
        return data


def test_declared_oversize_body_is_413_before_any_body_byte_is_sent() -> None:
    worker = ScriptedWorker()
    with running_api(worker, max_request_bytes=1000) as api:
        head = (b"POST /generate/sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000000\r\n\r\n")
        response = _raw_request(api.port, head, [])
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == ("request body too large: 5000000 bytes sent, "
                             "the limit is 1000 bytes")
    assert body["details"][0]["setting"] == "COMFY_WORKER_MAX_REQUEST_BYTES"
    assert worker.calls == []


def test_streamed_chunked_body_over_the_limit_is_413() -> None:
    worker = ScriptedWorker()
    with running_api(worker, max_request_bytes=1000) as api:
        head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 600
        chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 2
        response = _raw_request(api.port, head, chunks)
    assert response.startswith(b"HTTP/1.1 413")
    assert b"the limit is 1000 bytes" in response
    assert worker.calls == []


def test_body_just_under_the_limit_is_accepted() -> None:
    worker = ScriptedWorker()
    with running_api(worker, max_request_bytes=1000) as api:
        wait_for(lambda: api.service.health().ready)
        payload = json.dumps({"label": "p" * 900}).encode()
        assert len(payload) <= 1000
        r = requests.post(f"{api.url}/generate/sync", data=payload, timeout=10)
        big = requests.post(f"{api.url}/generate/sync", data=payload + b" " * 200, timeout=10)
    assert r.status_code == 200
    assert big.status_code == 413


# --- docs -----------------------------------------------------------------------------


def test_openapi_documents_every_endpoint_and_docs_page_is_served() -> None:
    with running_api(ScriptedWorker()) as api:
        spec = requests.get(f"{api.url}/openapi.json", timeout=5).json()
        docs = requests.get(f"{api.url}/docs", timeout=5)
    assert set(spec["paths"]) == {"/generate/sync", "/generate", "/status/{job_id}", "/health"}
    assert "requestBody" in spec["paths"]["/generate/sync"]["post"]
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


class GatedRunner:
    """A queue's job runner that records each job it starts and holds it until ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ran: list[str] = []

    def __call__(self, job: Job) -> JobResult:
        self.ran.append(job.id)
        self.gate.wait(10)
        return JobResult()


@pytest.fixture
def gated() -> Iterator[GatedRunner]:
    runner = GatedRunner()
    yield runner
    runner.gate.set()  # a failed test never leaves a job thread waiting


def test_stopping_the_queue_fails_waiting_jobs_instead_of_dropping_them(
        gated: GatedRunner) -> None:
    q = JobQueue(gated)
    q.start()
    first, waiting = q.submit({}), q.submit({})
    wait_for(lambda: first.status == "running")
    stopper = threading.Thread(target=q.stop)
    stopper.start()

    def refuses_new_jobs() -> bool:
        try:
            q.submit({})
        except ShuttingDown:
            return True
        return False

    wait_for(refuses_new_jobs)
    gated.gate.set()
    stopper.join(10)
    assert first.future.result(5) == JobResult()
    shut = waiting.future.result(5)
    assert isinstance(shut, ShuttingDown)
    assert shut.to_json()["error"] == "the server is shutting down"
    assert waiting.status == "failed"
    assert gated.ran == [first.id]


def test_queue_positions_count_only_jobs_that_will_run_and_a_waiting_cancel_is_final(
        gated: GatedRunner) -> None:
    q = JobQueue(gated)
    q.start()
    try:
        first = q.submit({}, job_id="first")
        wait_for(lambda: first.status == "running")
        a, b, c = (q.submit({}, job_id=name) for name in "abc")
        assert [q.position(j) for j in (first, a, b, c)] == [None, 1, 2, 3]
        assert q.cancel(b) is True  # waiting: it will never start
        assert [q.position(j) for j in (a, b, c)] == [1, None, 2]
        assert q.cancel(first) is False  # running: interrupted instead
        assert first.cancel.is_set()
        with pytest.raises(ValueError, match="already queued"):
            q.submit({}, job_id="a")
        gated.gate.set()
        for job in (first, a, b, c):
            job.future.result(5)
        assert gated.ran == ["first", "a", "c"]
        assert q.position(a) is None and q.cancel(a) is False
    finally:
        gated.gate.set()
        q.stop(5)


def test_a_job_input_made_by_a_function_is_made_when_the_job_starts_and_then_dropped(
        ) -> None:
    worker = ScriptedWorker()
    service = ApiService(worker)
    service.start_background()
    made: list[str] = []

    def body() -> dict[str, object]:
        made.append("now")
        return {"label": "lazy", "comfy_org_api_key": "comfyui-SECRET"}

    try:
        job = service.queue.submit(body, keep=True)
        assert "comfyui-SECRET" not in repr(job)
        outcome = job.future.result(10)
        assert made == ["now"] and worker.calls == ["lazy"]
        assert outcome.to_json()["echo"]["label"] == "lazy"
        assert job.input is None  # the body (and the key in it) is not kept
    finally:
        service.shutdown(5)


# --- API token ------------------------------------------------------------------------

TOKEN = "s3cret-token-value"
ROUTES = [("POST", "/generate/sync"), ("POST", "/generate"), ("GET", "/status/x"),
          ("GET", "/docs"), ("GET", "/openapi.json")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_with_a_token_set_every_route_but_health_refuses_a_missing_or_wrong_token(
        method: str, path: str, caplog: pytest.LogCaptureFixture) -> None:
    worker = ScriptedWorker()
    with running_api(worker, api_token=TOKEN) as api:
        missing = requests.request(method, api.url + path, json={"label": 1}, timeout=5)
        wrong = requests.request(method, api.url + path, json={"label": 1}, timeout=5,
                                 headers={"Authorization": "Bearer not-it"})
        basic = requests.request(method, api.url + path, json={"label": 1}, timeout=5,
                                 headers={"Authorization": f"Basic {TOKEN}"})
    for r in (missing, wrong, basic):
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="comfy-worker"')
        assert r.json()["reference"] == "unauthorized"
        assert "Authorization: Bearer" in r.json()["hint"]
        assert TOKEN not in r.text
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert r.json()["error"] in ("missing API token", "wrong API token")
    assert worker.calls == []
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/generate/sync", 200), ("POST", "/generate", 202), ("GET", "/status/x", 404),
    ("GET", "/docs", 200), ("GET", "/openapi.json", 200)])
def test_the_right_token_is_accepted_on_every_route(method: str, path: str,
                                                   status: int) -> None:
    with running_api(ScriptedWorker(), api_token=TOKEN) as api:
        wait_for(lambda: api.service.health().ready)
        r = requests.request(method, api.url + path, json={"label": 1}, timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        lower = requests.request(method, api.url + path, json={"label": 1}, timeout=10,
                                 headers={"authorization": f"bearer {TOKEN}"})
    assert r.status_code == status
    assert lower.status_code == status


def test_health_needs_no_token() -> None:
    with running_api(ScriptedWorker(), api_token=TOKEN) as api:
        wait_for(lambda: api.service.health().ready)
        assert requests.get(f"{api.url}/health", timeout=5).status_code == 200


def test_without_a_token_setting_no_route_asks_for_one() -> None:
    with running_api(ScriptedWorker()) as api:
        wait_for(lambda: api.service.health().ready)
        r = requests.post(f"{api.url}/generate/sync", json={"label": 1}, timeout=10)
    assert r.status_code == 200


def test_token_comparison_is_exact() -> None:
    from comfy_worker.entrypoints.http_api import bearer_token, token_matches

    assert bearer_token([(b"Authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([(b"authorization", b"bearer  abc ")]) == b"abc"
    assert bearer_token([(b"Authorization", b"Basic abc")]) is None
    assert bearer_token([(b"Authorization", b"Bearer ")]) is None
    assert bearer_token([]) is None
    assert token_matches(b"abc", b"abc")
    assert not token_matches(b"abcd", b"abc") and not token_matches(b"ab", b"abc")
    assert not token_matches(None, b"abc") and not token_matches(b"", b"")


# --- listening where strangers can reach it (issue 16) ----------------------------------


@pytest.mark.parametrize(("host", "token", "warns"), [
    ("0.0.0.0", None, True), ("::", None, True), ("10.1.2.3", None, True),
    ("worker.example", None, True), ("0.0.0.0", "t0ken", False),
    ("127.0.0.1", None, False), ("127.0.0.53", None, False), ("::1", None, False),
    ("[::1]", None, False), ("localhost", None, False),
])
def test_serve_warns_when_it_listens_beyond_loopback_without_a_token(
        host: str, token: str | None, warns: bool) -> None:
    from comfy_worker.config import Secret
    from comfy_worker.entrypoints.http_api import open_api_warning

    warning = open_api_warning(host, 8000, Secret(token) if token else None)
    assert (warning is not None) is warns
    if warning is not None:
        assert "COMFY_WORKER_API_TOKEN is unset" in warning and f"{host}:8000" in warning


@pytest.mark.parametrize(("host", "token", "warns"), [
    ("0.0.0.0", None, True), ("0.0.0.0", "s3cret-token", False), ("127.0.0.1", None, False),
])
def test_the_serve_command_logs_the_warning_at_start(tmp_path: Path, host: str,
                                                     token: str | None, warns: bool) -> None:
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFY_WORKER_API_TOKEN", "COMFYUI_DIR")}
    env |= {"COMFY_WORKER_LOCK": str(tmp_path / "none.json"),
            "COMFY_WORKER_MODELS_DIR": str(tmp_path / "models")}
    if token:
        env["COMFY_WORKER_API_TOKEN"] = token
    proc = subprocess.Popen([sys.executable, "-m", "comfy_worker.cli", "serve", "--host", host,
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    def failed_start() -> bool:  # no ComfyUI here: start-up fails, the server stays up
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()[
                "phase"] == "failed"
        except requests.ConnectionError:
            return False

    try:
        wait_for(failed_start)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "HTTP API listening" in out, out
    lines = [line for line in out.splitlines() if "not on loopback" in line]
    assert bool(lines) is warns, out
    if warns:
        assert " WARNING " in lines[0] and "COMFY_WORKER_API_TOKEN" in lines[0]
    if token:
        assert token not in out
