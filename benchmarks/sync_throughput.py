"""Sync throughput: our ``sync`` vs sequential ``hf_hub_download`` vs the link's cap.

A local HF-compatible server (tests/support/hf_server.py, in its own process) serves a
locked set of files, capping each connection and the total, like a real link. We time,
in one run, side by side:

* our sync (``sync_models``: hf_transfer ranges, several files at once, sha256 included),
* ``huggingface_hub.hf_hub_download`` of the same files one after another,
* the cap itself,

then the warm start: a second sync of ``--warm-files`` files already verified on a
volume (in-process, and as a whole ``comfy-worker sync`` process).

Targets (issue 2): our sync >= 0.85 x the aggregate cap; warm start of 20 files < 0.3 s.

The caps default to the issue's example, 25 MB/s per connection and 250 MB/s in total.
The "bare hf_transfer" row (no verification, no placing) shows what the machine itself
can do at that cap. On a small shared machine (2 cores) the server, the download and
the ~1 CPU-second sha256 per GiB compete for CPU; ``--per-conn-mbps 12 --total-mbps
120`` then measures the sync at a rate the machine can serve while hashing.

    python benchmarks/sync_throughput.py                  # 1 GiB in 4 files
    python benchmarks/sync_throughput.py --size-mib 128   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MB = 1_000_000
MIB = 1024 * 1024


def _serve(conn: Connection, data_dir: str, per_conn: float, total: float) -> None:
    """The server process: serve every file in data_dir, report, wait for 'stop'."""
    from support import HFServer

    # The server stands in for a remote machine: it should not lose CPU to the client
    # (or to whatever else runs here), so it gets a higher priority where allowed.
    with contextlib.suppress(OSError):
        os.nice(-10)
    hub = HFServer(per_connection_bps=per_conn, total_bps=total).start()
    files: dict[str, Any] = {}
    for p in sorted(Path(data_dir).iterdir()):
        repo = "bench/warm" if p.name.startswith("warm") else "bench/big"
        f = hub.add_file(repo, p.name, p)
        files[p.name] = {"repo": repo, "file": p.name, "commit": f.commit, "sha256": f.sha256,
                         "size": f.size}
    conn.send({"endpoint": hub.endpoint, "files": files})
    while True:
        msg = conn.recv()
        if msg == "bytes":
            conn.send(hub.bytes_served())
        elif msg == "stop":
            hub.stop()
            conn.send("stopped")
            return


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(16 * MIB, left)
            fh.write(os.urandom(n))
            left -= n


def _safetensors_like(path: Path, size: int) -> None:
    """A valid .safetensors file of ``size`` bytes (one U8 tensor of random bytes)."""
    header_len = 0
    while True:
        data_len = size - 8 - header_len
        header = json.dumps({"w": {"dtype": "U8", "shape": [data_len],
                                   "data_offsets": [0, data_len]}}).encode()
        header += b" " * ((-len(header)) % 8)
        if len(header) == header_len:
            break
        header_len = len(header)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        left = data_len
        while left:
            n = min(16 * MIB, left)
            fh.write(os.urandom(n))
            left -= n


def _lock(files: dict[str, Any], names: list[str], folder: str) -> dict[str, Any]:
    return {"version": 1, "models": [
        {"path": f"{folder}/{n}", "source": {"type": "huggingface", "repo": files[n]["repo"],
                                             "revision": files[n]["commit"], "file": n},
         "sha256": files[n]["sha256"], "size": files[n]["size"]} for n in names]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="total size of the big files")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--per-conn-mbps", type=float, default=25.0, help="MB/s per connection")
    ap.add_argument("--total-mbps", type=float, default=250.0, help="MB/s in total")
    ap.add_argument("--jobs", type=int, default=2, help="files at once (our sync; the "
                    "worker default is 4: 2 lets hashing overlap the next download)")
    ap.add_argument("--connections", type=int, default=8, help="ranges per file (our sync)")
    ap.add_argument("--warm-files", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    ap.add_argument("--skip-hub", action="store_true", help="skip the hf_hub_download run")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from comfy_worker.config import load_settings
    from comfy_worker.lockfile import parse_lock
    from comfy_worker.sync import sync_models
    from comfy_worker.sync.fetch import chunk_size_for

    work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=args.workdir))
    data = work / "served"
    data.mkdir()
    per_file = args.size_mib * MIB // args.files
    big = [f"model{i}.safetensors" for i in range(args.files)]
    warm = [f"warm{i:02d}.safetensors" for i in range(args.warm_files)]
    t = time.perf_counter()
    for n in big:
        _safetensors_like(data / n, per_file)
    for n in warm:
        _safetensors_like(data / n, 4 * MIB)
    print(f"generated {args.files} x {per_file / MIB:.0f} MiB + {args.warm_files} x 4 MiB "
          f"in {time.perf_counter() - t:.1f} s under {work}")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, str(data), args.per_conn_mbps * MB,
                                               args.total_mbps * MB), daemon=True)
    server.start()
    info = parent.recv()
    endpoint, files = info["endpoint"], info["files"]
    total_bytes = sum(files[n]["size"] for n in big)
    env = {"HF_ENDPOINT": endpoint}
    rows: list[tuple[str, float, float]] = []
    try:
        lock = parse_lock(_lock(files, big, "checkpoints"))

        def bare_hf_transfer() -> float:
            """The machine's ceiling: bare hf_transfer, no verification, no placing."""
            t = time.perf_counter()
            procs = []
            for i, n in enumerate(big):
                url = f"{endpoint.replace('127.0.0.1', 'localhost')}/cdn-lfs/" \
                    f"{files[n]['sha256']}"
                code = (f"import hf_transfer; hf_transfer.download({url!r}, "
                        f"{str(work / f'raw{i}')!r}, max_files={args.connections}, "
                        f"chunk_size={chunk_size_for(files[n]['size'], args.connections)})")
                procs.append(subprocess.Popen([sys.executable, "-c", code]))
            if any(p.wait() for p in procs):
                raise SystemExit("bare hf_transfer run failed")
            secs = time.perf_counter() - t
            for i in range(len(big)):
                (work / f"raw{i}").unlink()
            return secs

        def our_sync() -> float:
            s = load_settings(env=env, models_dir=work / "ours", jobs=args.jobs,
                              connections=args.connections)
            t = time.perf_counter()
            report = sync_models(s, lock=lock, progress=False)
            secs = time.perf_counter() - t
            assert all(f.action == "downloaded" for f in report.files)
            shutil.rmtree(work / "ours")
            return secs

        # Alternate the two, so both see the same machine; report medians.
        ours_runs: list[float] = []
        bare_runs: list[float] = []
        for r in range(args.rounds):
            pair = [(our_sync, ours_runs), (bare_hf_transfer, bare_runs)]
            for fn, runs in (pair if r % 2 == 0 else pair[::-1]):
                runs.append(fn())
            print(f"round {r + 1}: our sync {total_bytes / ours_runs[-1] / MB:6.1f} MB/s, "
                  f"bare hf_transfer {total_bytes / bare_runs[-1] / MB:6.1f} MB/s", flush=True)
        ours = statistics.median(ours_runs)
        raw = statistics.median(bare_runs)
        rows.append(("our sync (sha256 included)", ours, total_bytes / ours / MB))
        rows.append(("bare hf_transfer, no sha256", raw, total_bytes / raw / MB))

        # --- sequential hf_hub_download --------------------------------------------
        if not args.skip_hub:
            from huggingface_hub import hf_hub_download

            t = time.perf_counter()
            for n in big:
                hf_hub_download(files[n]["repo"], n, revision=files[n]["commit"],
                                cache_dir=work / "hub-cache", endpoint=endpoint, token=False)
            hub_s = time.perf_counter() - t
            rows.append(("sequential hf_hub_download", hub_s, total_bytes / hub_s / MB))
            shutil.rmtree(work / "hub-cache", ignore_errors=True)

        # --- warm start: verified files on a volume --------------------------------
        vol = work / "volume"
        vol.mkdir()
        wlock = _lock(files, warm, "loras")
        (work / "warm.lock.json").write_text(json.dumps(wlock))
        ws = load_settings(env=env, models_dir=work / "warm-local", volume=vol)
        sync_models(ws, lock=parse_lock(wlock), progress=False)  # fills the volume
        ws2 = ws.replace(models_dir=work / "warm-local-2")  # a fresh worker
        t = time.perf_counter()
        wr = sync_models(ws2, lock=parse_lock(wlock), progress=False)
        warm_s = time.perf_counter() - t
        assert all(f.action == "volume" for f in wr.files), [f.action for f in wr.files]
        t = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "comfy_worker.cli", "sync", "--lock",
                              str(work / "warm.lock.json"), "--models-dir",
                              str(work / "warm-local-3"), "--volume", str(vol)],
                             env={**os.environ, **env}, capture_output=True, text=True)
        warm_cli_s = time.perf_counter() - t
        assert cli.returncode == 0, cli.stderr
    finally:
        parent.send("stop")
        parent.recv()
        server.join(timeout=5)
        shutil.rmtree(work, ignore_errors=True)

    cap = args.total_mbps
    print()
    print(f"{total_bytes / MIB:.0f} MiB in {args.files} files; server caps "
          f"{args.per_conn_mbps:g} MB/s per connection, {cap:g} MB/s total; our sync: "
          f"jobs={args.jobs}, connections={args.connections}; {os.cpu_count()} CPU cores")
    print(f"medians of {args.rounds} alternating rounds (hf_hub_download: one run)")
    print(f"{'':32s} {'seconds':>8s} {'MB/s':>8s} {'x cap':>7s}")
    print(f"{'cap (total)':32s} {total_bytes / MB / cap:8.2f} {cap:8.1f} {1.0:7.3f}")
    for name, secs, rate in rows:
        print(f"{name:32s} {secs:8.2f} {rate:8.1f} {rate / cap:7.3f}")
    hub_rows = [r for r in rows if r[0].startswith("sequential")]
    if hub_rows:
        print(f"our sync vs sequential hf_hub_download: {hub_rows[0][1] / rows[0][1]:.2f}x "
              "faster")
    print(f"our sync / bare hf_transfer: {rows[0][2] / rows[1][2]:.3f} (the cost of "
          "verifying and placing; load on this machine: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"warm start, {args.warm_files} files verified on a volume: sync_models "
          f"{warm_s:.3f} s (target < 0.3 s); whole `comfy-worker sync` process "
          f"{warm_cli_s:.2f} s")
    bare_ratio = rows[1][2] / cap
    if bare_ratio < 0.95:
        print(f"note: even bare hf_transfer reaches only {bare_ratio:.2f} of this cap here: "
              "the machine limits the run; lower caps measure the sync instead")
    ratio = rows[0][2] / cap
    print(f"target: our sync >= 0.85 x cap: {'MET' if ratio >= 0.85 else 'NOT MET'} "
          f"({ratio:.3f}); warm < 0.3 s: {'MET' if warm_s < 0.3 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
