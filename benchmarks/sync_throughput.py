"""Sync throughput: our ``sync`` vs bare downloaders vs the link's cap.

A local HF-compatible server (tests/support/hf_server.py, in its own process) serves a
locked set of files, capping each connection and the total, like a real link.

Capped link (``--case capped``), timed side by side in one run:

* our sync (``sync_models``: parallel ranges, several files at once, sha256 included),
* bare ``hf_transfer`` on the same files (no verification, no placing),
* ``huggingface_hub.hf_hub_download`` of the same files one after another,
* the cap itself,

then the warm start: a second sync of ``--warm-files`` files already verified on a
volume (in-process, and as a whole ``comfy-worker sync`` process).
Targets (issue 2): our sync >= 0.85 x the aggregate cap; warm start of 20 files < 0.3 s.

Fast link (``--case fast``): one ``--fast-size-mib`` file (default 1 GiB) at the highest
rate this machine serves (``--fast-total-mbps``, default 300 MB/s in total); alternating
rounds of our sync (time to a verified, fsynced file under its final name) and a plain
parallel download of the same bytes to the same disk: Debian's ``aria2c -x 16 -s 16``
(no hash, no fsync; ``apt-get install -y aria2``). The disk is flushed (untimed) after
each run, so every run starts from a clean page cache.
Target (issue "Model bytes at the physical limit"): ours <= 1.05 x aria2c.

The caps default to the issue's example, 25 MB/s per connection and 250 MB/s in total.
The "bare hf_transfer" row (no verification, no placing) shows what the machine itself
can do at that cap. On a small shared machine (2 cores) the server, the download and
the ~1 CPU-second sha256 per GiB compete for CPU; ``--per-conn-mbps 12 --total-mbps
120`` then measures the sync at a rate the machine can serve while hashing.

The bare hf_transfer row needs the ``bench`` extra (``pip install -e ".[bench]"``):
hf_transfer is not a runtime dependency.

    python benchmarks/sync_throughput.py                  # both cases, 1 GiB each
    python benchmarks/sync_throughput.py --size-mib 128 --fast-size-mib 256   # quick
    python benchmarks/sync_throughput.py --case fast --rounds 5
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


def _serve(conn: Connection, data_dir: str, per_conn: float | None,
           total: float | None) -> None:
    """The server process: serve every file in data_dir, report, wait for 'stop'."""
    from support import HFServer

    # The server stands in for a remote machine: it should not lose CPU to the client
    # (or to whatever else runs here), so it gets a higher priority where allowed.
    with contextlib.suppress(OSError):
        os.nice(-10)
    hub = HFServer(per_connection_bps=per_conn or None, total_bps=total or None).start()
    files: dict[str, Any] = {}
    for p in sorted(Path(data_dir).iterdir()):
        repo = "bench/warm" if p.name.startswith("warm") else "bench/big"
        f = hub.add_file(repo, p.name, p)
        files[p.name] = {"repo": repo, "file": p.name, "commit": f.commit, "sha256": f.sha256,
                         "size": f.size}
    conn.send({"endpoint": hub.endpoint, "cdn": hub.cdn_endpoint, "files": files})
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


class Server:
    """The HF-compatible server in its own process (it must not share our GIL)."""

    def __init__(self, data: Path, *, per_conn_mbps: float, total_mbps: float) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(data), per_conn_mbps * MB,
                                                      total_mbps * MB), daemon=True)
        self._proc.start()
        info = self._conn.recv()
        self.endpoint: str = info["endpoint"]
        self.cdn: str = info["cdn"]
        self.files: dict[str, Any] = info["files"]

    def stop(self) -> None:
        self._conn.send("stop")
        self._conn.recv()
        self._proc.join(timeout=5)


def alternate(rounds: int, runs: dict[str, Any], show: Any) -> dict[str, list[float]]:
    """Run each of ``runs`` once per round, reversing the order every other round, so
    all of them see the same machine. Returns the seconds of each run."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(runs[name]())
        show(r, {name: t[-1] for name, t in times.items()})
    return times


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def capped_case(args: argparse.Namespace, work: Path) -> list[str]:
    from comfy_worker.config import load_settings
    from comfy_worker.lockfile import parse_lock
    from comfy_worker.sync import sync_models
    from comfy_worker.sync.fetch import chunk_size_for

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

    server = Server(data, per_conn_mbps=args.per_conn_mbps, total_mbps=args.total_mbps)
    endpoint, files = server.endpoint, server.files
    total_bytes = sum(files[n]["size"] for n in big)
    env = {"HF_ENDPOINT": endpoint}
    rows: list[tuple[str, float, float]] = []
    load_before = load()
    try:
        lock = parse_lock(_lock(files, big, "checkpoints"))

        def bare_hf_transfer() -> float:
            """The machine's ceiling: bare hf_transfer, no verification, no placing."""
            t = time.perf_counter()
            procs = []
            for i, n in enumerate(big):
                url = f"{server.cdn}/cdn-lfs/{files[n]['sha256']}"
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

        times = alternate(args.rounds, {"ours": our_sync, "bare": bare_hf_transfer},
                          lambda r, last: print(
                              f"round {r + 1}: our sync {total_bytes / last['ours'] / MB:6.1f}"
                              f" MB/s, bare hf_transfer {total_bytes / last['bare'] / MB:6.1f}"
                              " MB/s", flush=True))
        ours = statistics.median(times["ours"])
        raw = statistics.median(times["bare"])
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
        server.stop()

    cap = args.total_mbps
    out = [f"== capped link: {total_bytes / MIB:.0f} MiB in {args.files} files; server caps "
           f"{args.per_conn_mbps:g} MB/s per connection, {cap:g} MB/s total; our sync: "
           f"jobs={args.jobs}, connections={args.connections}",
           f"medians of {args.rounds} alternating rounds (hf_hub_download: one run); "
           f"{load_before} before, {load()} after",
           f"{'':32s} {'seconds':>8s} {'MB/s':>8s} {'x cap':>7s}",
           f"{'cap (total)':32s} {total_bytes / MB / cap:8.2f} {cap:8.1f} {1.0:7.3f}"]
    out += [f"{name:32s} {secs:8.2f} {rate:8.1f} {rate / cap:7.3f}" for name, secs, rate in rows]
    hub_rows = [r for r in rows if r[0].startswith("sequential")]
    if hub_rows:
        out.append(f"our sync vs sequential hf_hub_download: {hub_rows[0][1] / rows[0][1]:.2f}x "
                   "faster")
    out.append(f"our sync's rate / bare hf_transfer's: {rows[0][2] / rows[1][2]:.3f} (ours "
               "verifies and places too)")
    out.append(f"warm start, {args.warm_files} files verified on a volume: sync_models "
               f"{warm_s:.3f} s (target < 0.3 s); whole `comfy-worker sync` process "
               f"{warm_cli_s:.2f} s")
    bare_ratio = rows[1][2] / cap
    if bare_ratio < 0.95:
        out.append(f"note: even bare hf_transfer reaches only {bare_ratio:.2f} of this cap "
                   "here: the machine limits the run; lower caps measure the sync instead")
    ratio = rows[0][2] / cap
    out.append(f"target: our sync >= 0.85 x cap: {'MET' if ratio >= 0.85 else 'NOT MET'} "
               f"({ratio:.3f}); warm < 0.3 s: {'MET' if warm_s < 0.3 else 'NOT MET'}")
    return out


