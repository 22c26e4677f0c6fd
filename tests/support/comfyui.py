"""A real ComfyUI for tests that need one (the same one the e2e tests use).

``COMFYUI_DIR``/``COMFYUI_PYTHON`` or ``./.comfyui`` (``scripts/setup_comfyui.sh``).
:func:`comfyui_or_skip` skips without one, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.process import ComfyProcess, LaunchConfig
from comfy_worker.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST_BOOT_ARGS = ("--disable-all-custom-nodes", "--disable-api-nodes")


@dataclass(frozen=True)
class ComfyInstall:
    comfyui_dir: Path
    python: str


def find_comfyui() -> ComfyInstall | None:
    settings = load_settings()
    if settings.comfyui_dir is not None and (Path(settings.comfyui_dir) / "main.py").is_file():
        return ComfyInstall(Path(settings.comfyui_dir), settings.comfyui_python)
    local = REPO_ROOT / ".comfyui"
    if (local / "ComfyUI" / "main.py").is_file() and (local / "venv" / "bin" / "python").exists():
        return ComfyInstall(local / "ComfyUI", str(local / "venv" / "bin" / "python"))
    return None


def skip_or_fail(reason: str) -> None:
    """Skip locally; under CI=true a missing prerequisite is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def comfyui_or_skip() -> ComfyInstall:
    found = find_comfyui()
    if found is None:
        skip_or_fail("no ComfyUI: run scripts/setup_comfyui.sh or set COMFYUI_DIR and "
                     "COMFYUI_PYTHON")
    assert found is not None
    return found


@dataclass(frozen=True)
class RunningComfy:
    url: str
    work_dir: Path

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"


@contextlib.contextmanager
def running_comfyui(install: ComfyInstall) -> Iterator[RunningComfy]:
    work = Path(tempfile.mkdtemp(prefix="comfy-test-"))
    proc = ComfyProcess(LaunchConfig(comfyui_dir=install.comfyui_dir, python=install.python,
                                     work_dir=work, cpu=True, extra_args=FAST_BOOT_ARGS,
                                     boot_timeout=180.0))
    try:
        proc.start()
        yield RunningComfy(proc.base_url, work)
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_prompt(comfy: RunningComfy, prompt: dict[str, Any],
               extra_pnginfo: dict[str, Any] | None = None, timeout: float = 120.0
               ) -> dict[str, Any]:
    """Queue ``prompt`` and wait for its history entry (its outputs)."""
    client = ComfyClient(comfy.url)
    try:
        body: dict[str, Any] = {"prompt": prompt, "client_id": uuid.uuid4().hex}
        if extra_pnginfo:  # what the editor sends, so the PNG embeds the UI workflow
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        resp = requests.post(f"{comfy.url}/prompt", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        prompt_id = resp.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = client.history(prompt_id).get(prompt_id)
            if entry and entry.get("status", {}).get("completed"):
                return entry
            if entry and entry.get("status", {}).get("status_str") == "error":
                raise AssertionError(f"ComfyUI failed the prompt: {entry['status']}")
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")
    finally:
        client.close()
