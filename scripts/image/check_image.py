"""Checks run inside a built image (no GPU needed), printed as one JSON object.

Run with ComfyUI's interpreter inside the image; scripts/image/check_image.sh does that
(``docker run --network none``) and judges the result:

- ``torch``: torch's version, the CUDA it was built for (``torch.version.cuda``) and the
  cuDNN it loads (``torch.backends.cudnn.version()`` dlopens libcudnn: works without a
  GPU and fails when the library is missing or broken).
- ``cuda_libraries``: every file of the CUDA libraries anywhere in the image, by library
  (libcudart, libcublas, libcudnn*, libnccl, ...): each must exist exactly once, which is
  the point of taking CUDA only from the torch wheels.
- ``comfyui``: ComfyUI started with ``--cpu`` on loopback answers ``/system_stats``.
- ``worker``: ``comfy-worker --help`` exits 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", "/opt/comfyui/ComfyUI"))
SKIP_DIRS = {"/proc", "/sys", "/dev", "/tmp", "/run"}
CUDA_LIB = re.compile(
    r"^(libcudart|libcublas|libcublasLt|libcudnn(?:_[a-z_]+)?|libnccl|libcufft|libcufftw"
    r"|libcurand|libcusolver|libcusolverMg|libcusparse|libcusparseLt|libnvrtc(?:-builtins)?"
    r"|libnvJitLink|libnvshmem_host|libcufile|libcupti|libnvToolsExt|libnvperf_host"
    r"|libcuda)\.so(?:\.[0-9.]+)?$"
)


def torch_facts() -> dict[str, object]:
    import torch

    facts: dict[str, object] = {"version": torch.__version__, "cuda": torch.version.cuda,
                                "cuda_available": torch.cuda.is_available()}
    try:
        facts["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:  # a broken or missing libcudnn
        facts["cudnn"] = None
        facts["cudnn_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def cuda_libraries() -> dict[str, list[str]]:
    """library name -> real files (symlinks resolved, so a lib and its soname link count once)."""
    found: dict[str, set[str]] = {}
    for root, dirs, files in os.walk("/", followlinks=False):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP_DIRS]
        for name in files:
            match = CUDA_LIB.match(name)
            if match:
                path = os.path.join(root, name)
                found.setdefault(match.group(1), set()).add(os.path.realpath(path))
    return {lib: sorted(paths) for lib, paths in sorted(found.items())}


def comfyui_starts(timeout: float = 240.0) -> dict[str, object]:
    port = 8188
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
        cwd=COMFYUI_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                return {"ok": False, "error": f"exited with {proc.returncode}",
                        "log": (proc.stdout.read() if proc.stdout else "")[-3000:]}
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats",
                                            timeout=5) as resp:
                    stats = json.load(resp)
                return {"ok": True, "seconds": round(time.monotonic() - started, 1),
                        "version": stats.get("system", {}).get("comfyui_version")}
            except OSError:
                time.sleep(1)
        return {"ok": False, "error": f"no /system_stats after {timeout:.0f}s"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_help() -> dict[str, object]:
    proc = subprocess.run(["/opt/worker/bin/comfy-worker", "--help"], capture_output=True,
                          text=True)
    return {"ok": proc.returncode == 0, "first_line": proc.stdout.splitlines()[:1],
            "stderr": proc.stderr[-1000:]}


REQUIRED_GPU_LIBS = ("libcudart", "libcublas", "libcublasLt", "libcudnn", "libnccl")


def judge(result: dict[str, object], flavor: str) -> list[str]:
    """What is wrong with an image of this flavour (gpu or cpu); empty when nothing is."""
    problems: list[str] = []
    torch = result["torch"]
    libs = result["cuda_libraries"]
    assert isinstance(torch, dict) and isinstance(libs, dict)
    for lib, paths in libs.items():
        if len(paths) != 1:
            problems.append(f"{lib} exists {len(paths)} times: {', '.join(paths)}")
    if flavor == "gpu":
        if not torch.get("cuda"):
            problems.append(f"torch {torch.get('version')} has no CUDA (torch.version.cuda)")
        if not torch.get("cudnn"):
            problems.append(f"cuDNN does not load: {torch.get('cudnn_error', 'version None')}")
        problems += [f"{lib} is missing" for lib in REQUIRED_GPU_LIBS if lib not in libs]
    else:
        if torch.get("cuda"):
            problems.append(f"the CPU image's torch is built for CUDA {torch['cuda']}")
        if libs:
            problems.append(f"the CPU image carries CUDA libraries: {', '.join(libs)}")
    for part in ("comfyui", "worker"):
        verdict = result[part]
        assert isinstance(verdict, dict)
        if not verdict.get("ok"):
            problems.append(f"{part}: {json.dumps(verdict)[:2000]}")
    return problems


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--judge":
        result = json.load(sys.stdin)
        problems = judge(result, sys.argv[2])
        for problem in problems:
            print(f"check_image: FAIL: {problem}", file=sys.stderr)
        if not problems:
            torch = result["torch"]
            print(f"check_image: ok ({sys.argv[2]}): torch {torch['version']}, CUDA "
                  f"{torch['cuda']}, cuDNN {torch.get('cudnn')}, "
                  f"{len(result['cuda_libraries'])} CUDA libraries once each, ComfyUI "
                  f"{result['comfyui'].get('version')} up in {result['comfyui'].get('seconds')} s, "
                  "comfy-worker --help ok", file=sys.stderr)
        return 1 if problems else 0
    result = {
        "python": sys.version.split()[0],
        "torch": torch_facts(),
        "cuda_libraries": cuda_libraries(),
        "comfyui": comfyui_starts(),
        "worker": worker_help(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
