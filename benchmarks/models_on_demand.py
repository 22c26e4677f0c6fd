"""Models on demand: does a cold worker's first image depend only on the bytes it needs?

A lock with ``--big-gib`` GiB of large files (``--files`` of them) behind a local
HF-compatible server capped at ``--mbps``, plus one small model (a 10 KB upscaler); one
job that uses only the small model. Side by side in one run, ``--rounds`` times,
interleaved, each from an empty models folder:

* boot alone: ComfyUI (CPU) started until ``/system_stats`` answers and
  ``/object_info`` is read;
* ``comfy-worker run`` with ``COMFY_WORKER_SYNC_MODE=all`` (the whole lock first);
* ``comfy-worker run`` with ``COMFY_WORKER_SYNC_MODE=on-demand`` (the default).

Both ``run`` rows are the whole command, process start to exit, as a user times it.
Targets (medians): on-demand <= 1.3 x boot + 2 s and on-demand <= 0.6 x all-mode.
Run: ``python benchmarks/models_on_demand.py [--rounds 3] [--big-gib 1] [--mbps 100]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FAST_BOOT_ARGS, REPO_ROOT, comfyui, median

BOOT_FACTOR, BOOT_SLACK_S, ALL_FACTOR = 1.3, 2.0, 0.6


def run_cli(mode: str, env: dict[str, str], workflow: Path, out: Path) -> float:
    env = {**env, "COMFY_WORKER_SYNC_MODE": mode}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "comfy_worker.cli", "run", str(workflow),
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=1800)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    assert list(out.glob("*.png")), f"{mode}: no image written"
    return seconds


def boot_alone(comfyui_dir: Path, python: str, work: Path) -> float:
    from comfy_worker.comfy.client import ComfyClient
    from comfy_worker.comfy.process import ComfyProcess, LaunchConfig

    proc = ComfyProcess(LaunchConfig(comfyui_dir=comfyui_dir, python=python,
                                     work_dir=work, cpu=True, extra_args=FAST_BOOT_ARGS))
    t0 = time.perf_counter()
    proc.start()
    ComfyClient(proc.base_url).object_info()
    seconds = time.perf_counter() - t0
    proc.stop()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-gib", type=float, default=1.0, help="GiB of large files")
    parser.add_argument("--files", type=int, default=4, help="how many large files")
    parser.add_argument("--mbps", type=float, default=100.0, help="server cap, MB/s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from e2e.helpers import compact_upscaler, upscale_workflow
    from support import HFServer

    comfyui_dir, python = comfyui()
    work = Path(tempfile.mkdtemp(prefix="bench-on-demand-"))
    small = compact_upscaler()
    each = int(args.big_gib * 2**30 / args.files)
    rows: list[dict[str, float]] = []
    with HFServer(total_bps=args.mbps * 1e6) as hub:
        entries = []
        for i in range(args.files):
            blob = (bytes([i + 1]) * 4096 + os.urandom(4096)) * (each // 8192)
            served = hub.add_file("bench/big", f"big{i}.safetensors", blob)
            entries.append({"path": f"checkpoints/big{i}.safetensors",
                            "source": {"type": "huggingface", "repo": "bench/big",
                                       "revision": served.commit,
                                       "file": f"big{i}.safetensors"},
                            "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)})
            del blob
        served = hub.add_file("bench/small", "up.safetensors", small)
        entries.append({"path": "upscale_models/up.safetensors",
                        "source": {"type": "huggingface", "repo": "bench/small",
                                   "revision": served.commit, "file": "up.safetensors"},
                        "sha256": hashlib.sha256(small).hexdigest(), "size": len(small)})
        lock = work / "models.lock.json"
        lock.write_text(json.dumps({"version": 1, "models": entries}))
        workflow = work / "job.json"
        workflow.write_text(json.dumps({"workflow": upscale_workflow("up.safetensors", 32,
                                                                     32)}))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"),
               "HF_ENDPOINT": hub.endpoint, "COMFY_WORKER_LOCK": str(lock),
               "COMFYUI_DIR": str(comfyui_dir), "COMFYUI_PYTHON": python, "COMFYUI_CPU": "1",
               "COMFYUI_EXTRA_ARGS": " ".join(FAST_BOOT_ARGS)}
        total_gb = sum(e["size"] for e in entries) / 1e9
        print(f"lock: {len(entries)} files, {total_gb:.2f} GB; the job uses only "
              f"up.safetensors ({len(small)} bytes); server cap {args.mbps:g} MB/s",
              flush=True)
        for r in range(args.rounds):
            row: dict[str, float] = {}
            order = ("boot", "all", "on-demand") if r % 2 == 0 else ("on-demand", "all",
                                                                     "boot")
            for which in order:
                tag = work / f"r{r}-{which}"
                if which == "boot":
                    row["boot"] = boot_alone(comfyui_dir, python, tag / "work")
                else:
                    row[which] = run_cli(which, {**env, "COMFY_WORKER_MODELS_DIR":
                                                 str(tag / "models")}, workflow, tag / "out")
                shutil.rmtree(tag, ignore_errors=True)
            rows.append(row)
            print(f"round {r + 1}: boot {row['boot']:6.2f} s   all {row['all']:6.2f} s   "
                  f"on-demand {row['on-demand']:6.2f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    boot, every, demand = (median([r[k] for r in rows]) for k in ("boot", "all", "on-demand"))
    limit_boot = BOOT_FACTOR * boot + BOOT_SLACK_S
    ok_boot, ok_all = demand <= limit_boot, demand <= ALL_FACTOR * every
    print(f"\nmedians over {len(rows)} rounds:")
    print(f"  ComfyUI boot alone       {boot:7.2f} s")
    print(f"  run, all mode            {every:7.2f} s")
    print(f"  run, on-demand           {demand:7.2f} s")
    print(f"  on-demand / boot         {demand / boot:7.3f}   (target <= {BOOT_FACTOR} x boot "
          f"+ {BOOT_SLACK_S:g} s = {limit_boot:.2f} s)  {'OK' if ok_boot else 'OVER TARGET'}")
    print(f"  on-demand / all mode     {demand / every:7.3f}   (target <= {ALL_FACTOR})  "
          f"{'OK' if ok_all else 'OVER TARGET'}")
    return 0 if ok_boot and ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
