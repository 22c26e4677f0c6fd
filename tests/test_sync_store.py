"""ModelStore (models on demand) against the HF-compatible server on 127.0.0.1 and real
directories: claims, priorities, sharing, failures, close, prefetch and timeouts.
The request cache has its own module, tests/test_sync_store_cache.py."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from support import (
    HFServer,
    ServedFile,
    Valve,
    hf_server_fixture,  # noqa: F401
    lock_entry,
    write_lock_file,
)
from support.verify_reads import VerifyReads
from support.waiting import wait_for

from comfy_worker.config import load_settings
from comfy_worker.errors import (
    GatedModel,
    JobCancelled,
    ModelNotFound,
    ModelWaitTimeout,
    ShuttingDown,
)
from comfy_worker.job.events import WaitProgress
from comfy_worker.lockfile import LockEntry, load_lock, parse_lock
from comfy_worker.sync import ModelStore, prepare_model_paths

MIB = 1024 * 1024


def data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)




def make_store(stores: list[ModelStore], hub: HFServer, tmp: Path,
               files: dict[str, ServedFile], *, prefetch: bool = True,
               models_dir: str = "models", **kw: object) -> ModelStore:
    values: dict[str, object] = {"lock_path": tmp / "models.lock.json",
                                 "models_dir": tmp / models_dir, "retries": 1}
    values.update(kw)
    settings = load_settings(env={"HF_ENDPOINT": hub.endpoint,
                                  "COMFY_WORKER_URL_ALLOW": "127.0.0.1/32"}, **values)
    write_lock_file(settings.lock_path, files)
    lock = load_lock(settings.lock_path)
    store = ModelStore(settings, lock, prepare_model_paths(settings, lock), prefetch=prefetch)
    stores.append(store)
    return store


def entry(store: ModelStore, path: str) -> LockEntry:
    found = store.lock.entry(path)
    assert found is not None
    return found


def entry_for(path: str, served: ServedFile) -> LockEntry:
    return parse_lock({"version": 1, "models": [lock_entry(path, served)]}).models[0]


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".incomplete")]


def bytes_of(store: ModelStore, path: str) -> int:
    """Bytes of ``path`` here: its size once present, else what its download wrote."""
    for d in store.status().downloading:
        if d.path == path:
            return d.bytes_done
    target = store.paths.roots[-1] / path
    return target.stat().st_size if target.is_file() else 0


# --- a job waits only for its own files ------------------------------------------------


def test_a_job_needing_a_file_still_downloading_waits_for_it_and_gets_it(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    with HFServer(per_connection_bps=2_000_000) as hub:  # 6 MiB on 2 connections: ~1.6 s
        big = hub.add_file("acme/ckpt", "big.safetensors", data(6 * MIB))
        path = "checkpoints/big.safetensors"
        store = make_store(stores, hub, tmp_path, {path: big}, connections=2)
        store.start()
        wait_for(lambda: bytes_of(store, path) >= MIB // 2)  # the background has it going
        reports: list[WaitProgress] = []

        t0 = time.monotonic()
        with store.ensure([entry(store, path)]) as claim:
            assert [d.priority for d in store.status().downloading] == ["job"]  # raised
            where = claim.wait(timeout=60, on_progress=reports.append)
        waited = time.monotonic() - t0

        assert sha_of(where[path]) == big.sha256
        assert where[path] == tmp_path / "models" / path
        # Raised in place, not restarted: every byte crossed the wire once.
        assert hub.bytes_served(big) == big.size
        assert reports, "no progress while waiting"
        assert len(reports) <= waited / 1.0 + 1  # about once a second at most
        first = reports[0].to_json()
        assert first["stage"] == "models" and first["waiting_for"] == [path]
        assert first["files_total"] == 1 and first["bytes_total"] == big.size
        assert 0 < first["bytes_done"] < big.size


def test_a_job_file_not_yet_started_is_fetched_ahead_of_earlier_background_files(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    # Scripted, not timed: each file's bytes go out only as the test's valves allow, so
    # every step below is a state the test waits for, whatever the machine's load.
    with HFServer() as hub:
        background = {f"checkpoints/bg{i}.safetensors": hub.add_file(
            "acme/bg", f"bg{i}.safetensors", data(6 * MIB, seed=i)) for i in range(6)}
        valves = {path: Valve(2 * MIB) for path in background}
        for path, valve in valves.items():
            background[path].valve = valve
        job_file = hub.add_file("acme/job", "j.safetensors", data(16 * MIB, seed=9))
        job_file.valve = Valve(8 * MIB)
        files = {**background, "loras/j.safetensors": job_file}  # last in the lock
        # jobs=2: two files download (4 connection slots), two more are located by the
        # other background threads and wait for a file slot; the job's file is still in
        # the queue, not started.
        store = make_store(stores, hub, tmp_path, files, jobs=2, connections=2)
        store.start()

        def held() -> list[str]:  # files at 2 MiB with both connections held
            return [p for p, v in valves.items() if v.sent == 2 * MIB and v.waiting == 2]

        wait_for(lambda: len(held()) == 2)
        downloading = held()
        assert hub.requests(job_file, "GET") == []  # (maybe located, waiting for a slot)
        assert store.status().files_done == 0

        with store.ensure([entry(store, "loras/j.safetensors")]) as claim:
            job_file.valve.wait_until(sent=8 * MIB, waiting=1)  # the job's file runs
            # The background connections get bytes again while the job's file is half
            # done: each finishes the block it was reading (1 MiB), then gives its
            # connection up (4 connections: at most 4 MiB more in all).
            for valve in valves.values():
                valve.allow(None)
            wait_for(lambda: all(q.ended is not None for p in downloading
                                 for q in hub.requests(files[p], "GET")))
            yielded = sum(bytes_of(store, p) for p in downloading)
            assert yielded <= 2 * 2 * MIB + 4 * MIB, f"background got {yielded} bytes"
            for valve in valves.values():  # (so the state after the job stays still)
                valve.hold()
            job_file.valve.allow(None)
            where = claim.wait(timeout=60)
        status = store.status()

        assert sha_of(where["loras/j.safetensors"]) == job_file.sha256
        assert status.files_done == 1, "a background file finished first"
        assert not any((tmp_path / "models" / p).exists() for p in background)
        # While the job's file ran, the background took no byte more than its last block.
        assert sum(bytes_of(store, p) for p in downloading) == yielded
        assert {d.priority for d in status.downloading} <= {"background"}

        for valve in valves.values():
            valve.allow(None)
        report = store.wait_all()  # the background then finishes
        assert [f.path for f in report.files] == list(files)
        for path, served in files.items():
            assert sha_of(tmp_path / "models" / path) == served.sha256
        # Yielding resumed each range where it stopped: only what was in flight on a
        # given-up connection was lost (< 1 MiB per file).
        assert hub.bytes_served(job_file) == job_file.size
        for path in downloading:
            served = files[path]
            assert 0 <= hub.bytes_served(served) - served.size < MIB


def test_two_concurrent_claims_of_one_file_cause_one_download(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    with HFServer(per_connection_bps=4_000_000) as hub:
        served = hub.add_file("acme/ckpt", "m.safetensors", data(4 * MIB))
        path = "checkpoints/m.safetensors"
        store = make_store(stores, hub, tmp_path, {path: served}, prefetch=False,
                           connections=4)
        store.start()
        barrier = threading.Barrier(2)
        got: list[Path] = []

        def job() -> None:
            barrier.wait()
            with store.ensure([entry(store, path)]) as claim:
                got.append(claim.wait(timeout=60)[path])

        threads = [threading.Thread(target=job) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        assert got == [tmp_path / "models" / path] * 2
        assert sha_of(got[0]) == served.sha256
        gets = hub.requests(served, "GET")
        assert len(gets) == len({q.range for q in gets}) >= 4, "a range was fetched twice"
        assert hub.bytes_served(served) == served.size
        assert len([q for q in hub.requests(served) if "/resolve/" in q.path]) == 1


def test_present_files_are_done_at_once_and_a_warm_store_reads_nothing(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore],
        verify_reads: VerifyReads) -> None:
    files = {f"loras/l{i}.safetensors": hf_server.add_file("acme/l", f"l{i}.safetensors",
                                                          data(300_000, seed=i))
             for i in range(3)}
    store = make_store(stores, hf_server, tmp_path, files)
    store.wait_all()
    store.close()
    hf_server.reset_counters()
    read_before = verify_reads.value

    warm = make_store(stores, hf_server, tmp_path, files)  # a restarted worker
    warm.start()
    wait_for(lambda: warm.status().checked)
    claim = warm.ensure([entry(warm, p) for p in files])
    where = claim.wait(timeout=0)  # nothing to wait for
    claim.release()

    assert set(where) == set(files)
    status = warm.status()
    assert (status.files_done, status.bytes_done) == (3, sum(f.size for f in files.values()))
    assert status.complete and status.failed == () and status.downloading == ()
    assert hf_server.requests() == []
    assert verify_reads.value == read_before


# --- failures --------------------------------------------------------------------------


def test_a_failed_file_fails_only_its_claims_and_a_later_ensure_retries_it(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore],
        caplog: pytest.LogCaptureFixture) -> None:
    good = hf_server.add_file("acme/ok", "good.safetensors", data(200_000, seed=1))
    missing = hf_server.add_file("acme/ok", "gone.safetensors", data(200_001, seed=2))
    gated = hf_server.add_file("acme/gated", "g.safetensors", data(200_002, seed=3))
    missing.faults.status_always = 404
    hf_server.gate("acme/gated", allowed_tokens=("hf_other",))
    files = {"loras/good.safetensors": good, "loras/gone.safetensors": missing,
             "loras/g.safetensors": gated}
    store = make_store(stores, hf_server, tmp_path, files)
    caplog.set_level(logging.WARNING, logger="comfy_worker.sync.store")

    store.start()  # the background sync meets both failures and goes on
    wait_for(lambda: len(store.status().failed) == 2 and store.status().files_done == 1)
    status = store.status()
    assert {(f.path, f.reference) for f in status.failed} == {
        ("loras/gone.safetensors", "model-not-found"), ("loras/g.safetensors", "model-gated")}
    assert status.to_json()["failed"][0].keys() == {"path", "reference", "error"}
    assert "the other files go on" in caplog.text

    with store.ensure([entry(store, "loras/good.safetensors"),
                       entry(store, "loras/gone.safetensors")]) as claim, \
            pytest.raises(ModelNotFound) as err:
        claim.wait(timeout=30)
    assert "loras/gone.safetensors" in str(err.value)
    with store.ensure([entry(store, p) for p in files]) as claim, \
            pytest.raises((ModelNotFound, GatedModel)):
        claim.wait(timeout=30)
    with store.ensure([entry(store, "loras/g.safetensors")]) as claim, \
            pytest.raises(GatedModel, match="HF_TOKEN"):
        claim.wait(timeout=30)
    with store.ensure([entry(store, "loras/good.safetensors")]) as claim:  # unaffected
        assert sha_of(claim.wait(timeout=30)["loras/good.safetensors"]) == good.sha256

    missing.faults.status_always = None  # the source is back: the next job tries again
    with store.ensure([entry(store, "loras/gone.safetensors")]) as claim:
        assert sha_of(claim.wait(timeout=30)["loras/gone.safetensors"]) == missing.sha256
    assert [f.path for f in store.status().failed] == ["loras/g.safetensors"]
    assert temp_files(tmp_path) == []
    assert not (tmp_path / "models" / "loras" / "g.safetensors").exists()


def test_wait_all_raises_the_first_failure(hf_server: HFServer, tmp_path: Path,
                                           stores: list[ModelStore]) -> None:
    good = hf_server.add_file("acme/ok", "good.safetensors", data(100_000, seed=1))
    bad = hf_server.add_file("acme/ok", "bad.safetensors", data(100_001, seed=2))
    bad.faults.status_always = 404
    store = make_store(stores, hf_server, tmp_path, {"loras/good.safetensors": good,
                                                     "loras/bad.safetensors": bad},
                       prefetch=False)

    with pytest.raises(ModelNotFound, match=r"loras/bad\.safetensors"):
        store.wait_all()

    bad.faults.status_always = None
    report = store.wait_all()  # tried again
    assert [f.action for f in report.files] == ["downloaded", "downloaded"]


# --- waiting: timeout and cancel --------------------------------------------------------


def test_a_wait_past_its_timeout_raises_model_wait_timeout_and_the_download_goes_on(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    with HFServer(per_connection_bps=1_000_000) as hub:
        served = hub.add_file("acme/ckpt", "slow.safetensors", data(3 * MIB))
        path = "checkpoints/slow.safetensors"
        store = make_store(stores, hub, tmp_path, {path: served}, prefetch=False,
                           connections=2)
        with store.ensure([entry(store, path)]) as claim:
            t0 = time.monotonic()
            with pytest.raises(ModelWaitTimeout) as err:
                claim.wait(timeout=0.5)
            assert time.monotonic() - t0 < 1.5
            assert path in err.value.message
            assert "COMFY_WORKER_MODEL_WAIT_TIMEOUT" in str(err.value)
            assert err.value.status == 504 and err.value.reference == "model-wait-timeout"
            assert err.value.details[0]["path"] == path
            assert err.value.details[0]["bytes_total"] == served.size

            assert sha_of(claim.wait(timeout=60)[path]) == served.sha256  # it went on
        assert hub.bytes_served(served) == served.size


def test_a_cancelled_job_stops_waiting_with_job_cancelled(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    with HFServer(per_connection_bps=500_000) as hub:
        served = hub.add_file("acme/ckpt", "slow.safetensors", data(4 * MIB))
        path = "checkpoints/slow.safetensors"
        store = make_store(stores, hub, tmp_path, {path: served}, prefetch=False)
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()

        t0 = time.monotonic()
        with store.ensure([entry(store, path)]) as claim, pytest.raises(JobCancelled) as err:
            claim.wait(timeout=60, cancel=cancel)

        assert time.monotonic() - t0 < 1.5
        assert path in str(err.value)


# --- background prefetch ------------------------------------------------------------


def test_without_prefetch_nothing_unasked_is_downloaded(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    a = hf_server.add_file("acme/l", "a.safetensors", data(200_000, seed=1))
    b = hf_server.add_file("acme/l", "b.safetensors", data(200_001, seed=2))
    store = make_store(stores, hf_server, tmp_path, {"loras/a.safetensors": a,
                                                     "loras/b.safetensors": b},
                       prefetch=False)
    store.start()
    wait_for(lambda: store.status().checked)
    time.sleep(0.3)

    assert hf_server.requests() == []
    status = store.status()
    assert (status.files_done, status.files_total, status.prefetch) == (0, 2, False)

    with store.ensure([entry(store, "loras/a.safetensors")]) as claim:
        claim.wait(timeout=30)
    assert hf_server.bytes_served(a) == a.size
    assert hf_server.requests(b) == []
    assert store.status().files_done == 1


def test_with_prefetch_the_whole_lock_arrives_in_the_background(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    files = {f"loras/l{i}.safetensors": hf_server.add_file("acme/l", f"l{i}.safetensors",
                                                          data(150_000 + i, seed=i))
             for i in range(5)}
    store = make_store(stores, hf_server, tmp_path, files, jobs=2)
    store.start()

    wait_for(lambda: store.status().complete)

    status = store.status()
    assert status.bytes_done == status.bytes_total == sum(f.size for f in files.values())
    for path, served in files.items():
        assert sha_of(tmp_path / "models" / path) == served.sha256
        assert hf_server.bytes_served(served) == served.size


# --- close ----------------------------------------------------------------------------------


def test_close_stops_downloads_leaves_no_temp_files_and_keeps_completed_ones(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    with HFServer(per_connection_bps=1_000_000) as hub:
        small = hub.add_file("acme/l", "small.safetensors", data(100_000, seed=1))
        big = hub.add_file("acme/ckpt", "big.safetensors", data(8 * MIB, seed=2))
        files = {"loras/small.safetensors": small, "checkpoints/big.safetensors": big}
        store = make_store(stores, hub, tmp_path, files, connections=2)
        store.start()
        wait_for(lambda: store.status().files_done == 1
                 and bytes_of(store, "checkpoints/big.safetensors") > 256 * 1024)
        claim = store.ensure([entry(store, "checkpoints/big.safetensors")])
        outcome: list[BaseException] = []

        def job() -> None:
            try:
                claim.wait(timeout=60)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=job)
        waiter.start()
        time.sleep(0.2)

        t0 = time.monotonic()
        store.close()
        closed_in = time.monotonic() - t0
        waiter.join(timeout=5)

        assert closed_in < 2.0, f"close took {closed_in:.1f} s"
        assert len(outcome) == 1 and isinstance(outcome[0], ShuttingDown), outcome
        claim.release()
        models = tmp_path / "models"
        assert temp_files(models) == []
        assert not (models / "checkpoints" / "big.safetensors").exists()
        assert sha_of(models / "loras" / "small.safetensors") == small.sha256
        assert (models / "loras" / ".small.safetensors.verified").is_file()
        time.sleep(0.5)  # the server counts a request's bytes when its handler ends
        served_then = hub.bytes_served(big)
        time.sleep(1.0)
        assert hub.bytes_served(big) == served_then, "a connection went on after close"
        assert served_then < big.size
        with pytest.raises(ShuttingDown):
            store.ensure([entry(store, "loras/small.safetensors")])


def test_close_without_cancel_lets_in_flight_files_finish_for_their_claims(
        tmp_path: Path, stores: list[ModelStore]) -> None:
    with HFServer(per_connection_bps=2_000_000) as hub:
        served = hub.add_file("acme/ckpt", "m.safetensors", data(2 * MIB))
        other = hub.add_file("acme/ckpt", "later.safetensors", data(100_000, seed=1))
        path = "checkpoints/m.safetensors"
        store = make_store(stores, hub, tmp_path, {path: served,
                                                   "loras/later.safetensors": other},
                           prefetch=False, connections=2)
        claim = store.ensure([entry(store, path)])
        wait_for(lambda: bytes_of(store, path) > 0)
        got: list[Mapping[str, Path]] = []
        waiter = threading.Thread(target=lambda: got.append(claim.wait(timeout=60)))
        waiter.start()

        store.close(cancel=False)  # returns once the download is done
        waiter.join(timeout=10)
        claim.release()

        assert got and sha_of(got[0][path]) == served.sha256
        with pytest.raises(ShuttingDown):
            store.ensure([entry(store, "loras/later.safetensors")])
        assert hub.requests(other) == []
