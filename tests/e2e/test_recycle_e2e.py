"""A fresh ComfyUI between jobs (COMFY_WORKER_RESTART_AFTER_JOBS, _MAX_COMFY_RSS), on a
real ComfyUI: the restart happens after a job, never during one, and the next job waits
for the new process and succeeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfy_worker.readiness import Phase
from comfy_worker.worker import Worker
from e2e.conftest import ComfyInstall, ModelEnv, e2e_settings
from e2e.helpers import empty_image_workflow

pytestmark = pytest.mark.comfyui


def _job(worker: Worker, size: int) -> Any:
    result = worker.run_job({"workflow": empty_image_workflow(size, size)})
    assert len(result.images) == 1
    return result


def test_comfyui_is_restarted_after_n_jobs_and_over_rss_and_the_next_job_runs(
        comfy_install: ComfyInstall, model_env: ModelEnv, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    settings = e2e_settings(comfy_install, model_env, tmp_path / "work").replace(
        restart_after_jobs=2)
    with Worker(settings) as worker:
        comfy = worker.comfy
        assert comfy is not None
        first = comfy.pid
        _job(worker, 8)
        assert comfy.pid == first and comfy.restarts == 0
        _job(worker, 9)  # the second job: ComfyUI is replaced after it, not during it
        assert worker.readiness().phase in (Phase.RECOVERING, Phase.READY)
        _job(worker, 10)  # waits for the fresh ComfyUI
        assert comfy.pid != first and comfy.restarts == 1
        assert "2 job(s) since it started (COMFY_WORKER_RESTART_AFTER_JOBS=2)" in caplog.text

        worker.settings = worker.settings.replace(restart_after_jobs=0, max_comfy_rss=1)
        second = comfy.pid
        _job(worker, 11)  # ComfyUI uses far more than 1 byte: replaced after this job
        worker.settings = worker.settings.replace(max_comfy_rss=0)
        _job(worker, 12)
        assert comfy.pid != second and comfy.restarts == 2
        assert "COMFY_WORKER_MAX_COMFY_RSS=1 bytes" in caplog.text
        assert worker.readiness().ready
