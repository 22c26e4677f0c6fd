"""scripts/start.sh, the image's entrypoint, run on the host (no Docker needed).

A recording ``comfy-worker`` on PATH writes the arguments it got and the volume it was
given, so each test sees exactly what the entrypoint would have started in the image.
The image itself is covered by test_image.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START = REPO / "scripts" / "start.sh"
SECRET = "hf_startScriptSecret0123456789abcdef"

RECORDER = """#!/usr/bin/env python3
import json, os, signal, sys, time
out = os.environ["RECORD_TO"]
def record(extra=None):
    data = {"argv": sys.argv[1:], "volume": os.environ.get("COMFY_WORKER_VOLUME")}
    data.update(extra or {})
    with open(out, "w") as f:
        json.dump(data, f)
record()
if os.environ.get("RECORDER_WAIT_FOR_TERM"):
    def on_term(signum, frame):
        record({"signal": signum})
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    open(out + ".ready", "w").close()
    time.sleep(60)
    sys.exit(0)
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "comfy-worker"
    tool.write_text(RECORDER)
    tool.chmod(0o755)
    return bin_dir


def _env(recorder: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    # A clean environment: none of the host's platform variables leak into the decision.
    env = {
        "PATH": f"{recorder}:/usr/local/bin:/usr/bin:/bin",
        "RECORD_TO": str(tmp_path / "record.json"),
        "HF_TOKEN": SECRET,
        "BUCKET_SECRET_ACCESS_KEY": SECRET + "-s3",
    }
    env.update(extra)
    return env


def _start(recorder: Path, tmp_path: Path, *args: str, **env: str
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    proc = subprocess.run(["bash", str(START), *args], env=_env(recorder, tmp_path, **env),
                          capture_output=True, text=True, timeout=30)
    record_file = tmp_path / "record.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    for stream in (proc.stdout, proc.stderr):
        assert SECRET not in stream
    return proc, record


def test_no_platform_variables_serves_the_local_http_api(recorder: Path, tmp_path: Path) -> None:
    proc, record = _start(recorder, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert record["argv"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "mode=local" in proc.stderr


def test_local_mode_port_and_host_come_from_the_environment(
    recorder: Path, tmp_path: Path
) -> None:
    _, record = _start(recorder, tmp_path, COMFY_WORKER_PORT="9123",
                       COMFY_WORKER_HOST="127.0.0.1")
    assert record["argv"] == ["serve", "--host", "127.0.0.1", "--port", "9123"]


def test_runpod_endpoint_variable_selects_runpod_and_passes_test_input_through(
    recorder: Path, tmp_path: Path
) -> None:
    test_input = json.dumps({"input": {"workflow": {"1": {"class_type": "X y", "inputs": {}}}}})
    proc, record = _start(recorder, tmp_path, "--test_input", test_input,
                          RUNPOD_ENDPOINT_ID="abc123")
    assert proc.returncode == 0, proc.stderr
    assert record["argv"] == ["runpod", "--test_input", test_input]
    assert "mode=runpod" in proc.stderr and "RUNPOD_ENDPOINT_ID" in proc.stderr
    assert "abc123" not in proc.stderr  # names of variables only, never values


def test_runpod_pod_id_alone_selects_runpod(recorder: Path, tmp_path: Path) -> None:
    _, record = _start(recorder, tmp_path, RUNPOD_POD_ID="pod-1")
    assert record["argv"] == ["runpod"]


def test_vast_variables_select_the_pyworker(recorder: Path, tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    proc, record = _start(recorder, tmp_path, VAST_CONTAINERLABEL="C.123",
                          COMFY_WORKER_VOLUME=str(volume))
    assert record["argv"] == ["vast"]
    assert record["volume"] == str(volume)  # an explicit volume wins over /workspace
    assert "mode=vast" in proc.stderr
    _, record = _start(recorder, tmp_path, CONTAINER_ID="42", COMFY_WORKER_VOLUME=str(volume))
    assert record["argv"] == ["vast"]


def test_mode_variable_wins_over_autodetection(recorder: Path, tmp_path: Path) -> None:
    proc, record = _start(recorder, tmp_path, MODE="local", RUNPOD_ENDPOINT_ID="abc",
                          VAST_CONTAINERLABEL="C.1")
    assert record["argv"][0] == "serve"
    assert "MODE is set" in proc.stderr
    _, record = _start(recorder, tmp_path, MODE="vast", COMFY_WORKER_VOLUME=str(tmp_path))
    assert record["argv"] == ["vast"]


def test_unknown_mode_fails_with_the_allowed_values(recorder: Path, tmp_path: Path) -> None:
    proc, record = _start(recorder, tmp_path, MODE="lambda")
    assert proc.returncode == 2
    assert "runpod, vast, local" in proc.stderr
    assert record == {}


def test_a_worker_command_runs_that_command(recorder: Path, tmp_path: Path) -> None:
    proc, record = _start(recorder, tmp_path, "run", "/app/workflows/default.json",
                          "--out", "/out", RUNPOD_ENDPOINT_ID="ignored-for-commands")
    assert proc.returncode == 0, proc.stderr
    assert record["argv"] == ["run", "/app/workflows/default.json", "--out", "/out"]


def test_another_program_is_executed_as_is(recorder: Path, tmp_path: Path) -> None:
    proc, record = _start(recorder, tmp_path, "echo", "hello from start.sh")
    assert proc.stdout.strip() == "hello from start.sh"
    assert record == {}


def test_the_workers_exit_status_is_the_containers(recorder: Path, tmp_path: Path) -> None:
    proc, _ = _start(recorder, tmp_path, RECORDER_EXIT="3")
    assert proc.returncode == 3


def test_sigterm_reaches_the_worker(recorder: Path, tmp_path: Path) -> None:
    env = _env(recorder, tmp_path, RECORDER_WAIT_FOR_TERM="1")
    proc = subprocess.Popen(["bash", str(START)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready = tmp_path / "record.json.ready"
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=20)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["signal"] == signal.SIGTERM
    assert proc.returncode == 143


def test_start_script_never_traces_or_dumps_the_environment() -> None:
    text = START.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for forbidden in ("set -x", "xtrace", "printenv", "env |", "export -p", "declare -p"):
        assert forbidden not in code


OPEN_WARNING = "COMFY_WORKER_API_TOKEN is unset"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "203.0.113.7", "10.1.2.3", "my-host"])
def test_local_mode_warns_once_on_a_public_address_without_a_token(
    recorder: Path, tmp_path: Path, host: str
) -> None:
    proc, record = _start(recorder, tmp_path, COMFY_WORKER_HOST=host)
    assert proc.returncode == 0, proc.stderr
    assert record["argv"][:3] == ["serve", "--host", host]
    assert proc.stderr.count(OPEN_WARNING) == 1
    assert f"{host}:8000" in proc.stderr


def test_default_local_mode_warns_because_it_listens_on_all_addresses(
    recorder: Path, tmp_path: Path
) -> None:
    proc, _ = _start(recorder, tmp_path)
    assert proc.stderr.count(OPEN_WARNING) == 1
    assert "0.0.0.0:8000" in proc.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1"])
def test_local_mode_on_loopback_does_not_warn(recorder: Path, tmp_path: Path, host: str) -> None:
    proc, _ = _start(recorder, tmp_path, COMFY_WORKER_HOST=host)
    assert proc.returncode == 0, proc.stderr
    assert OPEN_WARNING not in proc.stderr


def test_local_mode_with_a_token_does_not_warn_and_never_prints_it(
    recorder: Path, tmp_path: Path
) -> None:
    proc, record = _start(recorder, tmp_path, COMFY_WORKER_API_TOKEN=SECRET)
    assert record["argv"][:3] == ["serve", "--host", "0.0.0.0"]
    assert OPEN_WARNING not in proc.stderr  # _start also checks SECRET is not printed


def test_a_host_argument_decides_the_warning(recorder: Path, tmp_path: Path) -> None:
    proc, record = _start(recorder, tmp_path, "--host", "127.0.0.1",
                          COMFY_WORKER_HOST="0.0.0.0")
    assert record["argv"][-2:] == ["--host", "127.0.0.1"]
    assert OPEN_WARNING not in proc.stderr
    proc, _ = _start(recorder, tmp_path, "--host=0.0.0.0", "--port", "9001",
                     COMFY_WORKER_HOST="127.0.0.1")
    assert proc.stderr.count(OPEN_WARNING) == 1 and "0.0.0.0:9001" in proc.stderr


def test_other_modes_never_warn_about_the_http_api(recorder: Path, tmp_path: Path) -> None:
    proc, _ = _start(recorder, tmp_path, RUNPOD_ENDPOINT_ID="abc")
    assert OPEN_WARNING not in proc.stderr
    proc, _ = _start(recorder, tmp_path, MODE="vast", COMFY_WORKER_VOLUME=str(tmp_path))
    assert OPEN_WARNING not in proc.stderr
