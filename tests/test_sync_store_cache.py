"""The request cache of ModelStore: models a job brings, fetched and verified like
locked ones, kept on disk under a size cap with the least recently used evicted first;
against the HF-compatible server on 127.0.0.1 and real directories."""

from __future__ import annotations

import hashlib
import os
import random
import time
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
from support.waiting import wait_for

from comfy_worker.config import load_settings
from comfy_worker.errors import (
    JobInputInvalid,
    ModelCacheFull,
    ModelHashMismatch,
    ModelNotFound,
    ModelPathConflict,
    SyncError,
)
from comfy_worker.lockfile import LockEntry, load_lock, parse_lock
from comfy_worker.sync import ModelStore, prepare_model_paths
from comfy_worker.sync.cache import (
    CachedFile,
    bytes_to_free,
    eviction_order,
    list_cache,
    plan_eviction,
)

MIB = 1024 * 1024


def data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def make_store(stores: list[ModelStore], hub: HFServer, tmp: Path,
               files: dict[str, ServedFile] | None = None, *, cache_bytes: int = 10 * MIB,
               local: str = "local", volume: Path | None = None) -> ModelStore:
    # The job models' URLs are the test server's (127.0.0.1): opened as an operator would.
    settings = load_settings(env={"HF_ENDPOINT": hub.endpoint,
                                  "COMFY_WORKER_URL_ALLOW": "127.0.0.1/32"},
                             lock_path=tmp / f"{local}.lock.json", models_dir=tmp / local,
                             volume=volume, retries=1)
    write_lock_file(settings.lock_path, files or {})
    lock = load_lock(settings.lock_path)
    store = ModelStore(settings, lock, prepare_model_paths(settings, lock), prefetch=False,
                       cache_bytes=cache_bytes)
    stores.append(store)
    return store


def requested(path: str, served: ServedFile, *, sha256: str | None = None) -> LockEntry:
    raw = lock_entry(path, served)
    if sha256 is not None:
        raw["sha256"] = sha256
    return parse_lock({"version": 1, "models": [raw]}).models[0]


def use(store: ModelStore, *entries: LockEntry) -> dict[str, Path]:
    """One job: claim, wait, release."""
    with store.ensure(list(entries), requested=True) as claim:
        return dict(claim.wait(timeout=30))


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sidecar(location: Path) -> Path:
    return location.with_name(f".{location.name}.used")


def leftovers(location: Path) -> list[str]:
    """The file and anything of it beside it (temp file, sidecar, record)."""
    return sorted(p.name for p in location.parent.glob(f"*{location.name}*")
                  if not p.name.endswith(".lock"))


