"""End-to-end fixtures: a real ComfyUI (CPU), a real HF-compatible server, a real lock.

ComfyUI comes from ``COMFYUI_DIR``/``COMFYUI_PYTHON`` or ``./.comfyui``
(``scripts/setup_comfyui.sh``). Without one the tests are skipped, except under
``CI=true``, where a missing ComfyUI fails them. One ComfyUI per session: the
``worker`` fixture is shared by every test that needs it.
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

from comfy_worker.config import Settings, load_settings
from e2e.helpers import compact_upscaler

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPO = "e2e/compact-upscaler"
MODEL_FILE = "2x_compact_e2e.safetensors"
MODEL_LOCK_PATH = f"upscale_models/{MODEL_FILE}"
FAST_BOOT_ARGS = ("--disable-all-custom-nodes", "--disable-api-nodes")


@dataclass(frozen=True)
class ComfyInstall:
    comfyui_dir: Path
    python: str


def _find_comfyui() -> ComfyInstall | None:
    env = load_settings()
    if env.comfyui_dir is not None:
        python = env.comfyui_python
        return ComfyInstall(Path(env.comfyui_dir), python)
    local = REPO_ROOT / ".comfyui"
    if (local / "ComfyUI" / "main.py").is_file() and (local / "venv" / "bin" / "python").exists():
        return ComfyInstall(local / "ComfyUI", str(local / "venv" / "bin" / "python"))
    return None


@pytest.fixture(scope="session")
def comfy_install() -> ComfyInstall:
    found = _find_comfyui()
    if found is None or not (found.comfyui_dir / "main.py").is_file():
        reason = ("no ComfyUI: run scripts/setup_comfyui.sh (makes ./.comfyui) or set "
                  "COMFYUI_DIR and COMFYUI_PYTHON")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return found


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
