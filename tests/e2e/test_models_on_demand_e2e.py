"""Models on demand end to end: the real CLI (`comfy-worker run`, `comfy-worker serve`)
as subprocesses, each with a real CPU ComfyUI, fetching from the HF-compatible server on
127.0.0.1 with a total bandwidth cap that the tests turn up and down.

The serve lock lists, in this order: a 2.7 MB x2 upscaler (``slow_x2``), eight 48 MiB
files (384 MiB, sparse on the server's side), the 10 KB x2 upscaler that most jobs use
(``small_x2``), then a file the repo does not have (404) and one in a gated repo (401).
The worker downloads the lock in the background, four files at a time, while jobs claim
what they use; once the tests of that are done the cap goes and the background sync
finishes, so the request-model tests after it run without waiting for connections.
One ``serve`` process for the module: its tests run in file order and share its state
(what is downloaded, the request cache). The ``run`` test comes first, before the
server's ComfyUI starts, so one ComfyUI runs at a time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from support import HFServer, ServedFile, lock_entry
from support.waiting import wait_for

from comfy_worker.sync.cache import list_cache
from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import (
    CLI,
    compact_upscaler,
    png_size,
    serving,
    sparse_safetensors,
    upscale_workflow,
)

pytestmark = pytest.mark.comfyui

MIB = 1024 * 1024
BIG_SIZE = 48 * MIB
BIG_COUNT = 8
BOOT_BPS = 150_000
"""The cap while ComfyUI boots: the background sync crawls, so ``slow_x2`` is still
downloading when the first job asks for it."""
QUIET_BPS = 2_000_000
"""The cap between the first tests: the big files crawl, and take little CPU."""
UNCAPPED = 1e12
RUN_BPS = 8_000_000
SMALL = "upscale_models/small_x2.safetensors"
SLOW = "upscale_models/slow_x2.safetensors"
GONE = "upscale_models/gone_x2.safetensors"
GATED = "upscale_models/gated_x2.safetensors"
REQUEST_FILE_SIZE = len(compact_upscaler())
CACHE_BYTES = 2 * REQUEST_FILE_SIZE + REQUEST_FILE_SIZE // 2
"""Room for two request files (all are ``compact_upscaler()``-sized)."""


# --- shared parts --------------------------------------------------------------------


def set_cap(hub: HFServer, bps: float) -> None:
    """The server's total bandwidth from now on (each response's next chunk)."""
    assert hub.total_limiter is not None
    hub.total_limiter.bps = float(bps)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.incomplete"))


def png_of(item: dict[str, Any]) -> tuple[int, int]:
    return png_size(base64.b64decode(item["data"]))




@pytest.fixture(scope="module")
def big_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """The big files' bytes for the servers: sparse, distinct, valid safetensors."""
    root = tmp_path_factory.mktemp("big-sources")
    yield [sparse_safetensors(root / f"big_{i}.safetensors", BIG_SIZE, f"big-{i}")
           for i in range(BIG_COUNT)]
    shutil.rmtree(root, ignore_errors=True)


def add_bigs(hub: HFServer, sources: list[Path]) -> dict[str, ServedFile]:
    return {f"checkpoints/{src.name}": hub.add_file("e2e/big", src.name, src)
            for src in sources}


def write_lock(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"version": 1, "models": entries}, indent=2))
    return path


def model_env(hub: HFServer, lock_path: Path, models_dir: Path) -> ModelEnv:
    return ModelEnv(hub=hub, lock_path=lock_path, models_dir=models_dir,
                    model_name="small_x2.safetensors", model_sha256="")


# --- `comfy-worker run` ----------------------------------------------------------------


