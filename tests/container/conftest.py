"""Fixtures for the container tests: a Docker client and the two images, built once.

Tests that need Docker take the ``docker_client`` or ``worker_image`` fixture and carry
the ``container`` marker; without a reachable daemon they are skipped with the reason
"no Docker daemon reachable". Under CI=true they fail instead (scripts/test.sh starts a
daemon when it runs as root), and so does a missing prerequisite (the test base, offline
inputs); only the opt-in GPU build still skips.

``worker_image`` builds the CPU flavour with ``./build.sh`` on a locally made base image
(``scripts/make_base_image.sh``: debootstrap + docker import; no registry needed), CPU
torch and, where this machine has them, offline inputs: a torch wheel directory, the
host's CA bundle (TLS-intercepting proxies), a ComfyUI source tree. build.sh reuses the
base when its inputs' hash is unchanged and Docker's layer cache covers the worker, so a
rerun costs seconds. Override with env:

  COMFY_WORKER_TEST_IMAGE       use this worker image as is (no build)
  COMFY_WORKER_TEST_BASE_IMAGE  FROM for the base (default comfy-worker-testbase:bookworm,
                                made by scripts/make_base_image.sh when missing)
  COMFY_WORKER_TEST_WHEELS      wheel dir holding a CPU torch (default: pip's find-links)
  COMFY_WORKER_TEST_CA          CA bundle to trust in the build (default: PIP_CERT)
  COMFY_WORKER_TEST_GPU_IMAGE=1 also build the GPU flavour (``gpu_image``: torch 2.9.1 and
                                its nvidia-* wheels from PyPI; ~3.9 GB download, opt-in)
  COMFY_WORKER_TEST_GPU_IMAGE_REF  use this GPU image as is (no build)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
from container_helpers import (
    comfyui_source,
    cpu_torch_wheel_dir,
    host_ca_bundle,
    skip_unless_ci,
)

REPO = Path(__file__).resolve().parents[2]
TEST_BASE_IMAGE = "comfy-worker-testbase:bookworm"
TEST_IMAGE_NAME = "comfy-worker-test"
GPU_TEST_IMAGE_NAME = "comfy-worker-gpu-test"
GPU_OPT_IN = "COMFY_WORKER_TEST_GPU_IMAGE"
NO_DAEMON = "no Docker daemon reachable"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


def _no_daemon(why: str) -> NoReturn:
    reason = f"{NO_DAEMON} ({why})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}: scripts/test.sh starts dockerd when it runs as "
                    "root (apt-get install docker.io when missing)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A connected ``docker.DockerClient``; skips the test when no daemon answers."""
    try:
        import docker
    except ImportError:
        _no_daemon("the 'docker' package is not installed")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # any failure to connect means: no daemon here
        _no_daemon(type(exc).__name__)
    yield client
    client.close()


def _build_command(*, gpu: bool = False) -> list[str]:
    cmd = [str(REPO / "build.sh"), "--image", GPU_TEST_IMAGE_NAME if gpu else TEST_IMAGE_NAME,
           "--base-image", _env("COMFY_WORKER_TEST_BASE_IMAGE") or TEST_BASE_IMAGE,
           "--skip-custom-nodes",
           # The debootstrap base has Python, venv, pip and CA certificates: no apt.
           "--build-arg", "APT_PACKAGES=python3 python3-venv ca-certificates"]
    if not gpu:
        cmd.append("--cpu")
        wheels = cpu_torch_wheel_dir()
        if wheels is not None:
            cmd += ["--wheels", str(wheels)]
    ca = host_ca_bundle()
    if ca is not None:
        cmd += ["--ca-cert", str(ca)]
    src = comfyui_source()
    if src is not None:
        cmd += ["--comfyui-src", str(src)]
    if not (REPO / "scripts" / "install_vast_pyworker.sh").is_file():
        cmd += ["--build-arg", "VAST_PYWORKER=0"]
    return cmd


def _ensure_test_base(client: Any) -> None:
    if _env("COMFY_WORKER_TEST_BASE_IMAGE"):
        return
    try:
        client.images.get(TEST_BASE_IMAGE)
        return
    except Exception:
        pass
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        skip_unless_ci(f"no {TEST_BASE_IMAGE} image and scripts/make_base_image.sh needs root "
                       "and debootstrap")
    subprocess.run([str(REPO / "scripts" / "make_base_image.sh"), TEST_BASE_IMAGE], check=True)


def _build(client: Any, *, gpu: bool) -> str:
    _ensure_test_base(client)
    started = time.monotonic()
    proc = subprocess.run(_build_command(gpu=gpu), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"build.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    assert "does not extend" not in proc.stderr, proc.stderr[-3000:]
    image = proc.stdout.strip().splitlines()[-1]
    print(f"build.sh built {image} in {time.monotonic() - started:.0f} s")
    _remove_older_test_images(client, image)
    return image


@pytest.fixture(scope="session")
def test_base_image(docker_client: Any) -> str:
    """The OS base the test builds start FROM, made by scripts/make_base_image.sh when
    missing (a fresh CI machine has none)."""
    _ensure_test_base(docker_client)
    return _env("COMFY_WORKER_TEST_BASE_IMAGE") or TEST_BASE_IMAGE


@pytest.fixture(scope="session")
def worker_image(docker_client: Any) -> str:
    """The (CPU) worker image reference, built (or reused) once per session."""
    given = _env("COMFY_WORKER_TEST_IMAGE")
    if given:
        return given
    return _build(docker_client, gpu=False)


@pytest.fixture(scope="session")
def gpu_image(docker_client: Any) -> str:
    """The GPU flavour, built from the test base with torch 2.9.1 and its nvidia-* wheels
    from PyPI. Opt-in: ~3.9 GB of downloads and ~10 GB of disk."""
    given = _env("COMFY_WORKER_TEST_GPU_IMAGE_REF")
    if given:
        return given
    if _env(GPU_OPT_IN) != "1":
        pytest.skip(f"the GPU image build is opt-in: set {GPU_OPT_IN}=1 (downloads ~3.9 GB "
                    "of torch/CUDA wheels from PyPI; ~6 min and ~10 GB of disk)")
    return _build(docker_client, gpu=True)


def _remove_older_test_images(client: Any, keep: str) -> None:
    """Earlier test builds (one tag per commit) would pile up: on the vfs storage driver
    each is gigabytes. Images used by a container, or younger than two hours (another
    test session may be using them), stay."""
    keep_id = client.images.get(keep).id
    cutoff = datetime.now(UTC) - timedelta(hours=2)
    for image in client.images.list(name=keep.rsplit(":", 1)[0]):
        created = datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=UTC)
        if image.id == keep_id or created > cutoff:
            continue
        for tag in image.tags:
            with contextlib.suppress(Exception):
                client.images.remove(tag, noprune=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and (
            "docker_client" in getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.container)
