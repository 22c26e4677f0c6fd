"""Real ComfyUIs for tests that need one (the same ones the e2e tests use).

Two of them, both made by ``scripts/setup_comfyui.sh`` (``scripts/test.sh`` exports both):

* the current one, v0.33.0 (what the image carries): ``COMFYUI_DIR``/``COMFYUI_PYTHON``,
  else ``./.comfyui/ComfyUI`` with ``./.comfyui/venv``;
* the compat one, v0.3.75 (the oldest the worker supports): ``COMFYUI_COMPAT_DIR``/
  ``COMFYUI_COMPAT_PYTHON``, else ``./.comfyui/compat/ComfyUI`` with
  ``./.comfyui/compat/venv``. The e2e tests marked ``compat`` run against both.

:func:`comfyui_or_skip` / :func:`install_or_skip` skip without one, except under
``CI=true`` where they fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import requests

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.process import ComfyProcess, LaunchConfig
from comfy_worker.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL = REPO_ROOT / ".comfyui"
FAST_BOOT_ARGS = ("--disable-all-custom-nodes", "--disable-api-nodes")
COMPAT_DIR_ENV = "COMFYUI_COMPAT_DIR"
COMPAT_PYTHON_ENV = "COMFYUI_COMPAT_PYTHON"
COMPAT_VERSION = "0.3.75"
"""The version setup_comfyui.sh installs as the compat ComfyUI (the supported minimum)."""

Role = Literal["current", "compat"]


@dataclass(frozen=True)
class ComfyInstall:
    comfyui_dir: Path
    python: str
    role: Role = "current"

    @property
    def version(self) -> str | None:
        """``comfyui_version.py``'s ``__version__`` (what /system_stats reports)."""
        return comfyui_version(self.comfyui_dir)


def comfyui_version(comfyui_dir: Path) -> str | None:
    try:
        text = (comfyui_dir / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, flags=re.M)
    return match.group(1) if match else None


def _local(root: Path, role: Role) -> ComfyInstall | None:
    python = root / "venv" / "bin" / "python"
    if (root / "ComfyUI" / "main.py").is_file() and python.exists():
        return ComfyInstall(root / "ComfyUI", str(python), role)
    return None


def find_comfyui() -> ComfyInstall | None:
    """The current ComfyUI: COMFYUI_DIR/COMFYUI_PYTHON (the worker's own settings), else
    ./.comfyui."""
    settings = load_settings()
    if settings.comfyui_dir is not None:
        if (Path(settings.comfyui_dir) / "main.py").is_file():
            return ComfyInstall(Path(settings.comfyui_dir), settings.comfyui_python)
        return None
    return _local(LOCAL, "current")


def find_compat_comfyui() -> ComfyInstall | None:
    """The compat ComfyUI (v0.3.75): COMFYUI_COMPAT_DIR/COMFYUI_COMPAT_PYTHON (default: this
    Python, as COMFYUI_PYTHON's), else ./.comfyui/compat. Test set-up, not a worker setting."""
    given = os.environ.get(COMPAT_DIR_ENV)
    if given:
        if (Path(given) / "main.py").is_file():
            return ComfyInstall(Path(given), os.environ.get(COMPAT_PYTHON_ENV) or sys.executable,
                                "compat")
        return None
    return _local(LOCAL / "compat", "compat")


def find_install(role: Role) -> ComfyInstall | None:
    return find_comfyui() if role == "current" else find_compat_comfyui()


def skip_or_fail(reason: str) -> None:
    """Skip locally; under CI=true a missing prerequisite is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


MISSING = {
    "current": "no ComfyUI: run scripts/setup_comfyui.sh (makes ./.comfyui) or set COMFYUI_DIR "
               "and COMFYUI_PYTHON",
    "compat": f"no compat ComfyUI ({COMPAT_VERSION}): run scripts/setup_comfyui.sh (makes "
              f"./.comfyui/compat) or set {COMPAT_DIR_ENV} and {COMPAT_PYTHON_ENV}",
}


def install_or_skip(role: Role) -> ComfyInstall:
    found = find_install(role)
    if found is None:
        skip_or_fail(MISSING[role])
    assert found is not None
    return found


def comfyui_or_skip() -> ComfyInstall:
    return install_or_skip("current")


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
