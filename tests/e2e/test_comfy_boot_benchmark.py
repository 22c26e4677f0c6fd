"""benchmarks/comfy_boot.py runs (one round): both test ComfyUIs boot as the worker starts
them and the JSON names their versions. No timing is asserted (benchmarks print ratios;
they are not timed tests); this keeps the benchmark from rotting when the launch changes
(it once died on a --user-directory the worker now passes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.comfyui import COMPAT_VERSION, install_or_skip

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_comfy_boot_benchmark_boots_both_versions() -> None:
    current, compat = install_or_skip("current"), install_or_skip("compat")
    env = dict(os.environ)
    env.update({"COMFYUI_DIR": str(current.comfyui_dir), "COMFYUI_PYTHON": current.python,
                "COMFYUI_COMPAT_DIR": str(compat.comfyui_dir),
                "COMFYUI_COMPAT_PYTHON": compat.python})
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "comfy_boot.py"),
                           "--rounds", "1", "--json"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["compat"]["version"] == COMPAT_VERSION
    assert result["current"]["version"] == current.version
    for role in ("compat", "current"):
        assert len(result[role]["runs_s"]) == 1 and result[role]["median_s"] > 0
    assert result["ratio_current_to_compat"] > 0
