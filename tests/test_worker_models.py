"""What a job is told when a model it brought (``input.models``) cannot be had: its own
entry's fault is a 422 naming the entry; a failing source or a full disk keeps its own
error."""

from __future__ import annotations

import pytest

from comfy_worker.errors import (
    DiskFull,
    DownloadFailed,
    GatedModel,
    JobInputInvalid,
    ModelHashMismatch,
    ModelNotFound,
    ModelPathConflict,
    ModelSizeMismatch,
    ModelWaitTimeout,
    WorkerError,
)
from comfy_worker.job.models import brought_model_error


@pytest.mark.parametrize("cls", [ModelHashMismatch, ModelSizeMismatch, ModelNotFound,
                                 GatedModel])
def test_an_entry_the_source_contradicts_is_the_jobs_input_error(
        cls: type[WorkerError]) -> None:
    cause = cls('"loras/x.safetensors": downloaded file has sha256 ab..., the entry '
                "expects cd...", hint="the lock's hint", details=[{"attempts": 4}])

    err = brought_model_error(cause)

    assert isinstance(err, JobInputInvalid) and err.status == 422
    assert err.message == f'field "models": {cause.message}'
    assert err.details == [{"reference": cause.reference, "hint": "the lock's hint"},
                           {"attempts": 4}]
    assert "models entry" in (err.hint or "")


@pytest.mark.parametrize("cause", [
    DownloadFailed("5xx on every attempt"), DiskFull("no room"),
    ModelPathConflict("in use with other bytes"), ModelWaitTimeout("waited 1 s"),
])
def test_a_failing_source_or_worker_keeps_its_own_error(cause: WorkerError) -> None:
    assert brought_model_error(cause) is cause
