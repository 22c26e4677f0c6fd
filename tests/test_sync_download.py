"""One file's download (sync.download): ranges, hashing as the bytes land, resume,
pause, cancel and priorities, against the HF-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from support import (
    HFServer,
    ServedFile,
    hf_server_fixture,  # noqa: F401
    write_lock_file,
)
from support.waiting import wait_for

from comfy_worker.config import load_settings
from comfy_worker.errors import ModelHashMismatch
from comfy_worker.sync import sync_models
from comfy_worker.sync.download import Cancelled, Download, Gate, Transient, Tuning

MIB = 1024 * 1024


def random_bytes(size: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def download_of(served: ServedFile, dest: Path, *, connections: int = 4,
                chunk: int = MIB, gate: Gate | None = None, priority: int = 0) -> Download:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.touch()
    return Download(served.url, {}, dest,
                    size=served.size, ranges=True,
                    http_error=lambda status: Transient(f"answered {status}"),
                    tuning=Tuning(connections=connections, chunk_size=chunk, retries=2,
                                  stall_timeout=10),
                    gate=gate, priority=priority)


def run_in_thread(download: Download) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def go() -> None:
        try:
            out["sha256"] = download.run()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out




# --- the hash -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["first byte", "middle range", "last byte"])
def test_a_corrupted_byte_in_any_range_is_caught_before_the_final_name_exists(
        hf_server: HFServer, tmp_path: Path, where: str) -> None:
    data = random_bytes(5 * MIB + 12345)  # 6 ranges of 1 MiB with 8 connections
    served = hf_server.add_file("acme/m", "m.safetensors", data)
    offset = {"first byte": 0, "middle range": 3 * MIB + 77, "last byte": len(data) - 1}[where]
    served.faults.corrupt_times = -1
    served.faults.corrupt_at = offset
    write_lock_file(tmp_path / "models.lock.json", {"checkpoints/m.safetensors": served})
    final = tmp_path / "models" / "checkpoints" / "m.safetensors"
    settings = load_settings(env={"HF_ENDPOINT": hf_server.endpoint},
                             lock_path=tmp_path / "models.lock.json",
                             models_dir=tmp_path / "models", retries=0)
    seen = threading.Event()
    stop = threading.Event()

    def watch() -> None:  # the final name must never appear, not even for a moment
        while not stop.is_set():
            if final.exists():
                seen.set()
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(ModelHashMismatch) as err:
            sync_models(settings, progress=False)
    finally:
        stop.set()
        watcher.join()

    corrupted = bytearray(data)
    corrupted[offset] ^= 0xFF
    assert hashlib.sha256(bytes(corrupted)).hexdigest() in str(err.value)
    assert not seen.is_set() and not final.exists()
    assert not any(p.name.endswith(".incomplete") for p in tmp_path.rglob("*"))
    gets = [q for q in hf_server.requests(served, "GET") if q.range]
    assert len(gets) == 6, "the file came in several ranges"


def test_a_range_cut_midway_is_resumed_where_it_stopped_and_hashed_right(
        hf_server: HFServer, tmp_path: Path) -> None:
    data = random_bytes(5 * MIB)
    served = hf_server.add_url("m.bin", data)
    served.faults.cut_times = 1
    served.faults.cut_after = 300_000
    served.faults.cut_start = 2 * MIB  # the third range
    dl = download_of(served, tmp_path / "m.bin")

    sha = dl.run()

    assert sha == served.sha256 == hashlib.sha256((tmp_path / "m.bin").read_bytes()).hexdigest()
    ranges = [(q.range, q.body_bytes) for q in hf_server.requests(served, "GET")]
    assert (f"bytes={2 * MIB}-{3 * MIB - 1}", 300_000) in ranges
    assert (f"bytes={2 * MIB + 300_000}-{3 * MIB - 1}", MIB - 300_000) in ranges  # resumed
    assert hf_server.bytes_served(served) == served.size  # no byte fetched twice
    assert dl.range_retries == 1


def test_the_hash_follows_the_bytes_so_little_is_left_after_the_last_one(
        tmp_path: Path) -> None:
    with HFServer(per_connection_bps=4_000_000) as hub:  # ~1 s for 8 MiB on 2 connections
        served = hub.add_url("m.bin", random_bytes(8 * MIB))
        dl = download_of(served, tmp_path / "m.bin", connections=2)
        hashed_mid_download: list[int] = []

        def sample(_n: int) -> None:
            if dl.received < served.size:
                hashed_mid_download.append(dl.hashed)

        dl.on_bytes = sample
        sha = dl.run()

    assert sha == served.sha256
    assert max(hashed_mid_download) >= 4 * MIB, "hashing waited for the last byte"
    assert dl.tail_hashed is not None and dl.tail_hashed <= 2 * MIB  # one range per connection


# --- cancel, priorities --------------------------------------------------------


def test_cancel_stops_every_connection_at_once(tmp_path: Path) -> None:
    with HFServer(per_connection_bps=1_000_000) as hub:  # 8 MiB would take ~2 s per range
        served = hub.add_url("m.bin", random_bytes(8 * MIB))
        dl = download_of(served, tmp_path / "m.bin", connections=4, chunk=2 * MIB)
        thread, out = run_in_thread(dl)
        wait_for(lambda: dl.received > 0)

        dl.cancel()
        thread.join(timeout=3)  # blocked reads are woken, not waited out

        assert not thread.is_alive()
        assert isinstance(out.get("error"), Cancelled), out
        time.sleep(0.3)
        served_after = hub.bytes_served(served)
        time.sleep(1.0)
        assert hub.bytes_served(served) == served_after, "a connection went on"


def test_a_higher_priority_download_gets_the_connections_first(tmp_path: Path) -> None:
    with HFServer(per_connection_bps=2_000_000) as hub:
        background = hub.add_url("bg.bin", random_bytes(8 * MIB, seed=1))
        urgent = hub.add_url("urgent.bin", random_bytes(2 * MIB, seed=2))
        gate = Gate(2)  # both downloads share two connections
        low = download_of(background, tmp_path / "bg.bin", connections=2, chunk=4 * MIB,
                          gate=gate, priority=0)  # 2 s per range: it must yield mid-range
        high = download_of(urgent, tmp_path / "urgent.bin", connections=2,
                           gate=gate, priority=10)
        low_thread, low_out = run_in_thread(low)
        wait_for(lambda: low.received >= MIB // 2)

        high_thread, high_out = run_in_thread(high)
        high_thread.join(timeout=30)
        assert not low_out, "the background download finished first"
        low_thread.join(timeout=60)

    assert high_out.get("sha256") == urgent.sha256, high_out
    assert low_out.get("sha256") == background.sha256, low_out
    # While the urgent file had a range for each connection, both were its own: the
    # background download started no request until one of the urgent ranges was done.
    urgent_gets = hub.requests(urgent, "GET")
    assert len(urgent_gets) == 2
    start = min(q.started for q in urgent_gets)
    first_done = min(q.ended for q in urgent_gets)
    started_meanwhile = [q.range for q in hub.requests(background, "GET")
                         if start < q.started < first_done]
    assert started_meanwhile == [], "the background download kept its connections"
    # It gave them up mid-range (at a block), and resumed those ranges afterwards.
    bg = hub.requests(background, "GET")
    assert any(q.body_bytes < 4 * MIB for q in bg if q.started < start)
    assert any(int(q.range[6:].split("-")[0]) % (4 * MIB) for q in bg if q.started > start)


def test_gate_grants_a_freed_slot_to_the_highest_priority_waiter() -> None:
    gate = Gate(1)
    never = threading.Event()
    assert gate.acquire(0, never)
    order: list[int] = []

    def wait(priority: int) -> None:
        assert gate.acquire(priority, never)
        order.append(priority)
        gate.release()

    waiters = []
    for priority in (1, 5, 3):  # arrive in this order
        t = threading.Thread(target=wait, args=(priority,))
        t.start()
        waiters.append(t)
        count = len(waiters)
        wait_for(lambda count=count: len(gate._waiting) == count)
    assert gate.must_yield(0) and gate.must_yield(4) and not gate.must_yield(5)

    gate.release()
    for t in waiters:
        t.join(timeout=5)

    assert order == [5, 3, 1]


def test_gate_lends_a_job_slots_at_once_while_background_downloads_still_hold_them() -> None:
    gate = Gate(2)
    never = threading.Event()
    gate.enter(0)  # a background download holds every slot
    assert gate.acquire(0, never) and gate.acquire(0, never)
    gate.enter(10)  # a job's file: it must not wait for the background's next block
    assert gate.must_yield(0)
    got: list[bool] = []
    for _ in range(3):
        t = threading.Thread(target=lambda: got.append(gate.acquire(10, never)))
        t.start()
        t.join(timeout=0.3)
    assert got == [True, True], "lent at once, at most twice the slots in use"
    gate.release()  # the background gives one back at its block: the third goes
    wait_for(lambda: len(got) == 3)
    stop = threading.Event()
    stop.set()
    assert not gate.acquire(0, stop), "a lower priority gets nothing while the job runs"
