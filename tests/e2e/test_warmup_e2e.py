"""COMFY_WORKER_WARMUP on a real ComfyUI: the warm-up job runs once, after start-up and
before the worker reports ready, and the first real job then runs as usual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_worker.readiness import Phase
from comfy_worker.worker import Worker
from e2e.conftest import ComfyInstall, ModelEnv, e2e_settings
from e2e.helpers import upscale_workflow

pytestmark = pytest.mark.comfyui


def test_the_warm_up_job_runs_once_before_ready(comfy_install: ComfyInstall,
                                                model_env: ModelEnv, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps({"input": {"workflow": upscale_workflow(
        model_env.model_name, 16, 16, prefix="warm")}}))
    worker = Worker(e2e_settings(comfy_install, model_env, tmp_path / "work").replace(
        warmup=warmup))
    with worker:
        assert worker.readiness().phase is Phase.READY
        messages = [r.getMessage() for r in caplog.records]
        warm = next(i for i, m in enumerate(messages) if m.startswith("warm-up job done"))
        ready = next(i for i, m in enumerate(messages) if m.startswith("worker ready in"))
        assert warm < ready, "the worker reported ready before its warm-up job ran"
        assert caplog.text.count("warm-up job done") == 1
        assert worker.timings["warmup_s"] > 0
        result = worker.run_job({"workflow": upscale_workflow(model_env.model_name, 8, 8)})
        assert len(result.images) == 1
    assert caplog.text.count("warm-up job done") == 1
