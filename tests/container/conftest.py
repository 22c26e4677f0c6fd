"""Fixtures for the container tests: a Docker client and the two images, built once.

Tests that need Docker take the ``docker_client`` or ``worker_image`` fixture and carry
the ``container`` marker; without a reachable daemon they are skipped with the reason
"no Docker daemon reachable" (CI has none: the build takes minutes on 2 cores).

``worker_image`` builds with ``./build.sh`` on a locally made base image
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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_BASE_IMAGE = "comfy-worker-testbase:bookworm"
TEST_IMAGE_NAME = "comfy-worker-test"
NO_DAEMON = "no Docker daemon reachable"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A connected ``docker.DockerClient``; skips the test when no daemon answers."""
    try:
        import docker
    except ImportError:
        pytest.skip(f"{NO_DAEMON} (the 'docker' package is not installed)")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # any failure to connect means: no daemon here
        pytest.skip(f"{NO_DAEMON} ({type(exc).__name__})")
    yield client
    client.close()


def _pip_config(key: str) -> str | None:
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", key],
                          capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _cpu_torch_wheel_dir() -> Path | None:
    candidates = [_env("COMFY_WORKER_TEST_WHEELS"), _env("PIP_FIND_LINKS"),
                  _pip_config("global.find-links")]
    for raw in candidates:
        for part in (raw or "").split():
            d = Path(part.removeprefix("file://"))
            # The test base is Debian bookworm: Python 3.11 → cp311 wheels.
            if d.is_dir() and any(d.glob("torch-*+cpu-cp311-*.whl")):
                return d
    return None


def _torch_pin(wheels: Path) -> str:
    wheel = sorted(wheels.glob("torch-*+cpu-cp311-*.whl"))[-1]
    version = wheel.name.split("-")[1]
    return f"torch=={version} torchvision"


def _build_command() -> list[str]:
    cmd = [str(REPO / "build.sh"), "--image", TEST_IMAGE_NAME,
           "--base-image", _env("COMFY_WORKER_TEST_BASE_IMAGE") or TEST_BASE_IMAGE,
           "--cpu", "--skip-custom-nodes",
           # The debootstrap base has Python, venv, pip and CA certificates: no apt.
           "--build-arg", "APT_PACKAGES=python3 python3-venv ca-certificates"]
    wheels = _cpu_torch_wheel_dir()
    if wheels is not None:
        cmd += ["--wheels", str(wheels), "--torch", _torch_pin(wheels)]
    ca = _env("COMFY_WORKER_TEST_CA") or _env("PIP_CERT") or _pip_config("global.cert")
    if ca and Path(ca).is_file():
        cmd += ["--ca-cert", ca]
    src = _env("COMFYUI_DIR") or str(REPO / ".comfyui" / "ComfyUI")
    if Path(src, "main.py").is_file():
        cmd += ["--comfyui-src", src]
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
        pytest.skip(f"no {TEST_BASE_IMAGE} image and scripts/make_base_image.sh needs root "
                    "and debootstrap")
    subprocess.run([str(REPO / "scripts" / "make_base_image.sh"), TEST_BASE_IMAGE], check=True)


@pytest.fixture(scope="session")
def worker_image(docker_client: Any) -> str:
    """The worker image reference, built (or reused) once per session."""
    given = _env("COMFY_WORKER_TEST_IMAGE")
    if given:
        return given
    _ensure_test_base(docker_client)
    proc = subprocess.run(_build_command(), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"build.sh failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    image = proc.stdout.strip().splitlines()[-1]
    _remove_older_test_images(docker_client, image)
    return image


def _remove_older_test_images(client: Any, keep: str) -> None:
    """Earlier test builds (one tag per commit) would pile up: on the vfs storage driver
    each is gigabytes. Images used by a container, or younger than two hours (another
    test session may be using them), stay."""
    keep_id = client.images.get(keep).id
    cutoff = datetime.now(UTC) - timedelta(hours=2)
    for image in client.images.list(name=TEST_IMAGE_NAME):
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
