"""`comfy-worker vast` end to end: the real CLI, Worker, model sync, CPU ComfyUI and the
real vastai PyWorker from its own virtualenv, with a local stand-in for the autoscaler
(tests/test_vast_pyworker.py's ``Autoscaler``: serves its public key, records reports).
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time

import pytest
import requests
from test_vast_pyworker import Autoscaler, free_port

from comfy_worker.entrypoints.vast import FATAL_LINE, READY_LINE
from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import png_size, upscale_workflow

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


def test_vast_command_syncs_boots_benchmarks_and_serves_signed_jobs(
        vast_python: str, comfy_install: ComfyInstall,
        model_env: ModelEnv, tmp_path_factory: pytest.TempPathFactory) -> None:
    autoscaler = Autoscaler()
    worker_port, api_port = free_port(), free_port()
    state = tmp_path_factory.mktemp("vast-state")
    env = e2e_env(comfy_install, model_env)
    env.update({
        "WORKER_PORT": str(worker_port), "WORKER_HTTP_PORT": str(free_port()),
        "REPORT_ADDR": autoscaler.url, "CONTAINER_ID": "77", "PUBLIC_IPADDR": "127.0.0.1",
        f"VAST_TCP_PORT_{worker_port}": str(worker_port), "MASTER_TOKEN": "t",
        "USE_SSL": "false",
        "COMFY_WORKER_VAST_PYTHON": vast_python,
        "COMFY_WORKER_VAST_MODEL_LOG": str(state / "model.log"),
        "COMFY_WORKER_VAST_BENCHMARK_RUNS": "1",
        "COMFY_WORKER_PORT": str(api_port),
        "COMFY_WORKER_WORK_DIR": str(tmp_path_factory.mktemp("vast-work")),
    })
    out = state / "out.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "comfy_worker.cli", "-v", "vast"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    model_log = state / "model.log"
    try:
        t0 = time.monotonic()
        while not autoscaler.loaded():
            assert proc.poll() is None, out.read_text()[-3000:]
            lines = model_log.read_text() if model_log.exists() else ""
            assert FATAL_LINE not in lines, out.read_text()[-3000:]
            assert time.monotonic() - t0 < 300, out.read_text()[-3000:]
            time.sleep(0.2)
        loaded_after = time.monotonic() - t0
        lines = model_log.read_text().splitlines()
        assert lines[0].startswith("comfy-worker: starting")
        assert lines[-1] == READY_LINE
        # The API is bound to 127.0.0.1 and healthy; the PyWorker measured a throughput.
        assert requests.get(f"http://127.0.0.1:{api_port}/health", timeout=5).status_code == 200
        assert max(st["max_perf"] for st in autoscaler.statuses) > 0

        url = "https://run.vast.ai/route/e2e"
        auth = {"cost": "100", "endpoint": "e2e", "reqnum": 1, "request_idx": 1, "url": url,
                "signature": autoscaler.sign(url)}
        job = {"input": {"workflow": upscale_workflow(model_env.model_name, 20, 12)}}
        r = requests.post(f"http://127.0.0.1:{worker_port}/generate/sync",
                          json={"auth_data": auth, "payload": job}, timeout=180)
        assert r.status_code == 200, r.text
        image = base64.b64decode(r.json()["images"][0]["data"])
        assert png_size(image) == (40, 24)
        unsigned = requests.post(f"http://127.0.0.1:{worker_port}/generate/sync",
                                 json={"auth_data": {**auth, "signature": "AAAA"},
                                       "payload": job}, timeout=60)
        assert unsigned.status_code == 401
        print(f"vast e2e: loaded (benchmarked) after {loaded_after:.1f} s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        autoscaler.server.shutdown()
    assert code == 0, out.read_text()[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{worker_port}/", timeout=2)
