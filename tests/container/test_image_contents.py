"""What is inside the built images: CUDA once (GPU), none (CPU), and their size report.

Both flavours go through scripts/image/check_image.sh, the same check the release
workflow runs before it pushes: it starts a container with --network none and reports
torch's CUDA and cuDNN, every CUDA library file in the image, whether ComfyUI starts with
--cpu and whether `comfy-worker --help` runs. The GPU flavour is opt-in
(COMFY_WORKER_TEST_GPU_IMAGE=1, see conftest.py): it downloads torch 2.9.1 and its
nvidia-* wheels from PyPI.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
IMAGE_COMFYUI = re.search(r"^\s*COMFYUI_REF=v(\S+) ", (REPO / "Dockerfile").read_text(),
                          flags=re.M).group(1)  # type: ignore[union-attr]
"""The ComfyUI version the images carry (the Dockerfile's default, 0.33.0)."""


def _check(image: str, flavor: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = subprocess.run([str(REPO / "scripts" / "image" / "check_image.sh"), image, flavor],
                          capture_output=True, text=True, timeout=900)
    facts = json.loads(proc.stdout.strip().splitlines()[0]) if proc.stdout.strip() else {}
    return facts, proc


def test_gpu_image_has_cuda_from_the_torch_wheels_exactly_once(gpu_image: str) -> None:
    facts, proc = _check(gpu_image, "gpu")
    assert proc.returncode == 0, proc.stderr[-4000:]
    torch = facts["torch"]
    assert torch["version"] == "2.9.1+cu128" or torch["version"].startswith("2.9.1")
    assert torch["cuda"] == "12.8"
    assert torch["cudnn"] >= 91000  # cuDNN 9.10 from nvidia-cudnn-cu12, loaded without a GPU
    libs = facts["cuda_libraries"]
    for lib in ("libcudart", "libcublas", "libcublasLt", "libcudnn", "libnccl", "libcufft",
                "libcurand", "libcusolver", "libcusparse", "libnvJitLink"):
        assert lib in libs, f"{lib} missing: {sorted(libs)}"
    duplicated = {lib: paths for lib, paths in libs.items() if len(paths) != 1}
    assert duplicated == {}
    # All of them from the wheels in ComfyUI's venv: the OS image brings no CUDA.
    assert all("/opt/comfyui/venv/" in p[0] and "/nvidia/" in p[0] for p in libs.values()), libs
    assert facts["comfyui"]["ok"] and facts["comfyui"]["version"] == IMAGE_COMFYUI
    assert facts["worker"]["ok"]


def test_gpu_image_lets_the_nvidia_toolkit_mount_the_driver(docker_client: Any,
                                                           gpu_image: str) -> None:
    env = dict(e.split("=", 1) for e in docker_client.images.get(gpu_image).attrs["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"


def test_cpu_image_carries_no_cuda_and_starts(worker_image: str) -> None:
    facts, proc = _check(worker_image, "cpu")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert facts["torch"]["cuda"] is None
    assert facts["cuda_libraries"] == {}
    # ComfyUI v0.33.0 imports torchaudio at start: starting at all proves it imports.
    assert facts["comfyui"]["ok"] and facts["comfyui"]["version"] == IMAGE_COMFYUI
    assert facts["worker"]["ok"]


def test_check_image_fails_a_cpu_image_judged_as_gpu(worker_image: str) -> None:
    """The check is not a rubber stamp: the CPU image is not a valid GPU image."""
    _, proc = _check(worker_image, "gpu")
    assert proc.returncode == 1
    assert "has no CUDA" in proc.stderr and "libcudnn is missing" in proc.stderr


def test_image_report_adds_up_to_the_image(docker_client: Any, worker_image: str) -> None:
    proc = subprocess.run([str(REPO / "scripts" / "image_report.sh"), "--json", worker_image],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    image = docker_client.images.get(worker_image)
    assert len(report["layers"]) == len(image.attrs["RootFS"]["Layers"])
    # docker's Size is the sum of the layers' unpacked contents; a layer tar adds headers.
    assert 0.97 < image.attrs["Size"] / report["total_raw"] <= 1.0
    assert 0 < report["total_gzip"] < report["total_raw"]
    assert report["total_raw"] == sum(la["raw"] for la in report["layers"])
    assert any("install_base.sh torch" in la["created_by"] for la in report["layers"])


def test_image_report_prints_a_markdown_table(test_base_image: str) -> None:
    image = test_base_image  # small: the format, not the sizes, is tested
    proc = subprocess.run([str(REPO / "scripts" / "image_report.sh"), image],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"### {image} (")
    assert "| layer | uncompressed | gzip -1 (registry) | created by |" in lines
    assert any(line.startswith("| **total** |") for line in lines)
    assert "`(base image)`" in proc.stdout
