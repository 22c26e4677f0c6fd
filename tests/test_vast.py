"""The Vast adapter's own decisions: model-log lines, the PyWorker command, the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_worker.config import Settings
from comfy_worker.entrypoints.vast import (
    DEFAULT_BENCHMARK,
    FATAL_LINE,
    PYWORKER_SCRIPT,
    READY_LINE,
    ModelLog,
    benchmark_input,
    model_log_line,
    pyworker_command,
)
from comfy_worker.errors import ConfigError, ModelHashMismatch, SyncError
from comfy_worker.readiness import Phase, Readiness


def test_ready_and_fatal_lines_carry_the_markers_the_pyworker_matches() -> None:
    assert model_log_line(Readiness(Phase.READY, "ready")) == READY_LINE
    failed = Readiness.failed(ModelHashMismatch("sha256 mismatch\nfor x.safetensors",
                                                hint="re-pin it"))
    assert model_log_line(failed) == (f"{FATAL_LINE}: sha256 mismatch for x.safetensors "
                                      "hint: re-pin it")
    assert model_log_line(Readiness(Phase.STARTING, "syncing models")) == \
        "comfy-worker: starting: syncing models"


def test_a_failure_message_cannot_fake_the_ready_marker() -> None:
    line = model_log_line(Readiness.failed(SyncError(f"file named '{READY_LINE}' is missing")))
    assert READY_LINE not in line
    assert line.startswith(FATAL_LINE)
    assert FATAL_LINE not in model_log_line(Readiness(Phase.STARTING, f"weird {FATAL_LINE}"))


def test_pyworker_command_runs_the_module_from_the_vast_python(tmp_path: Path) -> None:
    settings = Settings(vast_python="/opt/v/bin/python", vast_model_log=tmp_path / "m.log",
                        vast_benchmark_runs=5, vast_max_queue_time=12.5)
    cmd = pyworker_command(settings, model_port=18000, benchmark=tmp_path / "b.json")
    assert cmd[:3] == ["/opt/v/bin/python", "-I", str(PYWORKER_SCRIPT)]
    assert PYWORKER_SCRIPT.is_file()
    args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert args == {
        "--model-server-port": "18000", "--model-log": str(tmp_path / "m.log"),
        "--ready-line": READY_LINE, "--error-line": FATAL_LINE,
        "--info-line": "comfy-worker: ", "--benchmark": str(tmp_path / "b.json"),
        "--benchmark-runs": "5", "--max-queue-time": "12.5",
    }


def test_benchmark_defaults_to_the_model_free_workflow_or_reads_the_setting(
        tmp_path: Path) -> None:
    assert benchmark_input(Settings()) == DEFAULT_BENCHMARK
    job = {"input": {"workflow": {"1": {"class_type": "X", "inputs": {}}}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(job))
    assert benchmark_input(Settings(vast_benchmark=path)) == job


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read a JSON job input"),
    ("{oops", "cannot read a JSON job input"),
    ("[1]", "holds a JSON array, not an object"),
])
def test_unusable_benchmark_file_is_a_config_error_naming_the_setting(
        tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        benchmark_input(Settings(vast_benchmark=path))
    assert f"COMFY_WORKER_VAST_BENCHMARK={path}" in str(info.value)


def test_model_log_starts_empty_and_keeps_the_previous_run_in_old(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "model.log"
    path.parent.mkdir()
    path.write_text(f"{READY_LINE}\n")
    log = ModelLog(path)
    assert path.read_text() == ""
    assert (tmp_path / "logs" / "model.log.old").read_text() == f"{READY_LINE}\n"
    log.write("comfy-worker: starting")
    log.write(READY_LINE)
    assert path.read_text().splitlines() == ["comfy-worker: starting", READY_LINE]


def test_pyworker_defaults_worker_port_and_tls_like_vasts_start_script() -> None:
    from comfy_worker.entrypoints.vast_pyworker import platform_defaults

    assert platform_defaults({}) == {"WORKER_PORT": "3000", "USE_SSL": "true"}
    assert platform_defaults({"WORKER_PORT": "5000", "USE_SSL": "false"}) == {}
    assert platform_defaults({"WORKER_PORT": ""}) == {"WORKER_PORT": "3000", "USE_SSL": "true"}
