"""Read-ahead into the page cache: residency, the planner, the budget, and a slow volume.

Local tests use real files in tmp_path and drop their pages with posix_fadvise(DONTNEED),
which leaves the rest of the machine alone. The ``fuse`` tests mount
tests/support/slowfs.py (a FUSE passthrough that costs a fixed latency per read request)
and count the requests the kernel sends: they skip where FUSE is unavailable and fail
under CI=true.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.slowfs import SlowVolume, evict_file, fuse_unavailable, slow_volume

from comfy_worker import readahead as ra
from comfy_worker.readahead import (
    FileState,
    cgroup_headroom,
    mem_available,
    memory_budget,
    missing_blocks,
    plan_reads,
    read_ahead,
    resident_bytes,
)

PAGE = mmap.PAGESIZE
MiB = 1 << 20


def write_file(path: Path, size: int, *, evict: bool = True) -> Path:
    """A file of random bytes, written back to disk and dropped from the page cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for _ in range(size // MiB):
            fh.write(os.urandom(MiB))
        fh.write(os.urandom(size % MiB))
    if evict:
        evict_file(path)
    return path


def read_pages(path: Path, *offsets: int) -> None:
    """Bring exactly the pages holding ``offsets`` into the page cache (no readahead)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for offset in offsets:
            os.pread(fd, 1, offset)
    finally:
        os.close(fd)


def read_range(path: Path, offset: int, length: int) -> None:
    """Bring exactly ``[offset, offset + length)`` into the page cache (no readahead)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        pos = offset
        while pos < offset + length:
            n = len(os.pread(fd, min(MiB, offset + length - pos), pos))
            if n == 0:
                break
            pos += n
    finally:
        os.close(fd)


def mmap_pass(path: Path) -> int:
    """Touch every page of ``path`` through a shared map, as safetensors loads do."""
    total = 0
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for i in range(0, len(mm), PAGE):
            total += mm[i]
    return total


# --- resident_bytes / missing_blocks ------------------------------------------------------


def test_resident_bytes_counts_exactly_the_cached_pages(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 10 * PAGE + 100)
    assert resident_bytes(f) == 0
    read_pages(f, 0, 3 * PAGE + 7)
    assert resident_bytes(f) == 2 * PAGE


def test_resident_bytes_counts_only_the_file_part_of_a_cached_last_page(
        tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 10 * PAGE + 100)
    read_pages(f, 10 * PAGE + 50)
    assert resident_bytes(f) == 100


def test_resident_bytes_is_zero_for_an_empty_or_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert resident_bytes(empty) == 0
    assert resident_bytes(tmp_path / "absent.bin") == 0


def test_resident_bytes_of_a_huge_sparse_file_maps_it_window_by_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "huge.bin"
    with open(f, "wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB, sparse
    maps: list[int] = []
    real_mmap = ra._LIBC.mmap

    def counting_mmap(addr: object, length: int, *args: object) -> object:
        maps.append(length)
        return real_mmap(addr, length, *args)

    monkeypatch.setattr(ra._LIBC, "mmap", counting_mmap)
    read_pages(f, 40 << 30)
    assert resident_bytes(f) == PAGE
    assert len(maps) == 64 and max(maps) == ra.MINCORE_WINDOW_BYTES
    evict_file(f)


def test_page_map_of_a_file_that_shrank_reports_the_lost_tail_as_not_cached(
        tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 8 * PAGE)
    read_range(f, 0, 8 * PAGE)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.truncate(f, 2 * PAGE)  # shrinks after a caller saw 8 pages
        pages = ra._page_map(fd, 0, 8 * PAGE)
    finally:
        os.close(fd)
    assert pages is not None and pages[2:] == bytes(6)


def test_missing_blocks_names_every_block_with_an_uncached_page(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 4 * MiB + 10)
    read_range(f, 0, MiB)  # block 0 whole
    read_range(f, 2 * MiB, 2 * MiB + 10)  # blocks 2, 3 and the 10-byte block 4
    read_pages(f, MiB)  # one page of block 1
    assert missing_blocks(f, MiB) == (1,)


def test_missing_blocks_rejects_a_block_size_that_is_not_whole_pages(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", PAGE)
    with pytest.raises(ValueError, match="multiple of the page size"):
        missing_blocks(f, PAGE + 1)


# --- plan_reads (pure) --------------------------------------------------------------------


def state(name: str, size: int, missing: tuple[int, ...], block: int = 10) -> FileState:
    return FileState(Path(name), size, missing, block)


def test_plan_skips_cached_and_empty_files() -> None:
    plan = plan_reads([state("a", 30, ()), state("e", 0, ()), state("b", 30, (0, 1, 2))],
                      budget_bytes=1000)
    assert plan.resident == (Path("a"), Path("e"))
    assert plan.to_read == (Path("b"),)
    assert plan.bytes == 30


def test_plan_reads_only_the_missing_blocks_of_a_partly_cached_file() -> None:
    plan = plan_reads([state("a", 35, (1, 3))], budget_bytes=1000)
    assert [(r.offset, r.length) for r in plan.reads] == [(10, 10), (30, 5)]
    assert plan.bytes == 15


def test_plan_skips_a_file_over_the_budget_and_still_reads_later_files_that_fit() -> None:
    files = [state("a", 40, (0, 1, 2, 3)), state("big", 100, tuple(range(10))),
             state("c", 20, (0, 1)), state("d", 50, tuple(range(5)))]
    plan = plan_reads(files, budget_bytes=70)
    assert plan.to_read == (Path("a"), Path("c"))
    assert plan.over_budget == (Path("big"), Path("d"))
    assert plan.bytes == 60


def test_plan_counts_only_missing_bytes_against_the_budget() -> None:
    plan = plan_reads([state("a", 1000, (99,))], budget_bytes=10)
    assert plan.to_read == (Path("a"),) and plan.bytes == 10


def test_plan_keeps_the_given_order_and_a_zero_budget_reads_nothing() -> None:
    files = [state("b", 10, (0,)), state("a", 10, (0,))]
    assert [r.path for r in plan_reads(files, 100).reads] == [Path("b"), Path("a")]
    nothing = plan_reads(files, 0)
    assert nothing.reads == () and nothing.over_budget == (Path("b"), Path("a"))


# --- memory budget (pure) -----------------------------------------------------------------

MEMINFO = """MemTotal:       24684084 kB
MemFree:        22680864 kB
MemAvailable:   20000000 kB
Buffers:           45372 kB
Cached:          1608008 kB
"""


def test_memory_budget_is_a_fraction_of_mem_available() -> None:
    assert mem_available(MEMINFO) == 20000000 * 1024
    assert memory_budget(0.5, MEMINFO) == 10000000 * 1024


def test_mem_available_falls_back_to_free_plus_caches_on_old_kernels() -> None:
    old = "MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 1 kB\nCached: 5 kB\n"
    assert mem_available(old) == 16 * 1024
    assert mem_available("garbage") == 0


def test_memory_budget_is_bounded_by_the_cgroup_headroom() -> None:
    assert memory_budget(0.5, MEMINFO, cgroup_headroom_bytes=4 << 30) == 2 << 30


def test_memory_budget_rejects_a_fraction_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        memory_budget(1.5, MEMINFO)


def test_cgroup_headroom_counts_inactive_file_pages_as_reclaimable() -> None:
    stat_v2 = "anon 100\nfile 700\ninactive_file 600\nactive_file 100\n"
    assert cgroup_headroom("1000\n", "800\n", stat_v2) == 1000 - (800 - 600)
    stat_v1 = "cache 700\ntotal_inactive_file 600\n"
    assert cgroup_headroom("1000\n", "800\n", stat_v1) == 800


def test_cgroup_headroom_is_none_without_a_limit() -> None:
    assert cgroup_headroom("max\n", "800\n", "") is None
    assert cgroup_headroom("9223372036854771712\n", "800\n", "") is None


# --- read_ahead on local files ------------------------------------------------------------


def mostly_resident(path: Path) -> bool:
    """All but a few pages of ``path`` are in the page cache. This VM runs a kernel
    page-out daemon (DAMON) that drops some 0.2-0.7% of fresh pages within seconds, so
    "every page" would fail at random; a read-ahead that did nothing leaves 0%."""
    return resident_bytes(path) >= 0.97 * path.stat().st_size


def test_read_ahead_brings_cold_files_into_the_page_cache(tmp_path: Path) -> None:
    files = [write_file(tmp_path / f"m{i}.bin", 3 * MiB + i) for i in range(3)]
    report = read_ahead(files, budget_bytes=1 << 30, block_bytes=MiB)
    assert report.files_read == tuple(files)
    assert report.bytes_read == report.bytes_planned == sum(f.stat().st_size for f in files)
    assert not (report.cancelled or report.cache_not_kept or report.cut_by_budget)
    for f in files:
        assert mostly_resident(f)


def test_read_ahead_skips_files_already_in_the_page_cache(tmp_path: Path) -> None:
    warm = write_file(tmp_path / "warm.bin", 2 * MiB)
    cold = write_file(tmp_path / "cold.bin", 2 * MiB)
    read_range(warm, 0, 2 * MiB)
    report = read_ahead([warm, cold], budget_bytes=1 << 30, block_bytes=MiB)
    assert report.files_resident == (warm,)
    assert report.files_read == (cold,)
    assert report.bytes_read == 2 * MiB


def test_read_ahead_of_a_partly_cached_file_reads_only_its_missing_blocks(
        tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 4 * MiB)
    read_range(f, MiB, 2 * MiB)
    report = read_ahead([f], budget_bytes=1 << 30, block_bytes=MiB)
    assert report.bytes_read == 2 * MiB
    assert mostly_resident(f)


def test_read_ahead_stays_within_its_budget(tmp_path: Path) -> None:
    a, b, c = (write_file(tmp_path / f"{n}.bin", 4 * MiB) for n in "abc")
    report = read_ahead([a, b, c], budget_bytes=9 * MiB, block_bytes=MiB)
    assert report.files_read == (a, b)
    assert report.files_over_budget == (c,) and report.cut_by_budget
    assert report.bytes_read == 8 * MiB <= report.budget_bytes
    assert resident_bytes(c) == 0


def test_read_ahead_reads_only_the_files_it_is_given(tmp_path: Path) -> None:
    listed = write_file(tmp_path / "models" / "listed.bin", 2 * MiB)
    others = [write_file(tmp_path / "models" / "other.bin", 2 * MiB),
              write_file(tmp_path / "models" / "sub" / "deep.bin", 2 * MiB)]
    read_ahead([listed], budget_bytes=1 << 30, block_bytes=MiB)
    assert mostly_resident(listed)
    assert [resident_bytes(o) for o in others] == [0, 0]


def test_read_ahead_reads_a_file_named_twice_once(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 2 * MiB)
    link = tmp_path / "link.bin"
    link.symlink_to(f)
    report = read_ahead([f, link, f], budget_bytes=1 << 30, block_bytes=MiB)
    assert report.files_read == (f,) and report.bytes_read == 2 * MiB


def test_read_ahead_reports_missing_files_and_directories_without_raising(
        tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", MiB)
    report = read_ahead([tmp_path / "absent.bin", tmp_path, f], budget_bytes=1 << 30)
    assert report.files_failed == (tmp_path / "absent.bin", tmp_path)
    assert report.files_read == (f,)


def test_read_ahead_cancelled_before_it_starts_reads_nothing(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 4 * MiB)
    cancel = threading.Event()
    cancel.set()
    report = read_ahead([f], budget_bytes=1 << 30, block_bytes=MiB, cancel=cancel)
    assert report.cancelled and report.bytes_read == 0
    assert resident_bytes(f) == 0


def test_read_ahead_cancelled_midway_stops_after_the_reads_in_flight(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 64 * MiB)
    cancel = threading.Event()
    report = read_ahead([f], budget_bytes=1 << 30, parallel=2, block_bytes=MiB,
                        cancel=cancel, on_progress=lambda done, total: cancel.set())
    assert report.cancelled and report.files_read == ()
    assert report.bytes_read <= 2 * MiB  # the chunk that set cancel + one in flight


def test_read_ahead_reports_progress_up_to_the_planned_total(tmp_path: Path) -> None:
    files = [write_file(tmp_path / f"m{i}.bin", 3 * MiB) for i in range(2)]
    seen: list[tuple[int, int]] = []
    report = read_ahead(files, budget_bytes=1 << 30, block_bytes=MiB,
                        on_progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == report.bytes_planned == 6 * MiB
    assert {t for _, t in seen} == {6 * MiB}


def test_read_ahead_goes_on_when_the_progress_callback_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write_file(tmp_path / "m.bin", 4 * MiB)

    def broken(done: int, total: int) -> None:
        raise RuntimeError("callback bug")

    report = read_ahead([f], budget_bytes=1 << 30, block_bytes=MiB, on_progress=broken)
    assert report.files_read == (f,) and report.bytes_read == 4 * MiB
    assert "progress callback failed" in caplog.text


def test_read_ahead_of_a_file_that_shrinks_while_read_stops_at_its_new_end(
        tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", 16 * MiB)

    def shrink(done: int, total: int) -> None:
        if f.stat().st_size > MiB:
            os.truncate(f, MiB)

    report = read_ahead([f], budget_bytes=1 << 30, parallel=1, block_bytes=4 * MiB,
                        on_progress=shrink)
    assert report.files_failed == ()
    assert MiB <= report.bytes_read <= 4 * MiB  # the first chunk, then nothing past 1 MiB


def test_read_ahead_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parallel"):
        read_ahead([], budget_bytes=1, parallel=0)
    with pytest.raises(ValueError, match="budget_bytes"):
        read_ahead([], budget_bytes=-1)
    with pytest.raises(ValueError, match="block_bytes"):
        read_ahead([], budget_bytes=1, block_bytes=1000)


def test_read_ahead_report_to_json_has_counts_not_paths(tmp_path: Path) -> None:
    f = write_file(tmp_path / "m.bin", MiB)
    doc = read_ahead([f], budget_bytes=1 << 30).to_json()
    assert doc["files_read"] == 1 and doc["bytes_read"] == MiB
    assert set(doc) >= {"seconds", "budget_bytes", "cancelled", "cache_not_kept"}


# --- on a slow FUSE volume ----------------------------------------------------------------

LATENCY_S = 0.005


def _need_fuse() -> None:
    reason = fuse_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but FUSE is unavailable: {reason}", pytrace=False)
        pytest.skip(f"FUSE is unavailable: {reason}")


@pytest.fixture(name="volume")
def volume_fixture(tmp_path: Path) -> Iterator[SlowVolume]:
    """A slow volume (5 ms per read request, page cache kept across opens)."""
    _need_fuse()
    with slow_volume(tmp_path / "backing", tmp_path / "mnt", LATENCY_S) as v:
        yield v


def on_volume(volume: SlowVolume, name: str, size: int) -> Path:
    """A file on the volume, cold in the mount's page cache (the backing file stays
    cached: it is the far side's cache, and keeps the daemon's reads at the latency)."""
    write_file(volume.backing_dir / name, size, evict=False)
    path = volume.mountpoint / name
    evict_file(path)
    return path


@pytest.mark.fuse
def test_slow_volume_serves_cached_pages_without_requests(volume: SlowVolume) -> None:
    f = on_volume(volume, "m.bin", 4 * MiB)
    volume.reset_stats()
    data = f.read_bytes()
    cold = volume.stats()
    assert data == (volume.backing_dir / "m.bin").read_bytes()
    assert cold.read_bytes == 4 * MiB and cold.reads >= 4 * MiB // cold.largest_read
    volume.reset_stats()
    f.read_bytes()  # a new open: kernel_cache keeps the pages
    assert volume.stats().reads == 0


@pytest.mark.fuse
def test_slow_volume_without_kernel_cache_drops_pages_at_open(tmp_path: Path) -> None:
    _need_fuse()
    with slow_volume(tmp_path / "backing", tmp_path / "mnt", 0.0, cache="none") as volume:
        f = on_volume(volume, "m.bin", 2 * MiB)
        f.read_bytes()
        volume.reset_stats()
        f.read_bytes()
        assert volume.stats().read_bytes == 2 * MiB


@pytest.mark.fuse
def test_mmap_pass_after_read_ahead_needs_far_fewer_requests_than_a_cold_one(
        volume: SlowVolume) -> None:
    f = on_volume(volume, "model.bin", 64 * MiB)
    volume.reset_stats()
    mmap_pass(f)
    cold = volume.stats()
    evict_file(f)

    volume.reset_stats()
    report = read_ahead([f], budget_bytes=1 << 30)
    ahead = volume.stats()
    volume.reset_stats()
    mmap_pass(f)
    warm = volume.stats()

    assert report.files_read == (f,) and report.bytes_read == 64 * MiB
    # Read-ahead asks for the file once, with many requests in flight at a time...
    assert ahead.read_bytes <= 64 * MiB * 1.05
    assert ahead.max_in_flight >= 8 > cold.max_in_flight
    # ...so the mmap pass that follows finds its pages cached. (A few may be evicted
    # meanwhile by the machine's own reclaim, each costing one request.)
    assert cold.reads >= 64 * MiB // cold.largest_read
    assert warm.reads * 4 < cold.reads


@pytest.mark.fuse
def test_read_ahead_on_the_volume_reads_only_the_listed_files(volume: SlowVolume) -> None:
    listed = [on_volume(volume, f"m{i}.bin", 2 * MiB) for i in range(2)]
    on_volume(volume, "other.bin", 2 * MiB)
    volume.reset_stats()
    read_ahead(listed, budget_bytes=1 << 30)
    assert volume.stats().files_read == ("m0.bin", "m1.bin")


@pytest.mark.fuse
def test_read_ahead_stops_on_a_volume_that_drops_its_cache_at_open(tmp_path: Path) -> None:
    _need_fuse()
    with slow_volume(tmp_path / "backing", tmp_path / "mnt", LATENCY_S,
                     cache="none") as volume:
        f = on_volume(volume, "model.bin", 64 * MiB)
        volume.reset_stats()
        report = read_ahead([f], budget_bytes=1 << 30)
        assert report.cache_not_kept and report.files_read == ()
        # Only the probe, plus the kernel's readahead window around it.
        assert report.bytes_read == ra.PROBE_BYTES
        assert volume.stats().read_bytes <= ra.PROBE_BYTES + MiB


@pytest.mark.fuse
def test_read_ahead_on_the_volume_stops_promptly_when_cancelled(volume: SlowVolume) -> None:
    volume.set_latency(0.05)  # the whole file would take seconds
    f = on_volume(volume, "model.bin", 64 * MiB)
    cancel = threading.Event()
    volume.reset_stats()
    report = read_ahead([f], budget_bytes=1 << 30, parallel=4, cancel=cancel,
                        on_progress=lambda done, total: cancel.set())
    asked = volume.stats().read_bytes
    assert report.cancelled
    # The chunk that set cancel and the three others in flight (4 MiB each), plus the
    # kernel's readahead windows: never the whole file.
    assert asked <= 4 * ra.CHUNK_BYTES + 4 * MiB < 64 * MiB
