"""A worker strangers can call (issue 16), end to end: `comfy-worker serve` as a
subprocess with a real CPU ComfyUI, called as a hostile caller would, with the URLs of
its jobs pointing at misbehaving servers on loopback addresses.

The operator opens exactly the test servers' address, as the docs say
(``COMFY_WORKER_URL_ALLOW=127.0.0.1/32``); a second server on 127.0.0.2 plays an internal
address (a metadata service, a private network) that stays refused. The lock holds one
upscaler in a gated repo that only the operator's ``HF_TOKEN`` opens. After each hostile
job the worker must still serve a normal one (:func:`normal_job`).

One ``serve`` process for the module; its tests run in file order (the last ones check
that no earlier failed job model left a lock file or a sidecar).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from support import HFServer, ServedFile, lock_entry
from support.hostile_server import HostileServer, Route

from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import compact_upscaler, png_bytes, serving, upscale_workflow

pytestmark = pytest.mark.comfyui

LOCKED = "upscale_models/locked_x2.safetensors"
OPERATOR_TOKEN = "hf_operatorTOKENe2e0123456789"
JOB_TOKEN = "hf_jobTOKENe2e0123456789"
SIZE = len(compact_upscaler())
CACHE_BYTES = SIZE + SIZE // 2
"""Room for one request model (all are ``compact_upscaler()``-sized) and a half."""
SECRETS = ("hunter2", "TOPSECRET", "X-Amz-Signature", OPERATOR_TOKEN, JOB_TOKEN)




@dataclass
class Worker:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    hub: HFServer
    srv: HostileServer
    internal: HostileServer
    models: Path
    locked: ServedFile

    def job(self, job_input: dict[str, Any], timeout: float = 120) -> requests.Response:
        return requests.post(f"{self.url}/generate/sync", json={"input": job_input},
                             timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def normal_job(self, prefix: str = "normal") -> None:
        """The worker still serves a normal job (the locked upscaler, 4x3 → 8x6)."""
        r = self.job({"workflow": upscale_workflow("locked_x2.safetensors", 4, 3,
                                                   prefix=prefix)})
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 1
        assert self.proc.poll() is None

    def model_entry(self, path: str, url: str, data: bytes, **change: Any) -> dict[str, Any]:
        return {"path": path, "source": {"type": "url", "url": url},
                "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **change}



@pytest.fixture(scope="module")
def worker(comfy_install: ComfyInstall,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    with HFServer() as hub, HostileServer("127.0.0.1") as srv, \
            HostileServer("127.0.0.2") as internal:
        locked = hub.add_file("operator/private", "locked_x2.safetensors",
                              compact_upscaler(seed=61))
        hub.gate("operator/private", allowed_tokens=(OPERATOR_TOKEN, JOB_TOKEN))
        lock = root / "models.lock.json"
        lock.write_text(json.dumps({"version": 1, "models": [lock_entry(LOCKED, locked)]}))
        env = e2e_env(comfy_install, ModelEnv(hub=hub, lock_path=lock, models_dir=models,
                                              model_name="locked_x2.safetensors",
                                              model_sha256=locked.sha256))
        env |= {"COMFY_WORKER_WORK_DIR": str(root / "work"),
                "COMFY_WORKER_URL_ALLOW": "127.0.0.1/32",
                "COMFY_WORKER_MODEL_CACHE_BYTES": str(CACHE_BYTES),
                "COMFY_WORKER_STALL_TIMEOUT": "3", "COMFY_WORKER_RETRIES": "1",
                "COMFY_WORKER_INPUT_URL_TIMEOUT": "30", "HF_TOKEN": OPERATOR_TOKEN}
        log_path = root / "serve.log"
        try:
            with serving(env, log_path) as (url, proc):
                w = Worker(url, proc, log_path, hub, srv, internal, models, locked)
                w.normal_job("first")
                yield w
        finally:
            (root / "serve.log.kept").write_bytes(log_path.read_bytes())
            shutil.rmtree(models, ignore_errors=True)


# --- images a caller gives by URL ----------------------------------------------------------


def load_image_workflow(name: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                       "filename_prefix": "in"}}}


def test_an_image_url_on_an_allowed_address_is_fetched(worker: Worker) -> None:
    url = worker.srv.add("photo.png", Route(data=png_bytes(6, 5)))
    r = worker.job({"workflow": load_image_workflow("photo.png"),
                    "images": [{"name": "photo.png", "url": url}]})
    assert r.status_code == 200, r.text


def test_an_image_url_redirecting_to_an_internal_address_is_refused(worker: Worker) -> None:
    inside = worker.internal.add("latest/meta-data/iam", Route(data=b"credentials"))
    hop = worker.srv.add("hop.png", Route(redirect=inside + "?X-Amz-Signature=TOPSECRET"))

    r = worker.job({"workflow": load_image_workflow("hop.png"),
                    "images": [{"name": "hop.png", "url": hop}]})

    assert r.status_code == 422, r.text
    body = r.json()
    assert body["reference"] == "url-not-allowed", body
    assert body["error"].startswith('images[0] ("hop.png"): field "url" (redirected): ')
    assert "127.0.0.2" in body["error"] and "COMFY_WORKER_URL_ALLOW" in body["hint"]
    assert not any(s in r.text for s in SECRETS)
    assert worker.internal.requests() == []
    for literal in ("http://127.0.0.2:1/x.png", "http://[::1]:1/x.png",
                    "http://169.254.169.254/latest/meta-data/"):  # refused when parsed
        refused = worker.job({"workflow": load_image_workflow("x.png"),
                              "images": [{"name": "x.png", "url": literal}]})
        assert (refused.status_code, refused.json()["reference"]) == (422, "url-not-allowed")
    worker.normal_job()


def test_a_dripping_image_cannot_hold_the_queue_past_the_jobs_timeout(worker: Worker) -> None:
    url = worker.srv.add("drip.png", Route(data=png_bytes(6, 5), drip=2.0))
    t0 = time.monotonic()

    r = worker.job({"workflow": load_image_workflow("drip.png"), "timeout": 5,
                    "images": [{"name": "drip.png", "url": url}]})

    elapsed = time.monotonic() - t0
    assert r.status_code == 504 and r.json()["reference"] == "job-timeout", r.text
    assert "while fetching its input images" in r.json()["error"]
    assert elapsed < 10, f"{elapsed:.1f} s (issue 16 measured 60 s for timeout 5)"
    sent = worker.srv.sent("drip.png")
    time.sleep(3)
    # the fetch was cut (a server's first write after the close still lands in its buffer)
    assert worker.srv.sent("drip.png") - sent <= 1
    worker.normal_job()


def test_a_client_that_hangs_up_stops_its_jobs_image_fetches(worker: Worker) -> None:
    url = worker.srv.add("slow.png", Route(data=png_bytes(64, 64), drip=0.1))
    with pytest.raises(requests.ReadTimeout):
        worker.job({"workflow": load_image_workflow("slow.png"),
                    "images": [{"name": "slow.png", "url": url}]}, timeout=1.5)
    time.sleep(2)  # the server notices the hang-up within its poll (0.25 s)
    sent = worker.srv.sent("slow.png")
    time.sleep(2)
    assert worker.srv.sent("slow.png") - sent <= 1
    worker.normal_job()


def test_a_job_with_thousands_of_entries_is_refused_before_anything_is_fetched(
        worker: Worker) -> None:
    url = worker.srv.add("never.png", Route(data=png_bytes(4, 4), silent=60))
    images = [{"name": f"{i}.png", "url": url} for i in range(3000)]
    models = [worker.model_entry(f"loras/{i}.safetensors", url, b"x")
              for i in range(3000)]
    t0 = time.monotonic()
    for field, entries in (("images", images), ("models", models)):
        r = worker.job({"workflow": load_image_workflow("0.png"), field: entries})
        assert r.status_code == 422 and r.json()["reference"] == "job-input-invalid", r.text
        assert f'field "{field}" has 3000 entries' in r.json()["error"]
    assert time.monotonic() - t0 < 20
    assert worker.srv.requests("never.png") == []
    worker.normal_job()


def test_a_timeout_of_infinity_cannot_hold_the_queue(worker: Worker) -> None:
    wf = json.dumps(load_image_workflow("x.png"))
    for timeout in ("Infinity", "1e308", "86400"):
        r = requests.post(f"{worker.url}/generate/sync", timeout=30,
                          data=f'{{"input": {{"workflow": {wf}, "timeout": {timeout}}}}}',
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["reference"] == "job-input-invalid", r.text
        assert 'field "timeout"' in r.json()["error"]
        assert "COMFY_WORKER_MAX_JOB_TIMEOUT" in r.json()["hint"]
    worker.normal_job()


def test_json_built_to_choke_a_parser_is_a_400_not_a_crash(worker: Worker) -> None:
    wf = json.dumps(load_image_workflow("x.png"))
    for body, says in ((f'{{"input": {{"workflow": {wf}, "x": {"[" * 200_000}{"]" * 200_000}}}}}',
                        "nested deeper than 128 levels"),
                       ('{"input": {"workflow": {"1": {"class_type": "EmptyImage", "inputs": '
                        f'{{"width": {"9" * 5000}}}}}}}}}}}', "thousands of digits")):
        r = requests.post(f"{worker.url}/generate/sync", data=body, timeout=30,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["reference"] == "request-invalid", r.text
        assert "request body is JSON this worker refuses" in r.json()["error"]
        assert says in r.json()["details"][0]
    worker.normal_job()


# --- models a caller brings ---------------------------------------------------------------


def test_a_job_model_from_a_server_that_never_ends_fails_at_its_size(worker: Worker) -> None:
    data = compact_upscaler(seed=71)
    url = worker.srv.add("endless_x2.safetensors", Route(data=data, head=405, endless=True))
    t0 = time.monotonic()

    r = worker.job({"workflow": upscale_workflow("user/endless_x2.safetensors", 4, 4),
                    "models": [worker.model_entry("upscale_models/user/endless_x2.safetensors",
                                                  url, data)]})

    assert r.status_code == 422 and r.json()["reference"] == "job-input-invalid", r.text
    assert r.json()["details"][0]["reference"] == "model-size-mismatch"
    assert f"more than the {len(data)} bytes" in r.json()["error"]
    assert time.monotonic() - t0 < 20
    assert list(worker.models.rglob("*.incomplete")) == []
    assert not (worker.models / "upscale_models/user/endless_x2.safetensors").exists()
    worker.normal_job()


def test_a_presigned_model_url_is_fetched_and_used(worker: Worker) -> None:
    data = compact_upscaler(seed=72)
    url = worker.srv.add("signed_x2.safetensors", Route(data=data, signature="TOPSECRET"))

    r = worker.job({"workflow": upscale_workflow("user/signed_x2.safetensors", 4, 4),
                    "models": [worker.model_entry("upscale_models/user/signed_x2.safetensors",
                                                  url, data)]})

    assert r.status_code == 200, r.text
    assert worker.srv.requests("signed_x2.safetensors", "HEAD")  # refused, then sized by GET
    assert "TOPSECRET" not in worker.log()


@pytest.mark.parametrize(("routes", "says"), [
    ({"loop_x2.safetensors": Route(redirect="/loop2"),
      "loop2": Route(redirect="/loop_x2.safetensors")}, "its redirects loop"),
    ({"loop_x2.safetensors": Route(redirect="file:///etc/passwd")},
     'redirects to a "file" URL'),
])
def test_a_model_url_that_cannot_be_followed_is_the_callers_422(
        worker: Worker, routes: dict[str, Route], says: str) -> None:
    for name, route in routes.items():
        worker.srv.add(name, route)
    r = worker.job({"workflow": upscale_workflow("user/loop_x2.safetensors", 4, 4),
                    "models": [worker.model_entry("upscale_models/user/loop_x2.safetensors",
                                                  f"{worker.srv.base}/loop_x2.safetensors",
                                                  compact_upscaler(seed=73))]})
    assert r.status_code == 422, r.text
    assert r.json()["details"][0]["reference"] == "model-source-invalid"
    assert says in r.json()["error"] and 'field "models"' in r.json()["error"]
    worker.normal_job()


def test_secrets_of_a_model_url_are_never_echoed_in_answers_logs_or_health(
        worker: Worker) -> None:
    worker.srv.add("gone_x2.safetensors", Route(status=404))
    url = (f"http://op:hunter2@127.0.0.1:{worker.srv.port}/gone_x2.safetensors"
           "?X-Amz-Signature=TOPSECRET")
    internal = f"http://op:hunter2@127.0.0.2:{worker.internal.port}/x?X-Amz-Signature=TOPSECRET"
    answers = [worker.job({"workflow": upscale_workflow("user/gone_x2.safetensors", 4, 4),
                           "models": [worker.model_entry(
                               "upscale_models/user/gone_x2.safetensors", u,
                               compact_upscaler(seed=74))]}) for u in (url, internal)]

    assert [a.status_code for a in answers] == [422, 422], [a.text for a in answers]
    assert answers[0].json()["details"][0]["reference"] == "model-not-found"
    assert answers[1].json()["reference"] == "url-not-allowed"
    health = requests.get(f"{worker.url}/health", timeout=10).text
    for text in (*(a.text for a in answers), worker.log(), health):
        assert not any(s in text for s in SECRETS)
    assert f"http://127.0.0.1:{worker.srv.port}/gone_x2.safetensors" in answers[0].text
    worker.normal_job()


def test_a_jobs_hf_model_never_rides_on_the_operators_token(worker: Worker) -> None:
    hub = worker.hub
    mine = hub.add_file("operator/private", "mine_x2.safetensors", compact_upscaler(seed=75))
    source = {"type": "huggingface", "repo": "operator/private", "revision": mine.commit,
              "file": "mine_x2.safetensors"}
    entry = {"path": "upscale_models/user/mine_x2.safetensors", "source": source,
             "sha256": mine.sha256, "size": mine.size}
    wf = upscale_workflow("user/mine_x2.safetensors", 4, 4)

    denied = worker.job({"workflow": wf, "models": [entry]})

    assert denied.status_code == 422, denied.text
    assert denied.json()["details"][0]["reference"] == "model-gated"
    assert "without the worker's HF_TOKEN" in denied.json()["error"]
    assert not any(q.authorization for q in hub.requests(mine))  # the token never went
    assert hub.bytes_served(mine) == 0

    own = worker.job({"workflow": wf, "models": [
        {**entry, "source": {**source, "token": JOB_TOKEN}}]})
    assert own.status_code == 200, own.text
    assert JOB_TOKEN not in worker.log() and OPERATOR_TOKEN not in worker.log()
    worker.normal_job()


def test_a_job_entry_contradicting_a_locked_file_is_a_422_and_the_lock_keeps_its_record(
        worker: Worker) -> None:
    record = worker.models / "upscale_models/.locked_x2.safetensors.verified"
    before = record.read_bytes()
    gets = len(worker.hub.requests(worker.locked, "GET"))

    r = worker.job({"workflow": upscale_workflow("locked_x2.safetensors", 4, 4),
                    "models": [{**lock_entry(LOCKED, worker.locked),
                                "size": worker.locked.size + 1}]})

    assert r.status_code == 422 and r.json()["reference"] == "job-input-invalid", r.text
    assert f'models[0] ("{LOCKED}"): field "size"' in r.json()["error"]
    assert record.read_bytes() == before
    assert len(worker.hub.requests(worker.locked, "GET")) == gets
    same = worker.job({"workflow": upscale_workflow("locked_x2.safetensors", 4, 4),
                       "models": [{**lock_entry(LOCKED, worker.locked), "source": {
                           "type": "url", "url": f"{worker.srv.base}/nowhere"}}]})
    assert same.status_code == 200, same.text  # the locked file itself, from the lock
    assert worker.srv.requests("nowhere") == []
    worker.normal_job()


# --- phase B: the model store's half (claims, ownership, eviction, sidecars) ----------------

def test_a_job_never_replaces_a_file_the_operator_placed(worker: Worker) -> None:
    placed = worker.models / "upscale_models/hand_x2.safetensors"
    placed.parent.mkdir(parents=True, exist_ok=True)
    placed.write_bytes(compact_upscaler(seed=81))  # by hand: not locked, no sidecars
    theirs = compact_upscaler(seed=82)
    url = worker.srv.add("hand_x2.safetensors", Route(data=theirs))

    r = worker.job({"workflow": upscale_workflow("hand_x2.safetensors", 4, 4),
                    "models": [worker.model_entry("upscale_models/hand_x2.safetensors", url,
                                                  theirs)]})

    assert placed.read_bytes() == compact_upscaler(seed=81)
    assert (r.status_code, r.json()["reference"]) == (409, "model-path-conflict"), r.text
    assert worker.srv.requests("hand_x2.safetensors") == []
    worker.normal_job()


def test_a_model_that_can_never_fit_the_cache_evicts_nothing(worker: Worker) -> None:
    small = compact_upscaler(seed=83)
    kept = worker.srv.add("kept_x2.safetensors", Route(data=small))
    path = "upscale_models/user/kept_x2.safetensors"
    first = worker.job({"workflow": upscale_workflow("user/kept_x2.safetensors", 4, 4),
                        "models": [worker.model_entry(path, kept, small)]})
    assert first.status_code == 200, first.text
    big = compact_upscaler(nf=16, seed=84)  # alone over the cap
    url = worker.srv.add("big_x2.safetensors", Route(data=big))

    r = worker.job({"workflow": upscale_workflow("user/big_x2.safetensors", 4, 4),
                    "models": [worker.model_entry("upscale_models/user/big_x2.safetensors",
                                                  url, big)]})

    assert (r.status_code, r.json()["reference"]) == (507, "model-cache-full"), r.text
    assert (worker.models / path).read_bytes() == small
    assert worker.srv.requests("big_x2.safetensors") == []  # refused before asking it
    worker.normal_job()


def test_eviction_waits_until_the_new_models_source_answered(worker: Worker) -> None:
    small = compact_upscaler(seed=85)
    kept = worker.srv.add("held_x2.safetensors", Route(data=small))
    path = "upscale_models/user/held_x2.safetensors"
    first = worker.job({"workflow": upscale_workflow("user/held_x2.safetensors", 4, 4),
                        "models": [worker.model_entry(path, kept, small)]})
    assert first.status_code == 200, first.text
    worker.srv.add("missing_x2.safetensors", Route(status=404))

    r = worker.job({"workflow": upscale_workflow("user/missing_x2.safetensors", 4, 4),
                    "models": [worker.model_entry(
                        "upscale_models/user/missing_x2.safetensors",
                        f"{worker.srv.base}/missing_x2.safetensors",
                        compact_upscaler(seed=86))]})

    assert r.status_code == 422, r.text
    assert (worker.models / path).read_bytes() == small  # nothing evicted for a 404
    worker.normal_job()


def test_a_failed_job_model_leaves_no_lock_and_no_sidecar(worker: Worker) -> None:
    worker.srv.add("absent_x2.safetensors", Route(status=404))
    r = worker.job({"workflow": upscale_workflow("user/absent_x2.safetensors", 4, 4),
                    "models": [worker.model_entry(
                        "upscale_models/user/absent_x2.safetensors",
                        f"{worker.srv.base}/absent_x2.safetensors",
                        compact_upscaler(seed=87))]})
    assert r.status_code == 422, r.text
    left = sorted(p.name for p in (worker.models / "upscale_models").rglob(".*")
                  if p.name.startswith((".absent_x2", ".gone_x2", ".loop_x2",
                                        ".endless_x2", ".missing_x2")))
    assert left == []
    worker.normal_job()


def test_a_cancelled_job_releases_its_claim_and_its_model_download_stops(
        worker: Worker) -> None:
    data = compact_upscaler(seed=88)
    url = worker.srv.add("crawl_x2.safetensors", Route(data=data, drip=0.05))
    with pytest.raises(requests.ReadTimeout):
        worker.job({"workflow": upscale_workflow("user/crawl_x2.safetensors", 4, 4),
                    "models": [worker.model_entry("upscale_models/user/crawl_x2.safetensors",
                                                  url, data)]}, timeout=1.5)
    time.sleep(2)
    sent = worker.srv.sent("crawl_x2.safetensors")
    time.sleep(2)
    assert worker.srv.sent("crawl_x2.safetensors") - sent <= 1
    worker.normal_job()
