"""End-to-end fixtures: a real ComfyUI (CPU), a real HF-compatible server, a real lock.

ComfyUI comes from ``COMFYUI_DIR``/``COMFYUI_PYTHON`` or ``./.comfyui``
(``scripts/setup_comfyui.sh``: v0.33.0). Tests marked ``compat`` run a second time
against the oldest supported ComfyUI, v0.3.75 (``COMFYUI_COMPAT_DIR``/
``COMFYUI_COMPAT_PYTHON`` or ``./.comfyui/compat``): ``comfy_install`` is parametrized,
with ids ``current-VERSION`` and ``compat-VERSION`` (``-m compat -k "not current"`` runs
the subset against v0.3.75 only). Without a ComfyUI the tests are skipped, except under
``CI=true``, where a missing one (compat included) fails them. One ComfyUI per session
and version: the ``worker`` fixture is shared by every test that needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import HFServer
from support.comfyui import (
    FAST_BOOT_ARGS,
    ComfyInstall,
    Role,
    find_install,
    install_or_skip,
)

from comfy_worker.config import Settings, load_settings
from e2e.helpers import compact_upscaler

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPO = "e2e/compact-upscaler"
MODEL_FILE = "2x_compact_e2e.safetensors"
MODEL_LOCK_PATH = f"upscale_models/{MODEL_FILE}"
__all__ = ["FAST_BOOT_ARGS", "ComfyInstall"]


def _role_id(role: Role) -> str:
    found = find_install(role)
    version = found.version if found is not None else None
    return f"{role}-{version or 'missing'}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using ``comfy_install`` runs on the current ComfyUI; a ``compat`` test
    also on the compat one."""
    if "comfy_install" not in metafunc.fixturenames:
        return
    roles: list[Role] = ["current"]
    if metafunc.definition.get_closest_marker("compat") is not None:
        roles.append("compat")
    metafunc.parametrize("comfy_install", roles, indirect=True, scope="session",
                         ids=[_role_id(r) for r in roles])


@pytest.fixture(scope="session")
def comfy_install(request: pytest.FixtureRequest) -> ComfyInstall:
    return install_or_skip(getattr(request, "param", "current"))


@dataclass(frozen=True)
class ModelEnv:
    hub: HFServer
    lock_path: Path
    models_dir: Path
    model_name: str
    model_sha256: str


@pytest.fixture(scope="session")
def model_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelEnv]:
    """A Compact upscaler served by a local HF server and pinned in a lock file."""
    root = tmp_path_factory.mktemp("models-env")
    data = compact_upscaler()
    with HFServer() as hub:
        served = hub.add_file(MODEL_REPO, MODEL_FILE, data)
        lock = {"version": 1, "models": [{
            "path": MODEL_LOCK_PATH,
            "source": {"type": "huggingface", "repo": MODEL_REPO,
                       "revision": served.commit, "file": MODEL_FILE},
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}
        lock_path = root / "models.lock.json"
        lock_path.write_text(json.dumps(lock, indent=2))
        yield ModelEnv(hub=hub, lock_path=lock_path, models_dir=root / "models",
                       model_name=MODEL_FILE, model_sha256=lock["models"][0]["sha256"])


def e2e_settings(install: ComfyInstall, models: ModelEnv, work_dir: Path) -> Settings:
    return load_settings(
        {"HF_ENDPOINT": models.hub.endpoint},
        comfyui_dir=install.comfyui_dir, comfyui_python=install.python, comfyui_cpu=True,
        comfyui_extra_args=FAST_BOOT_ARGS, lock_path=models.lock_path,
        models_dir=models.models_dir, work_dir=work_dir, job_timeout=120.0,
        boot_timeout=120.0,
    )


def e2e_env(install: ComfyInstall, models: ModelEnv) -> dict[str, str]:
    """Environment for a `comfy-worker` subprocess with the same set-up."""
    env = dict(os.environ)
    env.update({
        "COMFYUI_DIR": str(install.comfyui_dir), "COMFYUI_PYTHON": install.python,
        "COMFYUI_CPU": "1", "COMFYUI_EXTRA_ARGS": " ".join(FAST_BOOT_ARGS),
        "COMFY_WORKER_LOCK": str(models.lock_path),
        "COMFY_WORKER_MODELS_DIR": str(models.models_dir),
        "HF_ENDPOINT": models.hub.endpoint, "COMFYUI_BOOT_TIMEOUT": "120",
    })
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return env


@pytest.fixture(scope="session")
def worker(comfy_install: ComfyInstall, model_env: ModelEnv,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The session's one Worker (models synced, ComfyUI ready)."""
    from comfy_worker.worker import Worker

    w = Worker(e2e_settings(comfy_install, model_env, tmp_path_factory.mktemp("work")))
    w.start()
    try:
        yield w
    finally:
        w.stop()
