"""A fresh clone builds with a plain `docker build` (no build.sh, no prior step).

The repository (its committed HEAD) is cloned into a temporary directory and built with
`docker build`, only build arguments choosing the CPU flavour and this machine's offline
inputs. Those are served from a loopback HTTP server, so the clone gets no extra files:
the CPU torch wheel (PIP_FIND_LINKS), a ComfyUI tarball (COMFYUI_URL), the CA bundle of
this machine's TLS-intercepting proxy (EXTRA_CA_URL). The image must then run
`comfy-worker --help` and serve /health (200) on a tiny model locked on a volume.
Needs a Docker daemon, a CPU torch wheel and a ComfyUI tree (skipped otherwise); ~4 min.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from container_helpers import (
    comfyui_source,
    cpu_torch_wheel_dir,
    host_ca_bundle,
    skip_unless_ci,
    write_volume_with_locked_model,
)

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
IMAGE = "comfy-worker-fresh-clone:test"
SKIP_IN_TARBALL = {"models", "output", "input", "temp", "user", "custom_nodes", ".git",
                   "__pycache__", "extra_model_paths.yaml"}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """``root`` over HTTP on 127.0.0.1 (the build runs with --network host)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def comfyui_tarball(src: Path, dest: Path) -> Path:
    """Like GitHub's release tarball: one top folder, the source only."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        rel = parts[1:]
        if rel and (rel[0] in SKIP_IN_TARBALL or "__pycache__" in rel):
            return None
        return info

    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        tar.add(src, arcname="ComfyUI-src", filter=keep)
    return dest


@pytest.fixture(scope="module")
def fresh_clone_image(docker_client: Any, test_base_image: str,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    wheels, src, ca = cpu_torch_wheel_dir(), comfyui_source(), host_ca_bundle()
    if wheels is None or src is None:
        skip_unless_ci("needs a CPU torch wheel directory and a ComfyUI tree on this machine")
    tmp = tmp_path_factory.mktemp("fresh-clone")
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
                   check=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head], check=True)
    served = tmp / "served"
    (served / "wheels").mkdir(parents=True)
    for wheel in wheels.glob("torch-*+cpu-cp311-*.whl"):
        (served / "wheels" / wheel.name).symlink_to(wheel)
    comfyui_tarball(src, served / "comfyui.tar.gz")
    build_args = {
        "BASE_IMAGE": test_base_image,
        "FLAVOR": "cpu",
        "TORCH_INDEX_URL": "",  # PyTorch's CPU index is not reachable here
        "SKIP_CUSTOM_NODES": "1",  # GitHub is not reachable here
        "APT_PACKAGES": "python3 python3-venv ca-certificates",
    }
    with serve_directory(served) as url:
        build_args["PIP_FIND_LINKS"] = f"{url}/wheels/"
        build_args["COMFYUI_URL"] = f"{url}/comfyui.tar.gz"
        if ca is not None:
            (served / "ca.crt").symlink_to(ca)
            build_args["EXTRA_CA_URL"] = f"{url}/ca.crt"
        cmd = ["docker", "build", "--network", "host", "-t", IMAGE]
        for key, value in build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        started = time.monotonic()
        proc = subprocess.run([*cmd, "."], cwd=clone, capture_output=True, text=True,
                              timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"docker build in a fresh clone failed:\n{proc.stdout[-5000:]}\n"
                    f"{proc.stderr[-3000:]}")
    print(f"plain docker build of a fresh clone: {time.monotonic() - started:.0f} s")
    yield IMAGE
    with contextlib.suppress(Exception):
        docker_client.images.remove(IMAGE, force=True)


def test_plain_docker_build_of_a_fresh_clone_runs_the_cli(docker_client: Any,
                                                          fresh_clone_image: str) -> None:
    out = docker_client.containers.run(fresh_clone_image, command=["comfy-worker", "--help"],
                                       network_mode="none", remove=True).decode()
    assert "usage: comfy-worker" in out
    labels = docker_client.images.get(fresh_clone_image).attrs["Config"]["Labels"]
    assert labels["comfy-worker.flavor"] == "cpu"


def test_plain_docker_build_of_a_fresh_clone_serves_health(
    docker_client: Any, fresh_clone_image: str, tmp_path: Path
) -> None:
    volume = tmp_path / "workspace"
    write_volume_with_locked_model(volume)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    container = docker_client.containers.run(
        fresh_clone_image, detach=True, network_mode="host",
        environment={"MODE": "local", "COMFY_WORKER_HOST": "127.0.0.1",
                     "COMFY_WORKER_PORT": str(port), "COMFYUI_CPU": "1",
                     "COMFY_WORKER_LOCK": "/workspace/models.lock.json"},
        volumes={str(volume): {"bind": "/workspace", "mode": "rw"}})
    try:
        deadline = time.monotonic() + 300
        last = "no answer"
        while time.monotonic() < deadline:
            container.reload()
            assert container.status != "exited", container.logs().decode()[-3000:]
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                if resp.status_code == 200:
                    break
                last = f"{resp.status_code} {resp.text[:200]}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(2)
        else:
            pytest.fail(f"/health never 200 (last: {last}):\n{container.logs().decode()[-3000:]}")
        logs = container.logs().decode()
        assert "mode=local" in logs
        assert "COMFY_WORKER_API_TOKEN is unset" not in logs  # loopback: no warning
    finally:
        container.remove(force=True)
