"""Worker start-up: model sync and ComfyUI boot run at the same time; either failing
fails the start. Real sync against a local HF server, and a stand-in ComfyUI (a real
process serving /system_stats and /object_info) so these run without a real ComfyUI."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from support import HFServer, safetensors_bytes

from comfy_worker.config import Settings, load_settings
from comfy_worker.errors import (
    ComfyStartError,
    ConfigError,
    JobInputInvalid,
    ModelHashMismatch,
    SyncError,
    WarmupFailed,
    WorkerStartFailed,
    WorkerStarting,
)
from comfy_worker.readiness import Phase
from comfy_worker.worker import Worker

STAND_IN_MAIN = '''
import argparse, http.server, json, sys, time
p = argparse.ArgumentParser()
p.add_argument("--port", type=int)
p.add_argument("--extra-model-paths-config")
args, _ = p.parse_known_args()
with open(__file__ + ".started", "w") as f:
    f.write(repr(time.time()))
print("extra model paths:", args.extra_model_paths_config, flush=True)
time.sleep(0.5)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({} if self.path == "/object_info" else {"system": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", args.port), H).serve_forever()
'''


def stand_in_comfyui(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text(STAND_IN_MAIN)
    return root


def write_lock(path: Path, hub: HFServer, data: bytes, *, sha256: str | None = None) -> None:
    served = hub.add_file("acme/models", "m.safetensors", data)
    path.write_text(json.dumps({"version": 1, "models": [{
        "path": "checkpoints/m.safetensors",
        "source": {"type": "huggingface", "repo": "acme/models", "revision": served.commit,
                   "file": "m.safetensors"},
        "sha256": sha256 or hashlib.sha256(data).hexdigest(), "size": len(data)}]}))


def settings(tmp_path: Path, hub: HFServer, comfyui_dir: Path | None,
             sync_mode: str = "all") -> Settings:
    return load_settings({"HF_ENDPOINT": hub.endpoint}, lock_path=tmp_path / "lock.json",
                         models_dir=tmp_path / "models", work_dir=tmp_path / "work",
                         comfyui_dir=comfyui_dir, comfyui_python=sys.executable,
                         comfyui_cpu=True, boot_timeout=30.0, sync_mode=sync_mode)


def test_on_demand_the_worker_is_ready_at_boot_and_syncs_in_the_background(
        tmp_path: Path) -> None:
    data = safetensors_bytes(1_000_000)  # 4 MB at 1 MB/s: still syncing when ComfyUI is up
    with HFServer(total_bps=1_000_000) as hub:
        write_lock(tmp_path / "lock.json", hub, data)
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path), "on-demand"))
        try:
            worker.start()
            state = worker.readiness()
            assert state.ready
            assert state.sync is not None and state.sync["files_total"] == 1
            assert state.sync["files_done"] == 0, "ready only after the sync: not on demand"
            assert state.to_json()["sync"]["bytes_total"] == len(data)
            deadline = time.monotonic() + 30
            while worker.readiness().sync["files_done"] < 1:  # type: ignore[index]
                assert time.monotonic() < deadline, worker.readiness()
                time.sleep(0.1)
            assert (tmp_path / "models" / "checkpoints" / "m.safetensors").read_bytes() == data
        finally:
            worker.stop()


def test_on_demand_a_background_failure_leaves_the_worker_ready(tmp_path: Path) -> None:
    with HFServer() as hub:
        write_lock(tmp_path / "lock.json", hub, safetensors_bytes(1000), sha256="0" * 64)
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path), "on-demand"))
        try:
            worker.start()
            deadline = time.monotonic() + 30
            while not worker.readiness().sync["failed"]:  # type: ignore[index]
                assert time.monotonic() < deadline, worker.readiness()
                time.sleep(0.1)
            state = worker.readiness()
            assert state.ready
            assert state.sync["failed"][0]["reference"] == "model-hash-mismatch"  # type: ignore[index]
        finally:
            worker.stop()


def test_comfyui_boots_while_the_models_are_still_syncing(tmp_path: Path) -> None:
    data = safetensors_bytes(500_000)  # 2 MB at 1 MB/s: the sync takes ~2 s
    with HFServer(total_bps=1_000_000) as hub:
        write_lock(tmp_path / "lock.json", hub, data)
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path)))
        reasons: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                reasons.append(worker.readiness().reason)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.time()
        try:
            worker.start()
            sync_end = t0 + worker.timings["sync_s"]
            comfy_started = float((tmp_path / "ComfyUI" / "main.py.started").read_text())
            ready = worker.readiness()
            assert (ready.phase, ready.reason) == (Phase.READY, "ready")
            # The stand-in ComfyUI reports no version and has no per-prompt routes.
            assert ready.comfyui == {"version": None, "cancel_by_id": False}
            assert (tmp_path / "models" / "checkpoints" / "m.safetensors").read_bytes() == data
        finally:
            stop.set()
            watcher.join()
            worker.stop()
    assert comfy_started < sync_end, "ComfyUI was launched only after the sync finished"
    assert "syncing models" in reasons  # ComfyUI was up, the sync still running
    yaml_text = (tmp_path / "models" / ".comfy-worker" / "extra_model_paths.yaml").read_text()
    assert str(tmp_path / "models") in yaml_text and "checkpoints" in yaml_text
    stopped = worker.readiness()
    assert (stopped.phase, stopped.reason) == (Phase.STOPPED, "stopped")


def test_a_failed_sync_fails_start_and_stops_comfyui(tmp_path: Path) -> None:
    data = safetensors_bytes(1000)
    with HFServer() as hub:
        write_lock(tmp_path / "lock.json", hub, data, sha256="0" * 64)  # never matches
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path)))
        with pytest.raises(SyncError):
            worker.start()
    state = worker.readiness()
    assert state.phase is Phase.FAILED and state.reason.startswith("start-up failed: ")
    assert isinstance(state.error, ModelHashMismatch)
    assert worker.comfy is not None and not worker.comfy.alive()
    with pytest.raises(WorkerStartFailed, match="failed to start") as info:
        worker.run_job({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}})
    assert info.value.status == 503
    worker.stop()


def test_no_comfyui_dir_fails_start_with_the_setting_named(tmp_path: Path) -> None:
    with HFServer() as hub:
        worker = Worker(settings(tmp_path, hub, None))
        with pytest.raises(ComfyStartError, match="COMFYUI_DIR is not set"):
            worker.start()
    state = worker.readiness()
    assert state.phase is Phase.FAILED
    assert state.reason.startswith("start-up failed: COMFYUI_DIR is not set hint: set "
                                   "COMFYUI_DIR")


def test_bad_job_input_is_answered_before_start_up_finishes(tmp_path: Path) -> None:
    with HFServer() as hub:
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path)))
        with pytest.raises(JobInputInvalid, match='"workflow" is a string but not valid JSON'):
            worker.run_job({"workflow": "not json"})


def test_a_job_that_arrives_while_start_up_is_still_running_gets_worker_starting(
        tmp_path: Path) -> None:
    with HFServer() as hub:
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path)).replace(
            boot_timeout=0.2))
        with pytest.raises(WorkerStarting) as info:
            worker.run_job({"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}})
    assert info.value.status == 503
    assert info.value.reference == "worker-starting"
    assert "not started" in info.value.message


def test_a_failing_warm_up_job_fails_start_up_naming_the_setting(tmp_path: Path) -> None:
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps({"input": {"workflow": {
        "1": {"class_type": "NoSuchNode", "inputs": {}}}}}))
    with HFServer() as hub:
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path)).replace(
            warmup=warmup))
        with pytest.raises(WarmupFailed) as info:
            worker.start()
    assert f"COMFY_WORKER_WARMUP={warmup}" in info.value.message
    assert "NoSuchNode" in info.value.message
    assert info.value.details[0]["reference"] == "workflow-invalid"
    state = worker.readiness()
    assert state.phase is Phase.FAILED and isinstance(state.error, WarmupFailed)
    assert worker.comfy is not None and not worker.comfy.alive()
    worker.stop()


def test_an_unreadable_warm_up_file_fails_before_comfyui_boots(tmp_path: Path) -> None:
    with HFServer() as hub:
        worker = Worker(settings(tmp_path, hub, stand_in_comfyui(tmp_path)).replace(
            warmup=tmp_path / "missing.json"))
        with pytest.raises(ConfigError, match=r"COMFY_WORKER_WARMUP=.*missing\.json"):
            worker.start()
    assert not (tmp_path / "ComfyUI" / "main.py.started").exists()