@pytest.mark.compat
def test_run_exits_when_its_job_is_done_cancelling_the_background_downloads(
        comfy_install: ComfyInstall, big_sources: list[Path], tmp_path: Path) -> None:
    """A lock of 384 MiB still downloading at 8 MB/s (48 s at least) and a job that uses
    only the 10 KB upscaler listed after it: `run` exits 0 once the job is done, with
    no temp file left, no big file under its final name, and the complete files kept
    (one there before the run, the job's own fetched during it)."""
    models = tmp_path / "models"
    earlier = "upscale_models/earlier_x2.safetensors"
    with HFServer(total_bps=RUN_BPS) as hub:
        there = hub.add_file("e2e/earlier", "earlier_x2.safetensors",
                             compact_upscaler(seed=31))
        bigs = add_bigs(hub, big_sources)
        small = hub.add_file("e2e/small", "small_x2.safetensors", compact_upscaler(seed=2))
        served = {earlier: there, **bigs, SMALL: small}
        lock = write_lock(tmp_path / "models.lock.json",
                          [lock_entry(p, f) for p, f in served.items()])
        (models / earlier).parent.mkdir(parents=True)
        (models / earlier).write_bytes(compact_upscaler(seed=31))  # an earlier run's
        (tmp_path / "wf.json").write_text(json.dumps(
            upscale_workflow("small_x2.safetensors", 8, 6, prefix="run")))
        env = e2e_env(comfy_install, model_env(hub, lock, models))
        env["COMFY_WORKER_WORK_DIR"] = str(tmp_path / "work")

        t0 = time.monotonic()
        proc = subprocess.run([*CLI, "-v", "run", "wf.json", "--out", str(tmp_path / "out")],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        elapsed = time.monotonic() - t0
        big_served = {p: hub.bytes_served(f) for p, f in bigs.items()}
        fetched_there = hub.requests(there, "GET")

    (tmp_path / "run.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [png_size(p.read_bytes()) for p in (tmp_path / "out").iterdir()] == [(16, 12)]
    big_total = BIG_SIZE * BIG_COUNT
    assert elapsed < big_total / RUN_BPS, f"run took {elapsed:.1f} s"
    assert 0 < sum(big_served.values()) < big_total / 2, big_served  # under way, far off
    assert temp_files(models) == []
    for path, f in served.items():
        target = models / path
        if path in bigs:
            assert not target.exists(), f"{path} is under its final name, unfinished"
        else:  # complete before the exit: kept, whole
            assert sha256_of(target) == f.sha256, path
    assert fetched_there == []  # found complete, not fetched again
    print(f"\nrun: exit 0 after {elapsed:.1f} s; big files served "
          f"{sum(big_served.values()) / MIB:.0f} of {big_total / MIB:.0f} MiB")


# --- `comfy-worker serve` ------------------------------------------------------------------


@dataclass
class OnDemandServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    hub: HFServer
    models_dir: Path
    served: dict[str, ServedFile]
    """Lock path -> the file the hub serves for it (``GONE`` has none)."""
    bigs: dict[str, ServedFile]
    lock_size: int
    lock_files: int

    def health(self) -> tuple[int, dict[str, Any]]:
        r = requests.get(f"{self.url}/health", timeout=10)
        return r.status_code, r.json()

    def run_sync(self, job_input: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/generate/sync", json={"input": job_input},
                             timeout=180)

    def run_async(self, job_input: dict[str, Any], *,
                  watch: Callable[[dict[str, Any]], object] = lambda body: None
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The finished job's status body, and every progress update seen while polling
        (``watch`` gets each status body of the job before it ends)."""
        r = requests.post(f"{self.url}/generate", json={"input": job_input}, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            body = requests.get(f"{self.url}/status/{job_id}", timeout=10).json()
            if "progress" in body and body["progress"] not in seen[-1:]:
                seen.append(body["progress"])
            if body["status"] in ("completed", "failed"):
                return body, seen
            watch(body)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {body}")

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture(scope="module")
def server(comfy_install: ComfyInstall, big_sources: list[Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnDemandServer]:
    root = tmp_path_factory.mktemp("on-demand")
    models = root / "models"
    with HFServer(total_bps=BOOT_BPS) as hub:
        slow = hub.add_file("e2e/slow", "slow_x2.safetensors",
                            compact_upscaler(nf=96, num_conv=8, seed=1))
        bigs = add_bigs(hub, big_sources)
        small = hub.add_file("e2e/small", "small_x2.safetensors", compact_upscaler(seed=2))
        gated = hub.add_file("e2e/gated", "gated_x2.safetensors", compact_upscaler(seed=4))
        hub.gate("e2e/gated")
        served = {SLOW: slow, **bigs, SMALL: small, GATED: gated}
        absent = compact_upscaler(seed=3)  # pinned, but not in the repo's commit: 404
        gone = {"path": GONE, "source": {"type": "huggingface", "repo": "e2e/small",
                                         "revision": small.commit,
                                         "file": "gone_x2.safetensors"},
                "sha256": hashlib.sha256(absent).hexdigest(), "size": len(absent)}
        entries = [lock_entry(p, f) for p, f in served.items() if p != GATED]
        entries += [gone, lock_entry(GATED, gated)]
        lock = write_lock(root / "models.lock.json", entries)

        env = e2e_env(comfy_install, model_env(hub, lock, models))
        env["COMFY_WORKER_WORK_DIR"] = str(root / "work")
        env["COMFY_WORKER_MODEL_CACHE_BYTES"] = str(CACHE_BYTES)
        env["COMFY_WORKER_URL_ALLOW"] = "127.0.0.1/32"  # the jobs' model URLs are local
        log_path = root / "serve.log"
        try:
            with serving(env, log_path) as (url, proc):
                yield OnDemandServer(url, proc, log_path, hub, models, served, bigs,
                                     sum(e["size"] for e in entries), len(entries))
        finally:
            shutil.rmtree(models, ignore_errors=True)  # hundreds of MB of big files


def downloading(body: dict[str, Any], path: str) -> dict[str, Any] | None:
    return next((d for d in body["sync"]["downloading"] if d["path"] == path), None)


def test_health_is_200_while_the_background_sync_runs(server: OnDemandServer) -> None:
    status, first = server.health()
    assert status == 200 and first["ready"] is True and first["reason"] == "ready", first
    sync = first["sync"]
    assert sync["files_total"] == server.lock_files
    assert sync["bytes_total"] == server.lock_size
    assert sync["checked"] is True and sync["prefetch"] is True
    assert sync["complete"] is False
    assert sync["files_done"] < sync["files_total"]
    assert 0 <= sync["bytes_done"] < sync["bytes_total"]
    assert {d["priority"] for d in sync["downloading"]} == {"background"}
    assert downloading(first, SLOW) is not None, sync["downloading"]


def test_a_job_needing_a_locked_file_still_downloading_waits_for_it_and_runs(
        server: OnDemandServer) -> None:
    slow = server.served[SLOW]
    before = downloading(server.health()[1], SLOW)
    assert before is not None and before["priority"] == "background", before
    assert not (server.models_dir / SLOW).exists()
    priorities: set[str] = set()

    def watch(job: dict[str, Any]) -> None:  # what /health says while the job waits
        if job.get("progress", {}).get("stage") == "models":
            d = downloading(server.health()[1], SLOW)
            if d is not None:
                priorities.add(d["priority"])

    set_cap(server.hub, 16_000_000)  # the rest of the file: a few seconds
    try:
        body, progress = server.run_async(
            {"workflow": upscale_workflow("slow_x2.safetensors", 8, 6, prefix="slow")},
            watch=watch)
    finally:
        set_cap(server.hub, QUIET_BPS)

    assert body["status"] == "completed", body
    output = body["output"]
    assert [png_of(i) for i in output["images"]] == [(16, 12)]
    assert output["timings"]["models_wait_ms"] > 0, output["timings"]
    waits = [p for p in progress if p["stage"] == "models"]
    assert waits, progress
    assert all(p["waiting_for"] == [SLOW] for p in waits), waits
    assert all(p["bytes_total"] == slow.size for p in waits), waits
    assert sha256_of(server.models_dir / SLOW) == slow.sha256
    assert priorities == {"job"}, priorities  # the background download, raised
    assert server.hub.bytes_served(slow) == slow.size  # in place: no byte fetched twice
    print(f"\nwaited {output['timings']['models_wait_ms'] / 1000:.1f} s for {SLOW} "
          f"({len(waits)} progress update(s) with stage 'models')")


def test_a_job_needing_a_file_not_yet_started_gets_it_before_the_big_files(
        server: OnDemandServer) -> None:
    small = server.served[SMALL]
    assert server.hub.requests(small) == []  # nothing asked of it yet: listed after bigs
    assert not (server.models_dir / SMALL).exists()

    set_cap(server.hub, 8_000_000)  # the big files move: 384 MiB, 48 s at least
    try:
        r = server.run_sync({"workflow": upscale_workflow("small_x2.safetensors", 12, 10,
                                                          prefix="small")})
        big_served = {p: server.hub.bytes_served(f) for p, f in server.bigs.items()}
    finally:
        set_cap(server.hub, QUIET_BPS)

    assert r.status_code == 200, r.text
    assert [png_of(i) for i in r.json()["images"]] == [(24, 20)]
    assert r.json()["timings"]["models_wait_ms"] > 0
    assert sha256_of(server.models_dir / SMALL) == small.sha256
    unfinished = [p for p, n in big_served.items() if n < BIG_SIZE]
    assert unfinished == list(server.bigs), big_served  # not one big file had finished
    assert sum(big_served.values()) < BIG_SIZE * BIG_COUNT / 2, big_served
    print(f"\njob done with {sum(big_served.values()) / MIB:.0f} of "
          f"{BIG_SIZE * BIG_COUNT / MIB:.0f} MiB of the big files served")


def test_the_background_sync_completes_the_lock_around_the_files_that_fail(
        server: OnDemandServer) -> None:
    set_cap(server.hub, UNCAPPED)

    def idle() -> dict[str, Any] | None:
        status, body = server.health()
        assert status == 200, body
        sync = body["sync"]
        return sync if not sync["downloading"] and len(sync["failed"]) == 2 else None

    sync = wait_for(idle, 120, "the background sync to finish")
    assert {f["path"]: f["reference"] for f in sync["failed"]} == {
        GONE: "model-not-found", GATED: "model-gated"}, sync["failed"]
    assert sync["files_done"] == sync["files_total"] - 2
    assert sync["complete"] is False
    assert temp_files(server.models_dir) == []
    for path, f in server.served.items():
        if path != GATED:
            assert sha256_of(server.models_dir / path) == f.sha256, path
    assert not (server.models_dir / GONE).exists()
    assert not (server.models_dir / GATED).exists()


def request_entry(path: str, f: ServedFile, *, sha256: str | None = None) -> dict[str, Any]:
    entry = lock_entry(path, f)
    if sha256 is not None:
        entry["sha256"] = sha256
    return entry


def cached_paths(server: OnDemandServer) -> set[str]:
    return {f.path for f in list_cache(server.models_dir)}


def test_a_model_the_job_brings_is_fetched_once_and_reused_by_the_next_job(
        server: OnDemandServer) -> None:
    own = server.hub.add_url("r1_x2.safetensors", compact_upscaler(seed=11))
    path = "upscale_models/user/r1_x2.safetensors"
    models = [request_entry(path, own)]

    first = server.run_sync({"workflow": upscale_workflow("user/r1_x2.safetensors", 8, 6,
                                                          prefix="own"), "models": models})
    second = server.run_sync({"workflow": upscale_workflow("user/r1_x2.safetensors", 5, 4,
                                                           prefix="own"), "models": models})

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert [png_of(i) for i in first.json()["images"]] == [(16, 12)]
    assert [png_of(i) for i in second.json()["images"]] == [(10, 8)]
    assert len(server.hub.requests(own, "GET")) == 1
    assert server.hub.bytes_served(own) == own.size
    assert sha256_of(server.models_dir / path) == own.sha256
    assert path in cached_paths(server)


def test_request_models_that_are_wrong_are_refused_and_nothing_is_placed(
        server: OnDemandServer) -> None:
    hub, models_dir = server.hub, server.models_dir
    wrong = hub.add_url("wrong_x2.safetensors", compact_upscaler(seed=21))
    escape = hub.add_file("e2e/user", "escape_x2.safetensors", compact_upscaler(seed=22))
    other = hub.add_file("e2e/user", "other_x2.safetensors", compact_upscaler(seed=23))
    small = server.served[SMALL]
    cache_before = cached_paths(server)
    cases = {
        "wrong sha256": (
            request_entry("upscale_models/user/wrong_x2.safetensors", wrong,
                          sha256=hashlib.sha256(b"other bytes").hexdigest()),
            "user/wrong_x2.safetensors"),
        "a .. path": (request_entry("upscale_models/../escape_x2.safetensors", escape),
                      "../escape_x2.safetensors"),
        "the lock pins the path to other bytes": (request_entry(SMALL, other),
                                                  "small_x2.safetensors"),
    }
    answers = {}
    for name, (entry, model_name) in cases.items():
        r = server.run_sync({"workflow": upscale_workflow(model_name, 4, 4, prefix="bad"),
                             "models": [entry]})
        answers[name] = (r.status_code, r.json())

    status, body = answers["wrong sha256"]  # the job's own pin: 422, not a failing source
    assert (status, body["reference"]) == (422, "job-input-invalid"), body
    assert body["details"][0]["reference"] == "model-hash-mismatch", body
    assert "upscale_models/user/wrong_x2.safetensors" in body["error"], body
    assert hub.bytes_served(wrong) > 0  # it was fetched, hashed and thrown away

    status, body = answers["a .. path"]
    assert (status, body["reference"]) == (422, "job-input-invalid"), body
    assert "models[0]" in body["error"] and ".." in body["error"], body
    assert hub.requests(escape) == []

    status, body = answers["the lock pins the path to other bytes"]
    assert (status, body["reference"]) == (422, "job-input-invalid"), body
    assert SMALL in body["error"], body
    assert small.sha256 in body["error"] and other.sha256 in body["error"], body
    assert hub.requests(other) == []

    assert not (models_dir / "upscale_models/user/wrong_x2.safetensors").exists()
    assert not (models_dir / "escape_x2.safetensors").exists()
    assert not (models_dir.parent / "escape_x2.safetensors").exists()
    assert temp_files(models_dir) == []
    assert sorted(p.name for p in models_dir.rglob(".*.used")
                  if "wrong" in p.name or "escape" in p.name or "small" in p.name) == []
    assert cached_paths(server) == cache_before
    if (models_dir / SMALL).exists():  # test 2 fetched it: the locked bytes, untouched
        assert sha256_of(models_dir / SMALL) == small.sha256

    after = server.run_sync({"workflow": upscale_workflow("small_x2.safetensors", 4, 4,
                                                          prefix="after")})
    assert after.status_code == 200, after.text
    assert [png_of(i) for i in after.json()["images"]] == [(8, 8)]


def test_the_request_cache_evicts_the_least_recently_used_file_never_a_locked_one(
        server: OnDemandServer) -> None:
    hub, models_dir = server.hub, server.models_dir
    locked = server.run_sync({"workflow": upscale_workflow("small_x2.safetensors", 4, 4,
                                                           prefix="lru")})
    assert locked.status_code == 200, locked.text  # the locked upscaler is here, oldest
    own = {name: hub.add_file("e2e/user", f"{name}_x2.safetensors",
                              compact_upscaler(seed=40 + i))
           for i, name in enumerate(("a", "b", "c"))}

    def use(name: str) -> None:
        path = f"upscale_models/user/{name}_x2.safetensors"
        r = server.run_sync({"workflow": upscale_workflow(f"user/{name}_x2.safetensors", 4,
                                                          4, prefix="lru"),
                             "models": [request_entry(path, own[name])]})
        assert r.status_code == 200, r.text
        time.sleep(0.05)  # distinct last-use times, whatever the filesystem's resolution

    for name in ("a", "b", "a", "c"):  # b is now the least recently used of the three
        use(name)

    cache = {f.path: f for f in list_cache(models_dir)}
    assert set(cache) == {"upscale_models/user/a_x2.safetensors",
                          "upscale_models/user/c_x2.safetensors"}, sorted(cache)
    assert sum(f.size for f in cache.values()) <= CACHE_BYTES
    assert not (models_dir / "upscale_models/user/b_x2.safetensors").exists()
    assert not (models_dir / "upscale_models/user/.b_x2.safetensors.used").exists()
    assert len(hub.requests(own["a"], "GET")) == 1  # kept between its two uses
    for path in server.served:  # locked (far over the cap): outside it, never evicted
        if path != GATED:
            assert (models_dir / path).stat().st_size == server.served[path].size, path
    assert sha256_of(models_dir / SMALL) == server.served[SMALL].sha256


def test_a_locked_model_the_server_refuses_fails_only_the_jobs_needing_it(
        server: OnDemandServer) -> None:
    gone = server.run_sync({"workflow": upscale_workflow("gone_x2.safetensors", 4, 4)})
    gated = server.run_sync({"workflow": upscale_workflow("gated_x2.safetensors", 4, 4)})
    fine = server.run_sync({"workflow": upscale_workflow("small_x2.safetensors", 4, 4,
                                                         prefix="fine")})

    assert gone.status_code == 502, gone.text
    assert gone.json()["reference"] == "model-not-found", gone.text
    assert GONE in gone.json()["error"], gone.text
    assert gated.status_code == 502, gated.text
    assert gated.json()["reference"] == "model-gated", gated.text
    assert GATED in gated.json()["error"], gated.text
    assert fine.status_code == 200, fine.text
    assert [png_of(i) for i in fine.json()["images"]] == [(8, 8)]

    status, body = server.health()
    assert status == 200 and body["ready"] is True, body
    failed = {f["path"]: f for f in body["sync"]["failed"]}
    assert set(failed) == {GONE, GATED}, failed
    assert failed[GONE]["reference"] == "model-not-found"
    assert failed[GATED]["reference"] == "model-gated"
    assert not (server.models_dir / GONE).exists()
    assert not (server.models_dir / GATED).exists()
    assert server.proc.poll() is None
