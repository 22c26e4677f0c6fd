"""Read-ahead: how much faster is a job whose model sits on a slow network volume?

A read-only FUSE passthrough with ``--latency-ms`` per read request plays the network
volume (tests/support/slowfs.py: page cache kept across opens, ``--max-background``
requests served at once, as network volume clients do). On it: a verified ~280 MB
SD 1.5 checkpoint (random weights, loaded by ComfyUI as SD 1.5). A ready worker (CPU
ComfyUI) with that volume; ``--rounds`` times, alternating which goes first, each from
a cold start of that file (ComfyUI restarted, so the checkpoint is loaded again, and
the file's pages dropped from the page cache), one job (the editor's default workflow
at 64x64, 2 steps) with ``COMFY_WORKER_READAHEAD=1`` and one with ``0``. Prints the job
latencies and their ratio; target: with read-ahead <= 0.5 x without.

Run: ``python benchmarks/volume_readahead.py [--rounds 3] [--latency-ms 5]``
(needs FUSE: Debian ``fuse``/``libfuse2`` and ``fusepy``; scripts/test.sh installs them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from _common import FAST_BOOT_ARGS, comfyui, median

TARGET = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--max-background", type=int, default=64,
                        help="requests the volume serves at once (FUSE's default is 12; "
                        "NFS clients allow 128 by default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from support.slowfs import evict_file, fuse_unavailable, slow_volume
    from support.tiny_sd15 import FILENAME, default_workflow_prompt, write_tiny_sd15_checkpoint

    from comfy_worker.config import load_settings
    from comfy_worker.worker import Worker

    missing = fuse_unavailable()
    if missing:
        raise SystemExit(f"FUSE is unavailable: {missing}")
    comfyui_dir, python = comfyui()
    work = Path(tempfile.mkdtemp(prefix="bench-readahead-"))
    backing, mount = work / "backing", work / "volume"
    checkpoint = write_tiny_sd15_checkpoint(backing / "models" / "checkpoints" / FILENAME)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    lock = work / "models.lock.json"
    lock.write_text(json.dumps({"version": 1, "models": [{
        "path": f"checkpoints/{FILENAME}",
        "source": {"type": "url", "url": "https://models.invalid/never-fetched"},
        "sha256": sha, "size": checkpoint.stat().st_size}]}))
    mount.mkdir()
    on_volume = mount / "models" / "checkpoints" / FILENAME
    rows: list[dict[str, float]] = []
    with slow_volume(backing, mount, args.latency_ms / 1000,
                     options=(f"max_background={args.max_background}",)):
        settings = load_settings(
            {}, lock_path=lock, volume=mount, models_dir=work / "local",
            work_dir=work / "work", comfyui_dir=comfyui_dir, comfyui_python=python,
            comfyui_cpu=True, comfyui_extra_args=FAST_BOOT_ARGS, readahead=False,
            prefetch=True)
        print(f"{checkpoint.stat().st_size / 1e6:.0f} MB checkpoint on a volume with "
              f"{args.latency_ms:g} ms per read request; verifying it once...", flush=True)
        with Worker(settings) as worker:
            job = {"workflow": default_workflow_prompt(64, 64, steps=2)}
            worker.run_job(job)  # verifies the file through the volume once (untimed)
            for r in range(args.rounds):
                row: dict[str, float] = {}
                for ahead in ((True, False) if r % 2 == 0 else (False, True)):
                    comfy = worker.comfy
                    assert comfy is not None
                    comfy.restart("benchmark: load the checkpoint again")
                    comfy.wait_ready(120)
                    evict_file(on_volume)
                    worker.settings = worker.settings.replace(readahead=ahead)
                    t0 = time.perf_counter()
                    result = worker.run_job(job)
                    row["with" if ahead else "without"] = time.perf_counter() - t0
                    if ahead:
                        row["readahead"] = result.timings.get("readahead_ms", 0.0) / 1000
                rows.append(row)
                print(f"round {r + 1}: with read-ahead {row['with']:6.2f} s (reading "
                      f"{row['readahead']:.2f} s of it)   without "
                      f"{row['without']:6.2f} s   ratio {row['with'] / row['without']:.3f}",
                      flush=True)
    shutil.rmtree(work, ignore_errors=True)
    with_s, without_s = median([r["with"] for r in rows]), median([r["without"] for r in rows])
    ratio = with_s / without_s
    print(f"\nmedians over {len(rows)} rounds: job with read-ahead {with_s:.2f} s, without "
          f"{without_s:.2f} s; ratio {ratio:.3f} (target <= {TARGET}) "
          f"{'OK' if ratio <= TARGET else 'OVER TARGET'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
