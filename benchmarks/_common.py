"""Shared set-up for the benchmarks: a real ComfyUI (as the e2e tests find it)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # support.hf_server, e2e.helpers

FAST_BOOT_ARGS = ("--disable-all-custom-nodes", "--disable-api-nodes")


def comfyui() -> tuple[Path, str]:
    """(COMFYUI_DIR, COMFYUI_PYTHON) from the environment or ./.comfyui."""
    from comfy_worker.config import load_settings

    env = load_settings()
    if env.comfyui_dir is not None:
        return Path(env.comfyui_dir), env.comfyui_python
    local = REPO_ROOT / ".comfyui"
    if not (local / "ComfyUI" / "main.py").is_file():
        raise SystemExit("no ComfyUI: run scripts/setup_comfyui.sh or set COMFYUI_DIR")
    return local / "ComfyUI", str(local / "venv" / "bin" / "python")


def median(values: list[float]) -> float:
    return statistics.median(values)
