"""The per-job pipeline's stages, driven with fakes: no ComfyUI, no network.

The runner, the model store and the image fetcher are small fakes; the claim that waits
for a model that never arrives is the real :class:`comfy_worker.sync.claims.Claim`, and
the recycle rule is the real :class:`comfy_worker.comfy.recycle.Recycler` over a fake
process. tests/e2e runs the same pipeline inside a real worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.comfy.process import State
from comfy_worker.comfy.recycle import Recycler
from comfy_worker.config import load_settings
from comfy_worker.errors import (
    InputFetchFailed,
    JobCancelled,
    JobInputInvalid,
    ModelNotFound,
    ModelWaitTimeout,
    WorkflowConversionError,
)
from comfy_worker.job import JobRequest, JobResult
from comfy_worker.job.events import JobEvent, ReadaheadProgress
from comfy_worker.job.pipeline import JobPipeline
from comfy_worker.lockfile import LockEntry, Lockfile, parse_lock
from comfy_worker.readahead import ReadaheadReport
from comfy_worker.sync.claims import Claim, ClaimFile

SHA = "a" * 64
LOCK = parse_lock({"version": 1, "models": [{
    "path": "checkpoints/base.safetensors", "sha256": SHA, "size": 10,
    "source": {"type": "url", "url": "https://models.example/base.safetensors"}}]})
API = {"1": {"class_type": "CheckpointLoaderSimple",
             "inputs": {"ckpt_name": "base.safetensors"}},
       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
NO_MODELS = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}


class FakeRunner:
    def __init__(self, object_info: dict[str, Any] | None = None) -> None:
        self.info = object_info or {}
        self.ran: list[JobRequest] = []

    def object_info(self) -> dict[str, Any]:
        return self.info

    def run(self, request: JobRequest, *, job_id: str | None = None, progress: Any = None,
            cancel: threading.Event | None = None) -> JobResult:
        self.ran.append(request)
        return JobResult(timings={"execution_ms": 5.0, "total_ms": 5.0})


class FakeClaim:
    def __init__(self, found: Mapping[str, Path], error: Exception | None = None) -> None:
        self.found, self.error = found, error
        self.released = 0

    def wait(self, *, timeout: float | None, cancel: threading.Event | None,
             on_progress: Any) -> Mapping[str, Path]:
        if self.error is not None:
            raise self.error
        return self.found

    def release(self) -> None:
        self.released += 1


class FakeModels:
    def __init__(self, make: Any) -> None:
        self.make = make
        self.claims: list[Any] = []
        self.asked: list[tuple[tuple[str, ...], bool]] = []

    def ensure(self, entries: Sequence[LockEntry], *, requested: bool = False) -> Any:
        self.asked.append((tuple(e.path for e in entries), requested))
        claim = self.make(entries)
        self.claims.append(claim)
        return claim


def read_nothing(files: list[Path], **kw: Any) -> ReadaheadReport:
    kw["on_progress"](10, 10)
    return ReadaheadReport(files_read=tuple(files), files_resident=(), files_over_budget=(),
                           files_failed=(), bytes_read=10, bytes_planned=10, seconds=0.01,
                           budget_bytes=100)


def pipeline(runner: FakeRunner | None = None, models: FakeModels | None = None, *,
             lock: Lockfile = LOCK, **kw: Any) -> JobPipeline:
    settings = load_settings(env={}, model_wait_timeout=kw.pop("model_wait_timeout", 30.0))
    return JobPipeline(settings, lock, runner=runner or FakeRunner(),
                       models=models or FakeModels(lambda e: FakeClaim({})),
                       read_files=read_nothing, memory_budget=lambda fraction: 100, **kw)


def test_a_job_runs_through_every_stage_with_timings_ending_in_their_unit() -> None:
    runner = FakeRunner()
    models = FakeModels(lambda e: FakeClaim({"checkpoints/base.safetensors": Path("/m/b")}))
    after: list[int] = []
    updates: list[JobEvent] = []
    p = pipeline(runner, models, after_job=lambda: after.append(1))

    result = p.run(p.parse({"input": {"workflow": API}}), progress=updates.append)

    assert models.asked == [(("checkpoints/base.safetensors",), False)]
    assert runner.ran and runner.ran[0].workflow == API
    assert {"models_wait_ms", "readahead_ms", "execution_ms", "total_ms"} <= set(result.timings)
    assert result.to_json()["timings"]["models_wait"] == round(
        result.timings["models_wait_ms"], 1)  # the deprecated alias, for one release
    assert any(isinstance(u, ReadaheadProgress) for u in updates)
    assert models.claims[0].released == 1 and after == [1]


def test_a_workflow_that_cannot_be_converted_fails_before_any_model_is_claimed() -> None:
    ui = {"nodes": [{"id": 1, "type": "NoSuchNode", "mode": 0, "inputs": [], "outputs": [],
                     "widgets_values": []}], "links": [], "version": 0.4}
    models = FakeModels(lambda e: FakeClaim({}))
    after: list[int] = []
    info = {"SaveImage": {"input": {"required": {"images": ["IMAGE"]}}, "output_node": True}}
    p = pipeline(FakeRunner(info), models, after_job=lambda: after.append(1))

    with pytest.raises(WorkflowConversionError, match="NoSuchNode"):
        p.run(p.parse({"workflow": ui}))
    assert models.asked == [] and after == [1]


def test_an_image_that_cannot_be_fetched_fails_the_job_before_its_models() -> None:
    def fetch(images: Any, **kw: Any) -> Any:
        raise InputFetchFailed('images[0] ("a.png") from https://img.example/a.png: HTTP 404')

    models = FakeModels(lambda e: FakeClaim({}))
    p = pipeline(models=models, fetch_images=fetch)
    job = {"workflow": API, "images": [{"name": "a.png", "url": "https://img.example/a.png"}]}

    with pytest.raises(InputFetchFailed, match=r"a\.png"):
        p.run(p.parse(job))
    assert models.asked == []


def test_a_model_wait_past_its_timeout_fails_the_job_and_releases_its_claim() -> None:
    runner = FakeRunner()
    models = FakeModels(lambda e: FakeClaim({}, ModelWaitTimeout("waited 1 s")))
    p = pipeline(runner, models, model_wait_timeout=1.0)

    with pytest.raises(ModelWaitTimeout):
        p.run(p.parse({"workflow": API}))
    assert runner.ran == [] and models.claims[0].released == 1


def test_a_job_cancelled_while_it_waits_for_a_model_stops_waiting() -> None:
    def never_arrives(entries: Sequence[LockEntry]) -> Claim:
        files = {e.path: ClaimFile(e, requested=False) for e in entries}
        return Claim(files, threading.Condition(), check_open=lambda: None,
                     on_release=lambda files: None)

    runner = FakeRunner()
    p = pipeline(runner, FakeModels(never_arrives))
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()

    with pytest.raises(JobCancelled, match=r"checkpoints/base\.safetensors"):
        p.run(p.parse({"workflow": API}), cancel=cancel)
    assert time.monotonic() - t0 < 5 and runner.ran == []


def test_a_model_the_job_brings_that_its_source_lacks_is_the_jobs_422() -> None:
    brought = {"path": "loras/mine.safetensors", "sha256": "b" * 64, "size": 3,
               "source": {"type": "url", "url": "https://models.example/mine"}}

    def claims(entries: Sequence[LockEntry]) -> FakeClaim:
        return FakeClaim({}, ModelNotFound('"loras/mine.safetensors": 404'))

    models = FakeModels(claims)
    p = pipeline(models=models)

    with pytest.raises(JobInputInvalid, match='field "models"'):
        p.run(p.parse({"workflow": NO_MODELS, "models": [brought]}))
    assert models.asked == [(("loras/mine.safetensors",), True)]


class FakeComfy:
    state = State.READY
    generation = 1
    pid = None

    def __init__(self) -> None:
        self.restarts: list[str] = []

    def restart(self, reason: str) -> None:
        self.restarts.append(reason)
        self.generation += 1


def test_the_recycle_rule_restarts_comfyui_after_n_jobs_even_when_a_job_fails() -> None:
    comfy = FakeComfy()
    recycler = Recycler(comfy, load_settings(env={}, restart_after_jobs=2))
    models = FakeModels(lambda e: FakeClaim({}, ModelWaitTimeout("no")))
    p = pipeline(models=models, after_job=recycler.job_done)

    p.run(p.parse({"workflow": NO_MODELS}))
    assert comfy.restarts == []
    with pytest.raises(ModelWaitTimeout):
        p.run(p.parse({"workflow": API}))  # a failed job counts too
    assert len(comfy.restarts) == 1 and "2 job(s)" in comfy.restarts[0]
    p.run(p.parse({"workflow": NO_MODELS}))  # the new process starts counting again
    assert len(comfy.restarts) == 1


def test_a_bug_in_a_stage_is_an_internal_error_and_the_job_still_cleans_up() -> None:
    def broken(entries: Sequence[LockEntry]) -> FakeClaim:
        return FakeClaim({}, KeyError("bug"))

    models = FakeModels(broken)
    after: list[int] = []
    p = pipeline(models=models, after_job=lambda: after.append(1))

    with pytest.raises(Exception) as caught:
        p.run(p.parse({"workflow": API}))
    assert getattr(caught.value, "reference", None) == "internal-error"
    assert models.claims[0].released == 1 and after == [1]


# --- a caller's job, bounded (issue 16) ---------------------------------------------------


def test_fetching_the_images_counts_against_the_jobs_timeout_and_stops_on_cancel() -> None:
    seen: dict[str, Any] = {}

    def slow_fetch(images: Any, **kw: Any) -> Any:
        seen.update(kw)
        time.sleep(0.3)
        return tuple(images)

    runner = FakeRunner()
    cancel = threading.Event()
    p = pipeline(runner, fetch_images=slow_fetch)
    job = {"workflow": NO_MODELS, "timeout": 5,
           "images": [{"name": "a.png", "url": "https://img.example/a.png"}]}
    t0 = time.monotonic()

    p.run(p.parse(job), cancel=cancel)

    assert seen["cancel"] is cancel and seen["job_timeout"] == 5
    assert t0 < seen["deadline"] - 5 + 0.1 and seen["deadline"] <= time.monotonic() + 5
    assert 4.5 < runner.ran[0].timeout <= 5 - 0.3  # what was left for running it
    assert seen["policy"].check_url("http://127.0.0.1/a.png") is not None  # the default


def test_the_default_settings_refuse_a_loopback_url_when_the_job_is_parsed() -> None:
    from comfy_worker.errors import UrlNotAllowed

    p = pipeline()
    for job, field in (
        ({"workflow": NO_MODELS, "images": [{"name": "a.png",
                                             "url": "http://127.0.0.1:8188/view?x=1"}]},
         'images[0] ("a.png"): field "url"'),
        ({"workflow": NO_MODELS, "models": [{
            "path": "loras/x.safetensors", "sha256": "b" * 64, "size": 3,
            "source": {"type": "url", "url": "http://169.254.169.254/latest/x"}}]},
         'models[0] ("loras/x.safetensors"): field "source.url"'),
    ):
        with pytest.raises(UrlNotAllowed) as err:
            p.parse(job)
        assert err.value.message.startswith(field) and err.value.status == 422


@pytest.mark.parametrize(("field", "setting", "item"), [
    ("images", "COMFY_WORKER_MAX_JOB_IMAGES", lambda i: {"name": f"{i}.png",
                                                         "url": "https://img.example/a.png"}),
    ("models", "COMFY_WORKER_MAX_JOB_MODELS", lambda i: {
        "path": f"loras/{i}.safetensors", "sha256": "b" * 64, "size": 3,
        "source": {"type": "url", "url": f"https://m.example/{i}"}}),
])
def test_a_job_with_too_many_images_or_models_is_refused_before_anything_is_fetched(
        field: str, setting: str, item: Any) -> None:
    p = pipeline()
    limit = 64 if field == "images" else 32
    p.parse({"workflow": NO_MODELS, field: [item(i) for i in range(limit)]})  # at the limit

    with pytest.raises(JobInputInvalid) as err:
        p.parse({"workflow": NO_MODELS, field: [item(i) for i in range(3000)]})
    assert f'field "{field}" has 3000 entries' in err.value.message
    assert setting in (err.value.hint or "")


def test_a_job_entry_for_a_locked_path_is_the_locked_file_never_the_jobs_source() -> None:
    models = FakeModels(lambda e: FakeClaim({"checkpoints/base.safetensors": Path("/m/b")}))
    p = pipeline(models=models)
    entry = {"path": "checkpoints/base.safetensors", "sha256": SHA, "size": 10,
             "source": {"type": "url", "url": "https://elsewhere.example/base"}}

    p.run(p.parse({"workflow": NO_MODELS, "models": [entry]}))

    assert models.asked == [(("checkpoints/base.safetensors",), False)]
    with pytest.raises(JobInputInvalid) as err:  # the lock's sha256, another size
        p.run(p.parse({"workflow": NO_MODELS, "models": [{**entry, "size": 11}]}))
    assert 'models[0] ("checkpoints/base.safetensors"): field "size"' in err.value.message
    assert len(models.asked) == 1  # nothing claimed: the locked file is not doubted


def test_the_locked_entry_not_the_jobs_is_what_the_store_is_asked_for() -> None:
    asked: list[LockEntry] = []

    def claim(entries: Sequence[LockEntry]) -> FakeClaim:
        asked.extend(entries)
        return FakeClaim({e.path: Path("/m") for e in entries})

    p = pipeline(models=FakeModels(claim))
    entry = {"path": "checkpoints/base.safetensors", "sha256": SHA, "size": 10,
             "source": {"type": "url", "url": "https://elsewhere.example/base"}}
    p.run(p.parse({"workflow": NO_MODELS, "models": [entry]}))
    assert asked == list(LOCK.models)


def test_comfy_org_api_key_is_the_default_partner_key_of_a_job_that_brings_none() -> None:
    from comfy_worker.config import Secret
    from comfy_worker.job.pipeline import parse_job

    settings = load_settings(env={"COMFY_ORG_API_KEY": "comfyui-operator"})
    wf = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    assert parse_job({"input": {"workflow": wf}}, settings, Lockfile()
                     ).comfy_org_api_key == Secret("comfyui-operator")
    assert parse_job({"input": {"workflow": wf, "comfy_org_api_key": "comfyui-own"}},
                     settings, Lockfile()).comfy_org_api_key == Secret("comfyui-own")
    assert "comfyui-operator" not in repr(settings)
