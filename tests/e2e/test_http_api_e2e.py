"""`comfy-worker serve` end to end: the real CLI, Worker, model sync and a CPU ComfyUI.

One server process for the module (its own ComfyUI, started through the API's background
start-up), reusing tests/e2e/conftest.py's ComfyUI install and locked model.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import (
    empty_image_workflow,
    png_size,
    serving,
    slow_upscale_workflow,
    upscale_workflow,
)

pytestmark = pytest.mark.comfyui



@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    health_seen: list[tuple[int, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def served(comfy_install: ComfyInstall, model_env: ModelEnv,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = e2e_env(comfy_install, model_env)
    env["COMFY_WORKER_WORK_DIR"] = str(tmp_path_factory.mktemp("serve-work"))
    env["COMFY_WORKER_URL_ALLOW"] = "127.0.0.1/32"  # the image server of a test is local
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    health_seen: list[tuple[int, str]] = []

    def seen(answer: requests.Response) -> None:
        health_seen.append((answer.status_code, answer.json()["reason"]))
        assert not answer.json()["reason"].startswith("start-up failed"), \
            log_path.read_text()[-3000:]

    with serving(env, log_path, interval=0.05, seen=seen) as (url, proc):
        yield Served(url, proc, log_path, health_seen)


def _png(item: dict[str, Any]) -> tuple[int, int]:
    return png_size(base64.b64decode(item["data"]))


def test_health_answers_503_with_the_phase_during_start_up_then_200(served: Served) -> None:
    first_status, first_reason = served.health_seen[0]
    assert first_status == 503
    assert first_reason in {"not started", "syncing models and starting ComfyUI",
                            "syncing models", "starting ComfyUI"}
    assert served.health_seen[-1] == (200, "ready")


@pytest.mark.compat
def test_health_shows_the_comfyui_version_it_runs(served: Served,
                                                  comfy_install: ComfyInstall) -> None:
    body = requests.get(f"{served.url}/health", timeout=5).json()
    text = (comfy_install.comfyui_dir / "comfyui_version.py").read_text(encoding="utf-8")
    expected = text.split('__version__ = "')[1].split('"')[0]
    assert body["comfyui"]["version"] == expected
    # v0.33.0 cancels one prompt by id; v0.3.75 has no such route (the fallback runs).
    known = {"0.33.0": True, "0.3.75": False}
    if expected in known:
        assert body["comfyui"]["cancel_by_id"] is known[expected]


def test_sync_job_wrapped_and_bare_return_pngs(served: Served) -> None:
    wrapped = requests.post(f"{served.url}/generate/sync",
                            json={"input": {"workflow": empty_image_workflow(32, 16)}},
                            timeout=120)
    bare = requests.post(f"{served.url}/generate/sync",
                         json={"workflow": empty_image_workflow(8, 8)}, timeout=120)
    assert wrapped.status_code == 200, wrapped.text
    assert [_png(i) for i in wrapped.json()["images"]] == [(32, 16)]
    assert bare.status_code == 200, bare.text
    assert [_png(i) for i in bare.json()["images"]] == [(8, 8)]


def test_async_job_with_the_locked_model_completes_with_the_upscaled_png(
        served: Served, model_env: ModelEnv) -> None:
    job = requests.post(f"{served.url}/generate",
                        json={"input": {"workflow": upscale_workflow(model_env.model_name,
                                                                     24, 20)}}, timeout=30)
    assert job.status_code == 202
    job_id = job.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        body = requests.get(f"{served.url}/status/{job_id}", timeout=10).json()
        if body["status"] in {"completed", "failed"}:
            break
        assert body["status"] in {"queued", "running"}
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert body["status"] == "completed", body
    assert [_png(i) for i in body["output"]["images"]] == [(48, 40)]


def test_invalid_workflow_is_422_with_error_and_details(served: Served) -> None:
    wf = empty_image_workflow()
    wf["2"]["class_type"] = "NoSuchNode"
    r = requests.post(f"{served.url}/generate/sync", json={"workflow": wf}, timeout=60)
    assert r.status_code == 422, r.text
    assert "NoSuchNode" in r.json()["error"] + str(r.json()["details"])
    missing = requests.post(f"{served.url}/generate/sync",
                            json={"workflow": upscale_workflow("absent.safetensors", 8, 8)},
                            timeout=60)
    assert missing.status_code == 422, missing.text
    assert "absent.safetensors" in missing.text


def test_concurrent_clients_all_get_their_own_image(served: Served) -> None:
    sizes = [(8 + 2 * i, 8) for i in range(6)]

    def client(size: tuple[int, int]) -> tuple[int, int]:
        r = requests.post(f"{served.url}/generate/sync",
                          json={"workflow": empty_image_workflow(*size, prefix="cc")},
                          timeout=180)
        assert r.status_code == 200, r.text
        return _png(r.json()["images"][0])

    with ThreadPoolExecutor(len(sizes)) as pool:
        assert list(pool.map(client, sizes)) == sizes


def _wait_log(served: Served, pattern: str, *, after: int, timeout: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, served.log_path.read_text()[after:])
        if match:
            return match
        assert time.monotonic() < deadline, f"no {pattern!r} in the server log"
        time.sleep(0.1)


def test_sync_client_hanging_up_interrupts_its_running_comfyui_job(
        served: Served, model_env: ModelEnv) -> None:
    wf = slow_upscale_workflow(model_env.model_name, "hangup")
    body = json.dumps({"workflow": wf}).encode()
    start = len(served.log_path.read_text())
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /generate/sync HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        queued = _wait_log(served, r"job (\w+): queued prompt", after=start)
    job_id = queued.group(1)
    _wait_log(served, rf"job {job_id}: the client disconnected; cancelling", after=start)
    _wait_log(served, rf"job {job_id} failed: job cancelled", after=start)
    after = requests.post(f"{served.url}/generate/sync",
                          json={"workflow": empty_image_workflow(8, 8)}, timeout=120)
    assert after.status_code == 200, after.text


def _children(pid: int) -> set[int]:
    """Direct child pids, from /proc (no psutil in the test dependencies)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_a_string_input_with_an_image_by_url_runs_as_a_real_client_sends_it(
        served: Served) -> None:
    import http.server
    import threading

    from e2e.helpers import png_bytes

    image = png_bytes(20, 12)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(image)))
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/photo.png?X-Amz-Signature=abc"
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "from-url.png"}},
                "2": {"class_type": "SaveImage",
                      "inputs": {"images": ["1", 0], "filename_prefix": "url"}}}
    job_input = {"workflow": workflow, "images": [{"name": "from-url.png", "url": url}]}
    try:
        r = requests.post(f"{served.url}/generate/sync",
                          json={"input": json.dumps(job_input)}, timeout=120)
        gone = requests.post(f"{served.url}/generate/sync", json={"input": {
            **job_input, "images": [{"name": "from-url.png", "url": url.replace(
                str(server.server_address[1]), "9")}]}}, timeout=120)
    finally:
        server.shutdown()
    assert r.status_code == 200, r.text
    assert [_png(i) for i in r.json()["images"]] == [(20, 12)]
    assert r.json()["timings"]["inputs_ms"] > 0
    assert gone.status_code == 422, gone.text
    assert gone.json()["reference"] == "input-fetch-failed"
    assert "abc" not in gone.text and "from-url.png" in gone.json()["error"]


def test_sigterm_stops_the_server_and_comfyui_with_exit_0(served: Served) -> None:
    comfyui = _children(served.proc.pid)
    assert comfyui, "ComfyUI should run as a child of the server"
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0
    assert not [pid for pid in comfyui if Path(f"/proc/{pid}").exists()
                and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{served.url}/health", timeout=2)
