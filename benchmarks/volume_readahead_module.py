"""Read-ahead on a slow volume: a cold mmap pass vs read_ahead + the same pass.

A slow FUSE volume (tests/support/slowfs.py: ``--latency-ms`` per read request, page
cache kept across opens, like a network volume) holds a real ``.safetensors`` model of
``--size-mb`` (verified: header structure and sha256 through the mount). Side by side
in one run, ``--rounds`` times, each row from a cold page cache (the mount's pages of
the file dropped with posix_fadvise(DONTNEED), or the whole cache with ``--drop-caches``):

* cold: touch every page through a shared map, as a safetensors load does;
* read-ahead: ``comfy_worker.readahead.read_ahead`` of the file, then the same pass;
* fadvise: ``posix_fadvise(POSIX_FADV_WILLNEED)`` of the file, then the same pass (why
  read_ahead does not rely on it);
* safetensors: ``safetensors.numpy.load_file`` cold, and after read_ahead;
* reading: the file read once sequentially in 1 MiB reads, on the volume and on the local
  disk beside read_ahead of the local file (read-ahead should never be slower than
  simply reading the file).

Each row reports seconds and the read requests the volume served. Target: read-ahead +
pass at least 3x faster than the cold pass (medians). Run (root, FUSE)::

    python benchmarks/volume_readahead_module.py [--rounds 3] [--size-mb 200]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import median

TARGET = 3.0
MiB = 1 << 20


def write_model(path: Path, size_mb: float) -> str:
    """A real safetensors file of about ``size_mb`` MB in 2 MiB tensors; its sha256."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    per = 2 * MiB // 4
    n = max(1, int(size_mb * 1e6 // (per * 4)) + 1)
    save_file({f"layer.{i}.weight": rng.standard_normal(per, dtype=np.float32)
               for i in range(n)}, str(path))
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


def mmap_pass(path: Path) -> None:
    """Touch every page through a shared map."""
    page = mmap.PAGESIZE
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for i in range(0, len(mm), page):
            mm[i]


def safetensors_load(path: Path) -> None:
    from safetensors.numpy import load_file

    load_file(str(path))


def sequential_read(path: Path) -> None:
    buf = bytearray(MiB)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def fadvise_willneed(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--block-mib", type=int, default=16)
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the whole page cache before each row (root; affects "
                             "the machine; the daemon then reads its backing file cold)")
    parser.add_argument("--no-fadvise", action="store_true", help="skip the fadvise rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from support.slowfs import drop_caches, evict_file, fuse_unavailable, slow_volume

    from comfy_worker.readahead import read_ahead, resident_bytes
    from comfy_worker.sync.verify import safetensors_header_ok, sha256_file

    reason = fuse_unavailable()
    if reason is not None:
        raise SystemExit(f"FUSE is unavailable: {reason}")
    work = Path(tempfile.mkdtemp(prefix="bench-readahead-"))
    backing = work / "backing"
    backing.mkdir()
    model_path = backing / "model.safetensors"
    sha = write_model(model_path, args.size_mb)
    size = model_path.stat().st_size
    rows: dict[str, list[tuple[float, int]]] = {}
    ahead_rows: list[tuple[float, int, int]] = []  # read_ahead alone: s, requests, in flight
    before_pass: list[int] = []  # bytes not cached just before the pass after read_ahead

    try:
        with slow_volume(backing, work / "mnt", args.latency_ms / 1e3) as volume:
            model = volume.mountpoint / model_path.name
            ok, why = safetensors_header_ok(model, size)
            if not ok:
                raise SystemExit(f"the model does not verify through the mount: {why}")

            def cold() -> None:
                if not (args.drop_caches and drop_caches()):
                    evict_file(model)
                if resident_bytes(model):
                    raise SystemExit("could not make the page cache cold")
                volume.reset_stats()

            def timed(name: str, fn: Callable[[], None]) -> float:
                t0 = time.perf_counter()
                fn()
                seconds = time.perf_counter() - t0
                rows.setdefault(name, []).append((seconds, volume.stats().reads))
                volume.reset_stats()
                return seconds

            def ahead() -> None:
                report = read_ahead([model], budget_bytes=2 * size, parallel=args.parallel,
                                    block_bytes=args.block_mib * MiB)
                stats = volume.stats()
                if report.bytes_read != size:
                    raise SystemExit(f"read_ahead read {report.bytes_read} of {size} bytes")
                ahead_rows.append((report.seconds, stats.reads, stats.max_in_flight))

            def local_ahead(path: Path) -> None:
                report = read_ahead([path], budget_bytes=2 * size, parallel=args.parallel,
                                    block_bytes=args.block_mib * MiB)
                if report.bytes_read != size:
                    raise SystemExit(f"read_ahead read {report.bytes_read} of {size} bytes")

            for r in range(args.rounds):
                cold()
                cold_s = timed("cold mmap pass", lambda: mmap_pass(model))
                cold()
                ra_s = timed("read_ahead", ahead)
                before_pass.append(size - resident_bytes(model))
                pass_s = timed("mmap pass after read_ahead", lambda: mmap_pass(model))
                rows.setdefault("read_ahead + mmap pass", []).append(
                    (ra_s + pass_s, rows["read_ahead"][-1][1] + rows[
                        "mmap pass after read_ahead"][-1][1]))
                if not args.no_fadvise:
                    cold()
                    fa_s = timed("fadvise WILLNEED", lambda: fadvise_willneed(model))
                    fp_s = timed("mmap pass after fadvise", lambda: mmap_pass(model))
                    rows.setdefault("fadvise + mmap pass", []).append(
                        (fa_s + fp_s, rows["fadvise WILLNEED"][-1][1]
                         + rows["mmap pass after fadvise"][-1][1]))
                cold()
                timed("cold safetensors load_file", lambda: safetensors_load(model))
                cold()
                st_ra = timed("read_ahead (before load_file)", ahead)
                st_s = timed("load_file after read_ahead", lambda: safetensors_load(model))
                rows.setdefault("read_ahead + load_file", []).append(
                    (st_ra + st_s, rows["read_ahead (before load_file)"][-1][1]
                     + rows["load_file after read_ahead"][-1][1]))
                cold()
                timed("sequential read (1 MiB reads)", lambda: sequential_read(model))
                evict_file(model_path)  # the local disk: the backing file itself, cold
                timed("local disk: sequential read", lambda: sequential_read(model_path))
                evict_file(model_path)
                timed("local disk: read_ahead", lambda: local_ahead(model_path))
                print(f"round {r + 1}: cold pass {cold_s:5.2f} s   read_ahead {ra_s:5.2f} s"
                      f" + pass {pass_s:5.2f} s   ratio {cold_s / (ra_s + pass_s):5.2f}",
                      flush=True)
            if sha256_file(model) != sha:
                raise SystemExit("sha256 through the mount differs from the model's")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedians over {args.rounds} rounds: {size / 1e6:.0f} MB safetensors on a FUSE "
          f"volume at {args.latency_ms:g} ms per read request (sha256 verified)")
    print(f"  {'':32s} {'seconds':>8s} {'requests':>9s} {'MB/s':>7s}")
    for name, values in rows.items():
        s = median([v[0] for v in values])
        n = median([float(v[1]) for v in values])
        print(f"  {name.strip():32s} {s:8.2f} {n:9.0f} {size / 1e6 / s:7.0f}")
    print(f"  read_ahead: {args.parallel} x {args.block_mib} MiB, most requests in flight "
          f"{median([float(a[2]) for a in ahead_rows]):.0f}; bytes not cached just before "
          f"the pass: {median([float(b) for b in before_pass]) / 1e6:.2f} MB (median)")
    cold_m = median([v[0] for v in rows["cold mmap pass"]])
    warm_m = median([v[0] for v in rows["read_ahead + mmap pass"]])
    ratio = cold_m / warm_m
    print(f"  cold pass / (read_ahead + pass) = {ratio:.2f}  (target >= {TARGET:g})  "
          f"{'OK' if ratio >= TARGET else 'UNDER TARGET'}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
