"""The v2 asset store (entrypoints/api_v2/assets.py) on real directories, with a clock the
tests move: content-addressed blobs, dedup, caps, expiry, pins; and its pure eviction
plan."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

from comfy_worker.entrypoints.api_v2.assets import Asset, AssetStore, plan_eviction
from comfy_worker.errors import AssetStoreFull, BlobNotFound, HashMismatch, RequestTooLarge


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def b3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def store_at(tmp_path: Path, clock: Clock, *, max_bytes: int = 1000, ttl: float = 100.0,
             max_assets: int = 100) -> AssetStore:
    return AssetStore(tmp_path / "assets", max_bytes=max_bytes, ttl=ttl,
                      max_assets=max_assets, clock=clock)


def upload(store: AssetStore, data: bytes, name: str = "a.png",
           expected: str | None = None) -> tuple[Asset, bool]:
    writer = store.writer()
    writer.write(data)
    return store.add_upload(writer, content_type="image/png", file_path=name,
                            expected_hash=expected)


def blob_files(store: AssetStore) -> list[str]:
    return sorted(p.name for p in (store.root / "blobs").iterdir())


def tmp_files(store: AssetStore) -> list[Path]:
    return list((store.root / "tmp").iterdir())


# --- uploads, dedup ---------------------------------------------------------------------


def test_an_upload_is_one_blob_named_by_its_blake3_and_a_record(tmp_path: Path,
                                                               clock: Clock) -> None:
    store = store_at(tmp_path, clock)
    asset, created = upload(store, b"hello", expected=b3(b"hello"))
    assert created and asset.hash == b3(b"hello") and asset.size == 5
    assert blob_files(store) == [b3(b"hello").split(":")[1]]
    assert store.blob_path(asset.hash).read_bytes() == b"hello"
    assert store.get(asset.id) is asset and tmp_files(store) == []
    assert asset.expires == clock.now + 100


def test_the_same_bytes_again_are_the_same_asset_with_its_retention_extended(
        tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock)
    first, _ = upload(store, b"hello", "a.png")
    clock.now += 50
    again, created = upload(store, b"hello", "b.png")
    assert again is first and created is False and again.expires == clock.now + 100
    assert len(blob_files(store)) == 1 and tmp_files(store) == []
    assert store.from_hash(b3(b"hello"), file_path="c.png") is first


def test_a_hash_mismatch_keeps_nothing(tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock)
    with pytest.raises(HashMismatch, match="not to the expected_hash") as info:
        upload(store, b"hello", expected=b3(b"other"))
    assert info.value.details[0]["actual_hash"] == b3(b"hello")
    assert blob_files(store) == [] and tmp_files(store) == []
    assert not store.has_hash(b3(b"hello"))


def test_from_hash_of_unknown_bytes_is_blob_not_found(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(BlobNotFound):
        store_at(tmp_path, clock).from_hash(b3(b"x"), file_path=None)


def test_outputs_get_records_of_their_own_over_shared_bytes(tmp_path: Path,
                                                           clock: Clock) -> None:
    store = store_at(tmp_path, clock)
    up, _ = upload(store, b"same")
    out = store.add_bytes(b"same", content_type="image/png", file_path="o.png", job_id="j")
    assert out.id != up.id and out.hash == up.hash and out.job_id == "j"
    assert len(blob_files(store)) == 1
    assert store.delete(up.id)
    assert blob_files(store) != []  # the output still holds the bytes
    assert store.from_hash(up.hash or "", file_path="again.png").upload  # minted anew
    assert store.delete(out.id)


def test_deleting_the_last_record_removes_the_bytes(tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock)
    asset, _ = upload(store, b"bytes")
    assert store.delete(asset.id) and not store.delete(asset.id)
    assert blob_files(store) == [] and store.get(asset.id) is None


# --- bounds -------------------------------------------------------------------------------


def test_an_upload_over_the_whole_cap_stops_at_the_cap(tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock, max_bytes=10)
    writer = store.writer()
    writer.write(b"x" * 10)
    with pytest.raises(RequestTooLarge, match="over 10 bytes"):
        writer.write(b"y")
    writer.discard()
    assert tmp_files(store) == []


def test_room_is_made_least_recently_used_first(tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock, max_bytes=10)
    a, _ = upload(store, b"aaaa")
    clock.now += 1
    b, _ = upload(store, b"bbbb")
    clock.now += 1
    assert store.content(a.id) is not None  # a is used: b is now the oldest use
    c, _ = upload(store, b"cccc")
    assert store.get(b.id) is None and store.get(a.id) is a and store.get(c.id) is c
    assert store.usage()["bytes"] == 8


def test_bytes_a_waiting_job_holds_are_never_evicted_and_a_full_store_refuses(
        tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock, max_bytes=10)
    a, _ = upload(store, b"aaaaaa")
    pin, found = store.pin([a.id, "no-such-id"])
    assert list(found) == [a.id]
    with pytest.raises(AssetStoreFull, match="held by queued or running jobs"):
        upload(store, b"bbbbbb")
    assert store.get(a.id) is a and tmp_files(store) == []
    assert store.delete(a.id)  # its record goes; the job still reads its bytes
    assert pin.read(a.hash or "") == b"aaaaaa"
    pin.release()
    pin.release()  # once only
    assert blob_files(store) == []
    assert upload(store, b"bbbbbb")[1]


def test_the_number_of_assets_is_capped_too(tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock, max_assets=2)
    first, _ = upload(store, b"1")
    clock.now += 1
    upload(store, b"2")
    clock.now += 1
    upload(store, b"3")
    assert store.usage()["assets"] == 2 and store.get(first.id) is None


def test_assets_expire_after_their_retention(tmp_path: Path, clock: Clock) -> None:
    store = store_at(tmp_path, clock, ttl=100)
    asset, _ = upload(store, b"old")
    other, _ = upload(store, b"other")
    clock.now += 100
    assert store.sweep() == 2 and blob_files(store) == []
    assert store.get(asset.id) is None and store.get(other.id) is None


# --- the folder ---------------------------------------------------------------------------


def test_opening_empties_its_folder_and_closing_removes_it(tmp_path: Path,
                                                          clock: Clock) -> None:
    root = tmp_path / "assets"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "stale").write_bytes(b"from an earlier run")
    store = store_at(tmp_path, clock)
    assert blob_files(store) == []
    store.close()
    assert not root.exists()


def test_a_symlinked_folder_is_replaced_never_followed(tmp_path: Path, clock: Clock) -> None:
    outside = tmp_path / "operator"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (tmp_path / "assets").symlink_to(outside)
    store = store_at(tmp_path, clock)
    assert not store.root.is_symlink() and (outside / "keep.txt").read_text() == "mine"
    store.close()
    assert (outside / "keep.txt").read_text() == "mine"


# --- the plan (pure) ------------------------------------------------------------------------


def rec(asset_id: str, digest: str, last_used: float, expires: float = 1e9) -> Asset:
    return Asset(asset_id, digest, 0, "x/y", None, 0.0, expires, last_used)


def test_plan_drops_expired_then_oldest_until_it_fits() -> None:
    assets = [rec("a", "h1", 5), rec("b", "h2", 1), rec("c", "h3", 9, expires=10)]
    plan = plan_eviction(assets, {"h1": 4, "h2": 4, "h3": 4}, [], now=20, need_bytes=4,
                         cap_bytes=8)
    assert plan == plan.__class__(("c", "b"), True)


def test_plan_frees_a_shared_blob_only_with_its_last_record_and_never_a_pinned_one() -> None:
    assets = [rec("a", "h1", 1), rec("b", "h1", 2), rec("c", "h2", 3)]
    sizes = {"h1": 5, "h2": 5}
    assert plan_eviction(assets, sizes, [], now=0, need_bytes=5, cap_bytes=10).drop == (
        "a", "b")
    refused = plan_eviction(assets, sizes, ["h1", "h2"], now=0, need_bytes=5, cap_bytes=10)
    assert refused.fits is False and refused.drop == ()