def test_a_request_model_is_fetched_once_into_the_volume_and_reused(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    served = hf_server.add_file("users/u1", "style.safetensors", data(400_000))
    e = requested("loras/u1-style.safetensors", served)
    (tmp_path / "vol").mkdir()
    store = make_store(stores, hf_server, tmp_path, volume=tmp_path / "vol")

    where = use(store, e)[e.path]

    assert where == tmp_path / "vol" / "models" / e.path  # other workers can reuse it
    assert sha_of(where) == served.sha256
    assert sidecar(where).is_file() and where.with_name(f".{where.name}.verified").is_file()
    assert hf_server.bytes_served(served) == served.size
    assert store.status().files_total == 0  # not part of the lock's status

    os.utime(sidecar(where), (1_000, 1_000))
    hf_server.reset_counters()
    assert use(store, e)[e.path] == where  # used again: no request at all
    assert hf_server.requests() == []
    assert sidecar(where).stat().st_mtime > time.time() - 60  # the use was recorded

    # A restarted worker (its own local dir) finds it, and lists it as a request file.
    again = make_store(stores, hf_server, tmp_path, local="local2", volume=tmp_path / "vol")
    assert use(again, e)[e.path] == where
    assert hf_server.requests() == []
    assert [(f.path, f.size) for f in list_cache(tmp_path / "vol" / "models")] == [
        (e.path, served.size)]


def test_without_a_volume_a_request_model_goes_to_the_local_models_dir(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    served = hf_server.add_url("u2.safetensors", data(200_000, seed=2))
    e = requested("loras/u2.safetensors", served)
    store = make_store(stores, hf_server, tmp_path, volume=tmp_path / "not-mounted")

    where = use(store, e)[e.path]

    assert where == tmp_path / "local" / e.path
    assert sha_of(where) == served.sha256 and sidecar(where).is_file()
    assert not (tmp_path / "not-mounted").exists()


@pytest.mark.parametrize("kind", ["huggingface", "url"])
def test_a_wrong_sha256_in_a_request_entry_is_refused_with_nothing_placed(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore], kind: str) -> None:
    payload = data(300_000, seed=3)
    served = (hf_server.add_file("users/u3", "x.safetensors", payload) if kind == "huggingface"
              else hf_server.add_url("x.safetensors", payload))
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    e = requested("loras/x.safetensors", served, sha256=wrong)
    store = make_store(stores, hf_server, tmp_path)

    with store.ensure([e], requested=True) as claim, \
            pytest.raises(ModelHashMismatch) as err:
        claim.wait(timeout=30)

    assert e.path in err.value.message and wrong in err.value.message
    # A job's source is a stranger's: the error is no oracle of what it holds (issue 16).
    assert served.sha256 not in str(err.value) and str(served.size) not in str(err.value)
    if kind == "huggingface":  # the Hub's LFS metadata names the sha256: no byte fetched
        assert hf_server.bytes_served(served) == 0
    else:  # a plain URL: downloaded once, hashed as it landed, refused (a job's pin is
        assert hf_server.bytes_served(served) == served.size  # its own: not retried)
    assert leftovers(tmp_path / "local" / e.path) == []


def test_the_cache_cap_evicts_the_least_recently_used_request_file_never_a_locked_one(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    locked = hf_server.add_file("acme/base", "base.safetensors", data(MIB, seed=9))
    store = make_store(stores, hf_server, tmp_path, {"checkpoints/base.safetensors": locked},
                       cache_bytes=int(2.5 * MIB))
    # The locked file is on disk with a sidecar (another worker once had it as a request
    # file), last used long ago: still never evicted by this worker.
    base = tmp_path / "local" / "checkpoints" / "base.safetensors"
    base.parent.mkdir(parents=True)
    base.write_bytes(locked.read(0, locked.size))
    sidecar(base).write_text("{}")
    os.utime(sidecar(base), (1_000, 1_000))
    r = {i: requested(f"loras/r{i}.safetensors",
                      hf_server.add_file("users/r", f"r{i}.safetensors", data(MIB, seed=i)))
         for i in range(1, 6)}
    local = tmp_path / "local" / "loras"

    use(store, r[1])
    time.sleep(0.05)
    use(store, r[2])
    time.sleep(0.05)
    use(store, r[1])  # r1 used again: r2 is now the least recently used
    time.sleep(0.05)
    use(store, r[3])  # 3 MiB > 2.5 MiB: one must go

    assert sorted(p.name for p in local.glob("r*")) == ["r1.safetensors", "r3.safetensors"]
    assert leftovers(local / "r2.safetensors") == []  # file, sidecar and record gone
    assert base.is_file() and sidecar(base).is_file()

    # r1 is the least recently used now, but a live claim holds it: r3 goes instead.
    with store.ensure([r[1]], requested=True) as holding:
        holding.wait(timeout=30)
        time.sleep(0.05)
        use(store, r[4])
        assert sorted(p.name for p in local.glob("r*")) == ["r1.safetensors",
                                                           "r4.safetensors"]

        # With r1 and r4 both held nothing can go: r5 does not fit, and says why.
        with store.ensure([r[4]], requested=True) as also:
            also.wait(timeout=30)
            with pytest.raises(ModelCacheFull) as err:
                store.ensure([r[5]], requested=True)
    assert "COMFY_WORKER_MODEL_CACHE_BYTES" in str(err.value) and r[5].path in str(err.value)
    assert err.value.status == 507
    assert leftovers(local / "r5.safetensors") == []
    assert hf_server.bytes_served() == 4 * MIB  # r1 to r4 once each; nothing of r5


def test_a_request_model_larger_than_the_cap_is_refused_before_any_byte(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    served = hf_server.add_file("users/big", "big.safetensors", data(2 * MIB))
    e = requested("checkpoints/big.safetensors", served)
    store = make_store(stores, hf_server, tmp_path, cache_bytes=MIB)

    with pytest.raises(ModelCacheFull):
        store.ensure([e], requested=True)  # refused at the claim: no task, no HEAD

    assert hf_server.requests(served) == []
    assert leftovers(tmp_path / "local" / e.path) == []


def test_workers_sharing_a_volume_never_evict_a_file_the_other_uses(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    (tmp_path / "vol").mkdir()
    a = make_store(stores, hf_server, tmp_path, local="a", volume=tmp_path / "vol",
                   cache_bytes=int(1.5 * MIB))
    b = make_store(stores, hf_server, tmp_path, local="b", volume=tmp_path / "vol",
                   cache_bytes=int(1.5 * MIB))
    r1 = requested("loras/r1.safetensors",
                   hf_server.add_file("users/r", "r1.safetensors", data(MIB, seed=1)))
    r2 = requested("loras/r2.safetensors",
                   hf_server.add_file("users/r", "r2.safetensors", data(MIB, seed=2)))
    vol = tmp_path / "vol" / "models" / "loras"

    with a.ensure([r1], requested=True) as job_on_a:
        job_on_a.wait(timeout=30)
        # b sees a's file in the shared cache (2 MiB > 1.5 MiB with r2) but a uses it.
        with b.ensure([r2], requested=True) as claim, pytest.raises(ModelCacheFull):
            claim.wait(timeout=30)  # a's file is a candidate until its flock refuses
        assert (vol / "r1.safetensors").is_file()

    use(b, r2)  # a is done with r1: now it may go

    assert sorted(p.name for p in vol.glob("r*")) == ["r2.safetensors"]
    assert leftovers(vol / "r1.safetensors") == []


def test_a_request_naming_a_locked_path_must_pin_the_locked_bytes(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    locked = hf_server.add_file("acme/base", "base.safetensors", data(100_000, seed=1))
    other = hf_server.add_file("users/x", "base.safetensors", data(100_000, seed=2))
    store = make_store(stores, hf_server, tmp_path, {"checkpoints/base.safetensors": locked})

    with pytest.raises(ModelPathConflict) as err:
        store.ensure([requested("checkpoints/base.safetensors", other)], requested=True)
    assert err.value.status == 409 and locked.sha256 in err.value.message

    # The same bytes: it is the locked file, not a request file.
    where = use(store, requested("checkpoints/base.safetensors", locked))
    assert sha_of(where["checkpoints/base.safetensors"]) == locked.sha256
    assert not sidecar(where["checkpoints/base.safetensors"]).exists()


@pytest.mark.parametrize("path", ["loras/../../etc/x.safetensors", "/abs/x.safetensors",
                                  "nofolder.safetensors", "loras/.hidden"])
def test_a_request_with_an_unsafe_path_is_refused(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore], path: str) -> None:
    served = hf_server.add_file("users/x", "x.safetensors", data(1000))
    store = make_store(stores, hf_server, tmp_path)
    e = LockEntry(path=path, source=requested("loras/x.safetensors", served).source,
                  sha256=served.sha256, size=served.size)

    with pytest.raises(JobInputInvalid, match="path"):
        store.ensure([e], requested=True)

    assert hf_server.requests() == []


# --- the decisions (pure) ---------------------------------------------------------------


def test_bytes_to_free_counts_the_cap_and_the_disk() -> None:
    assert bytes_to_free(cached=0, pending=0, size=5, cap=10, free_disk=100) == 0
    assert bytes_to_free(cached=8, pending=0, size=5, cap=10, free_disk=100) == 3
    assert bytes_to_free(cached=4, pending=4, size=5, cap=10, free_disk=100) == 3
    assert bytes_to_free(cached=0, pending=0, size=5, cap=10, free_disk=2) == 3  # disk


def test_eviction_order_is_least_recently_used_first_without_protected_files() -> None:
    files = [CachedFile(f"loras/{n}", Path(n), 1, t) for n, t in
             (("new", 30.0), ("old", 10.0), ("mid", 20.0), ("held", 5.0))]
    order = eviction_order(files, protected=lambda p: p == "loras/held")
    assert [f.path for f in order] == ["loras/old", "loras/mid", "loras/new"]


def cached(name: str, size: int, last_used: float) -> CachedFile:
    return CachedFile(f"loras/{name}", Path(name), size, last_used)


def test_plan_eviction_frees_only_what_the_new_file_needs_oldest_first() -> None:
    files = [cached("a", 4, 1.0), cached("b", 4, 2.0), cached("c", 4, 3.0)]
    plan = plan_eviction(files, size=5, pending=0, cap=14, free_disk=100,
                         protected=lambda p: False)
    assert plan.fits and plan.need == 3
    assert [f.path for f in plan.candidates] == ["loras/a", "loras/b", "loras/c"]


def test_plan_eviction_says_a_file_that_can_never_fit_does_not_fit() -> None:
    # c is in use: even with a and b gone, 4 + 2 pending + 9 > 14.
    files = [cached("a", 4, 1.0), cached("b", 4, 2.0), cached("c", 4, 3.0)]
    plan = plan_eviction(files, size=9, pending=2, cap=14, free_disk=100,
                         protected=lambda p: p == "loras/c")
    assert not plan.fits
    assert [f.path for f in plan.candidates] == ["loras/a", "loras/b"]
    # Larger than the cap itself: never fits, whatever is cached.
    assert not plan_eviction([], size=15, pending=0, cap=14, free_disk=100,
                             protected=lambda p: False).fits


def test_plan_eviction_counts_a_full_disk() -> None:
    plan = plan_eviction([cached("a", 4, 1.0)], size=5, pending=0, cap=100, free_disk=2,
                         protected=lambda p: False)
    assert plan.fits and plan.need == 3


# --- a job's model never harms what it does not own (issue 16) ------------------------


def test_a_request_over_a_file_placed_by_hand_is_refused_and_the_file_kept(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    served = hf_server.add_url("hand.safetensors", data(200_000, seed=21))
    placed = tmp_path / "local" / "loras" / "hand.safetensors"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"the operator's own bytes")
    store = make_store(stores, hf_server, tmp_path)

    with store.ensure([requested("loras/hand.safetensors", served)], requested=True) as claim, \
            pytest.raises(ModelPathConflict) as err:
        claim.wait(timeout=30)

    assert err.value.status == 409 and "does not own" in err.value.message
    assert placed.read_bytes() == b"the operator's own bytes"
    assert hf_server.requests(served) == []  # nothing fetched
    assert sorted(p.name for p in placed.parent.iterdir()) == ["hand.safetensors"]


def test_a_request_over_an_older_request_file_at_its_path_replaces_it(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    old = hf_server.add_url("v1.safetensors", data(100_000, seed=22))
    new = hf_server.add_url("v2.safetensors", data(100_000, seed=23))
    store = make_store(stores, hf_server, tmp_path)
    use(store, requested("loras/user.safetensors", old))  # a request file: it has a sidecar

    where = use(store, requested("loras/user.safetensors", new))

    assert sha_of(where["loras/user.safetensors"]) == new.sha256


def test_nothing_is_evicted_for_a_model_whose_source_does_not_answer(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    kept = hf_server.add_url("kept.safetensors", data(MIB, seed=24))
    store = make_store(stores, hf_server, tmp_path, cache_bytes=int(1.5 * MIB))
    use(store, requested("loras/kept.safetensors", kept))
    gone = hf_server.add_url("gone.safetensors", data(MIB, seed=25))
    gone.faults.status_always = 404

    with store.ensure([requested("loras/gone.safetensors", gone)], requested=True) as claim, \
            pytest.raises(ModelNotFound):
        claim.wait(timeout=30)

    assert sha_of(tmp_path / "local" / "loras" / "kept.safetensors") == kept.sha256


def test_a_failed_request_model_leaves_no_lock_file_and_no_sidecar(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    store = make_store(stores, hf_server, tmp_path)
    for i, status in enumerate((404, 500)):
        served = hf_server.add_url(f"bad{i}.safetensors", data(50_000, seed=30 + i))
        served.faults.status_always = status
        with store.ensure([requested(f"loras/bad{i}.safetensors", served)],
                          requested=True) as claim, pytest.raises(SyncError):
            claim.wait(timeout=30)
    corrupt = hf_server.add_url("corrupt.safetensors", data(50_000, seed=33))
    with store.ensure([requested("loras/corrupt.safetensors", corrupt,
                                 sha256="0" * 64)], requested=True) as claim, \
            pytest.raises(ModelHashMismatch):
        claim.wait(timeout=30)

    loras = tmp_path / "local" / "loras"
    assert not loras.exists() or sorted(p.name for p in loras.iterdir()) == []


def test_a_request_model_nobody_waits_for_any_more_stops_downloading(
        hf_server: HFServer, tmp_path: Path, stores: list[ModelStore]) -> None:
    served = hf_server.add_url("slow.safetensors", data(4 * MIB, seed=34))
    served.valve = Valve(MIB)  # 1 MiB, then the server holds the rest
    store = make_store(stores, hf_server, tmp_path)
    claim = store.ensure([requested("loras/slow.safetensors", served)], requested=True)
    served.valve.wait_until(sent=MIB, waiting=1)

    claim.release()  # the job was cancelled: its claim goes
    wait_for(lambda: store.status().downloading == ())
    served.valve.allow(None)

    loras = tmp_path / "local" / "loras"
    assert sorted(p.name for p in loras.iterdir()) == []  # no file, temp, lock or sidecar
    assert hf_server.bytes_served(served) < served.size


