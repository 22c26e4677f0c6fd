"""What is inside the built images: CUDA once (GPU), none (CPU), and their size report.

Both flavours go through scripts/image/check_image.sh, the same check the release
workflow runs before it pushes: it starts a container with --network none and reports
torch's CUDA and cuDNN, every CUDA library file in the image, whether ComfyUI starts with
--cpu and whether `comfy-worker --help` runs. The GPU flavour is opt-in
(COMFY_WORKER_TEST_GPU_IMAGE=1, see conftest.py): it downloads torch 2.9.1 and its
nvidia-* wheels from PyPI.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
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


@pytest.fixture()
def layered_image(docker_client: Any, test_base_image: str, tmp_path: Path) -> Iterator[str]:
    """A small image on the test base with one incompressible and one compressible layer.
    Not the worker image: `docker save` stages the whole image under the daemon's data
    root first (2.8 GB for the CPU image), and disk is what CI runs out of."""
    tag = f"comfy-worker-report-test:{tmp_path.name.lower()}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {test_base_image}\n"
        "RUN head -c 3000000 /dev/urandom > /noise\n"
        "RUN yes comfy | head -c 3000000 > /text\n")
    proc = subprocess.run(["docker", "build", "--network=none", "-q", "-t", tag, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    yield tag
    with contextlib.suppress(Exception):
        docker_client.images.remove(tag, force=True)


def test_image_report_adds_up_to_the_image(docker_client: Any, layered_image: str) -> None:
    proc = subprocess.run([str(REPO / "scripts" / "image_report.sh"), "--json", layered_image],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    image = docker_client.images.get(layered_image)
    assert len(report["layers"]) == len(image.attrs["RootFS"]["Layers"]) >= 3
    # docker's Size is the sum of the layers' unpacked contents; a layer tar adds a 512-byte
    # header per file and pads each file to 512 bytes: ~4% on the base's many small files.
    assert 0.93 < image.attrs["Size"] / report["total_raw"] <= 1.0
    assert 0 < report["total_gzip"] < report["total_raw"]
    assert report["total_raw"] == sum(la["raw"] for la in report["layers"])
    assert report["total_gzip"] == sum(la["gzip"] for la in report["layers"])
    by_step = {("noise" if "/noise" in la["created_by"] else
                "text" if "/text" in la["created_by"] else "other"): la
               for la in report["layers"]}
    noise, text = by_step["noise"], by_step["text"]
    assert 3_000_000 < noise["raw"] < 3_100_000 and 3_000_000 < text["raw"] < 3_100_000
    assert noise["gzip"] > 0.95 * noise["raw"]  # random bytes do not compress
    assert text["gzip"] < 0.05 * text["raw"]    # "comfy\n" repeated does


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
