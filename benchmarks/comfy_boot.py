"""ComfyUI's boot on CPU: v0.3.75 (the oldest supported) against v0.33.0 (the image's).

Each boot is the worker's own command line (``comfy.process.build_command``: ``--cpu``,
loopback, a fresh work directory, no custom nodes), timed from the process start to the
first answer of ``/system_stats`` (what the worker waits for before it is ready), then
the process is stopped. The two versions alternate, the order swapping every round, in
one run (the machine is shared and noisy); medians and their ratio are printed.

Measured here (2 cores, load ~0.3, 5 rounds), both on torch 2.13.0+cpu: v0.33.0 6.31 s,
v0.3.75 5.14 s, 1.23 x; RSS 585 MB vs 543 MB. (With the GPU lock's CUDA torch 2.9.1 under
v0.33.0, COMFYUI_TORCH=gpu, it was 9.18 s vs 6.73 s, 1.36 x, RSS 889 MB, at load ~3.)

The ComfyUIs are the ones scripts/setup_comfyui.sh makes: ``COMFYUI_DIR``/``COMFYUI_PYTHON``
or ./.comfyui (v0.33.0) and ``COMFYUI_COMPAT_DIR``/``COMFYUI_COMPAT_PYTHON`` or
./.comfyui/compat (v0.3.75). Run:
``python benchmarks/comfy_boot.py [--rounds 5] [--timeout 180] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from _common import median
from support.comfyui import ComfyInstall, find_comfyui, find_compat_comfyui

from comfy_worker.comfy.process import (
    HOST,
    LaunchConfig,
    build_command,
    cli_flag_checker,
    free_port,
)


@dataclass(frozen=True)
class Boot:
    seconds: float
    rss_mb: float | None


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def boot_once(install: ComfyInstall, timeout: float) -> Boot:
    """Start ComfyUI as the worker does, wait for /system_stats, stop it."""
    work = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    cfg = LaunchConfig(comfyui_dir=install.comfyui_dir, python=install.python, work_dir=work,
                       cpu=True)
    for d in (cfg.input_dir, cfg.output_dir, cfg.temp_dir, cfg.user_dir):
        d.mkdir(parents=True, exist_ok=True)  # as ComfyProcess.start makes them
    port = free_port()
    cmd = build_command(cfg, port, cli_flag_checker(install.comfyui_dir))
    log = (work / "comfyui.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=install.comfyui_dir, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        session = requests.Session()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"ComfyUI {install.version} exited with {proc.returncode}:\n"
                                 + (work / "comfyui.log").read_text(errors="replace")[-3000:])
            if time.monotonic() - started > timeout:
                raise SystemExit(f"ComfyUI {install.version}: no /system_stats in {timeout} s")
            try:
                if session.get(f"http://{HOST}:{port}/system_stats", timeout=2).ok:
                    return Boot(time.monotonic() - started, _rss_mb(proc.pid))
            except requests.RequestException:
                pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    current, compat = find_comfyui(), find_compat_comfyui()
    if current is None or compat is None:
        raise SystemExit("needs both ComfyUIs: run scripts/setup_comfyui.sh (or set "
                         "COMFYUI_DIR/COMFYUI_PYTHON and COMFYUI_COMPAT_DIR/COMFYUI_COMPAT_PYTHON)")
    installs = {"compat": compat, "current": current}
    for install in installs.values():  # one boot each first: imports compiled, files cached
        boot_once(install, args.timeout)
    boots: dict[str, list[Boot]] = {"compat": [], "current": []}
    for i in range(args.rounds):
        order = ["compat", "current"] if i % 2 == 0 else ["current", "compat"]
        for role in order:
            boot = boot_once(installs[role], args.timeout)
            boots[role].append(boot)
            print(f"round {i + 1}: ComfyUI {installs[role].version:>7} up in {boot.seconds:5.2f} s"
                  f" (RSS {boot.rss_mb or 0:.0f} MB)", flush=True)
    result = {
        role: {"version": installs[role].version,
               "median_s": round(median([b.seconds for b in boots[role]]), 2),
               "runs_s": [round(b.seconds, 2) for b in boots[role]],
               "median_rss_mb": round(median([b.rss_mb or 0.0 for b in boots[role]]))}
        for role in installs
    }
    ratio = result["current"]["median_s"] / result["compat"]["median_s"]
    if args.json:
        print(json.dumps({**result, "ratio_current_to_compat": round(ratio, 2)}))
    else:
        print(f"ComfyUI {result['compat']['version']}: median {result['compat']['median_s']} s, "
              f"RSS {result['compat']['median_rss_mb']} MB")
        print(f"ComfyUI {result['current']['version']}: median {result['current']['median_s']} s, "
              f"RSS {result['current']['median_rss_mb']} MB")
        print(f"ratio {result['current']['version']} / {result['compat']['version']}: "
              f"{ratio:.2f} x ({args.rounds} alternating rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