def fast_case(args: argparse.Namespace, work: Path) -> list[str]:
    from comfy_worker.config import load_settings
    from comfy_worker.lockfile import parse_lock
    from comfy_worker.sync import sync_models

    aria2c = shutil.which("aria2c")
    if aria2c is None:
        raise SystemExit("the fast-link case needs aria2c: apt-get install -y aria2")
    data = work / "fast-served"
    data.mkdir()
    name = "fast.safetensors"
    t = time.perf_counter()
    _safetensors_like(data / name, args.fast_size_mib * MIB)
    print(f"generated 1 x {args.fast_size_mib} MiB in {time.perf_counter() - t:.1f} s")
    server = Server(data, per_conn_mbps=0, total_mbps=args.fast_total_mbps)
    info = server.files[name]
    size = info["size"]
    url = f"{server.cdn}/cdn-lfs/{info['sha256']}"
    lock = parse_lock(_lock(server.files, [name], "checkpoints"))
    dest = work / "fast-dest"
    dest.mkdir()
    load_before = load()

    def settle() -> None:
        """Untimed: flush what the last run left dirty and drop its file, so every run
        starts with a clean page cache."""
        shutil.rmtree(dest)
        os.sync()
        dest.mkdir()

    def ours() -> float:
        s = load_settings(env={"HF_ENDPOINT": server.endpoint}, models_dir=dest,
                          connections=args.connections)
        t = time.perf_counter()
        report = sync_models(s, lock=lock, progress=False)
        secs = time.perf_counter() - t
        assert [f.action for f in report.files] == ["downloaded"]
        settle()
        return secs

    def plain() -> float:
        t = time.perf_counter()
        subprocess.run([aria2c, "-x", "16", "-s", "16", "-d", str(dest), "-o", name,
                        "--allow-overwrite=true", "--console-log-level=error",
                        "--summary-interval=0", "--show-console-readout=false",
                        "--download-result=hide", url], check=True)
        secs = time.perf_counter() - t
        assert (dest / name).stat().st_size == size
        settle()
        return secs

    try:
        settle()
        # Untimed: import what a sync imports once per process (huggingface_hub, requests).
        from comfy_worker.sync import fetch

        fetch.locate(lock.models[0].source, load_settings(env={"HF_ENDPOINT": server.endpoint}),
                     path=lock.models[0].path)
        times = alternate(args.rounds, {"ours": ours, "aria2c": plain},
                          lambda r, last: print(
                              f"round {r + 1}: our sync {last['ours']:6.2f} s "
                              f"({size / last['ours'] / MB:5.1f} MB/s), aria2c "
                              f"{last['aria2c']:6.2f} s ({size / last['aria2c'] / MB:5.1f} "
                              "MB/s)", flush=True))
    finally:
        server.stop()
    mine, theirs = statistics.median(times["ours"]), statistics.median(times["aria2c"])
    ratio = mine / theirs
    cap = (f"server cap {args.fast_total_mbps:g} MB/s in total" if args.fast_total_mbps
           else "server uncapped")
    out = [f"== fast link: 1 x {size / MIB:.0f} MiB, {cap}; our sync: "
           f"connections={args.connections}; aria2c -x 16 -s 16",
           f"medians of {args.rounds} alternating rounds; {load_before} before, {load()} after",
           f"{'':44s} {'seconds':>8s} {'MB/s':>8s}",
           f"{'our sync: verified, fsynced, final name':44s} {mine:8.2f} {size / mine / MB:8.1f}",
           f"{'aria2c -x 16 -s 16: no hash, no fsync':44s} {theirs:8.2f} "
           f"{size / theirs / MB:8.1f}",
           f"target: time to a verified file <= 1.05 x the plain parallel download: "
           f"{'MET' if ratio <= 1.05 else 'NOT MET'} ({ratio:.3f})"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=("all", "capped", "fast"), default="all")
    ap.add_argument("--size-mib", type=int, default=1024, help="capped: total size of the "
                    "big files")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--per-conn-mbps", type=float, default=25.0, help="capped: MB/s per "
                    "connection")
    ap.add_argument("--total-mbps", type=float, default=250.0, help="capped: MB/s in total")
    ap.add_argument("--jobs", type=int, default=2, help="files at once (our sync; the "
                    "worker default is 4)")
    ap.add_argument("--connections", type=int, default=8, help="ranges per file (our sync)")
    ap.add_argument("--warm-files", type=int, default=20)
    ap.add_argument("--fast-size-mib", type=int, default=1024, help="fast: the file's size")
    ap.add_argument("--fast-total-mbps", type=float, default=300.0,
                    help="fast: the server's total cap in MB/s (0: none)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    ap.add_argument("--skip-hub", action="store_true", help="skip the hf_hub_download run")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=args.workdir))
    report: list[str] = []
    try:
        if args.case in ("all", "capped"):
            report += capped_case(args, work)
        if args.case in ("all", "fast"):
            report += fast_case(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
