"""Cold start: is the Worker ready in about the time of the slower of sync and boot?

Side by side in one run, ``--rounds`` times, interleaved:

* sync alone: ``sync_models`` of a locked .safetensors file from a local HF-compatible
  server capped at ``--mbps`` (so the download takes about as long as ComfyUI's boot),
  into an empty models folder;
* boot alone: ComfyUI (CPU) started until ``/system_stats`` answers and
  ``/object_info`` is read (what the Worker's boot does before it is ready);
* worker: ``Worker.start()`` doing both at once, into another empty models folder, in
  ``all`` sync mode (ready once every locked file is there; the default ``on-demand``
  mode is ready at boot: benchmarks/models_on_demand.py measures that).

Target: worker <= 1.15 x max(sync, boot) (medians). Run:
``python benchmarks/cold_start.py [--rounds 3] [--size-mb 40] [--mbps 8]``.
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

TARGET = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=40.0)
    parser.add_argument("--mbps", type=float, default=8.0, help="server cap, MB/s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from support import HFServer, safetensors_bytes

    from comfy_worker import sync
    from comfy_worker.comfy.client import ComfyClient
    from comfy_worker.comfy.process import ComfyProcess, LaunchConfig
    from comfy_worker.config import Settings, load_settings
    from comfy_worker.lockfile import load_lock
    from comfy_worker.worker import Worker

    comfyui_dir, python = comfyui()
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    data = safetensors_bytes(int(args.size_mb * 1e6 / 4))
    rows: list[dict[str, float]] = []
    with HFServer(total_bps=args.mbps * 1e6) as hub:
        served = hub.add_file("bench/model", "model.safetensors", data)
        lock_path = work / "models.lock.json"
        lock_path.write_text(json.dumps({"version": 1, "models": [{
            "path": "checkpoints/bench.safetensors",
            "source": {"type": "huggingface", "repo": "bench/model",
                       "revision": served.commit, "file": "model.safetensors"},
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}))
        lock = load_lock(lock_path)

        def settings(tag: str) -> Settings:
            return load_settings(
                {"HF_ENDPOINT": hub.endpoint}, lock_path=lock_path,
                models_dir=work / tag / "models", work_dir=work / tag / "work",
                comfyui_dir=comfyui_dir, comfyui_python=python, comfyui_cpu=True,
                comfyui_extra_args=FAST_BOOT_ARGS, sync_mode="all")

        for r in range(args.rounds):
            tag = f"r{r}"
            s = settings(f"{tag}-sync")
            t0 = time.perf_counter()
            sync.sync_models(s, lock=lock, progress=False)
            sync_s = time.perf_counter() - t0

            s = settings(f"{tag}-boot")
            roots = sync.model_roots(s)
            s.work_dir.mkdir(parents=True, exist_ok=True)
            yaml_path = sync.write_extra_model_paths(roots, ["checkpoints"],
                                                     s.work_dir / "extra.yaml")
            proc = ComfyProcess(LaunchConfig(
                comfyui_dir=comfyui_dir, python=python, work_dir=s.work_dir / "comfyui",
                extra_model_paths=Path(yaml_path), cpu=True, extra_args=FAST_BOOT_ARGS))
            t0 = time.perf_counter()
            proc.start()
            ComfyClient(proc.base_url).object_info()
            boot_s = time.perf_counter() - t0
            proc.stop()

            worker = Worker(settings(f"{tag}-worker"))
            t0 = time.perf_counter()
            worker.start()
            ready_s = time.perf_counter() - t0
            worker.stop()
            rows.append({"sync_s": sync_s, "boot_s": boot_s, "worker_s": ready_s,
                         "ratio": ready_s / max(sync_s, boot_s)})
            print(f"round {r + 1}: sync {sync_s:5.2f} s  boot {boot_s:5.2f} s  "
                  f"worker {ready_s:5.2f} s  ratio {rows[-1]['ratio']:.3f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    sync_m = median([r["sync_s"] for r in rows])
    boot_m = median([r["boot_s"] for r in rows])
    ready_m = median([r["worker_s"] for r in rows])
    ratio = ready_m / max(sync_m, boot_m)
    print(f"\nmedians over {len(rows)} rounds ({args.size_mb:g} MB at {args.mbps:g} MB/s):")
    print(f"  sync alone   {sync_m:6.2f} s")
    print(f"  boot alone   {boot_m:6.2f} s")
    print(f"  sum          {sync_m + boot_m:6.2f} s   (what a sequential start would take)")
    print(f"  worker ready {ready_m:6.2f} s")
    print(f"  ready / max(sync, boot) = {ratio:.3f}  (target <= {TARGET})  "
          f"{'OK' if ratio <= TARGET else 'OVER TARGET'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
