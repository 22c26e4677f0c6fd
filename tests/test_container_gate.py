"""Container tests without a Docker daemon: skipped on a laptop, failed under CI=true.

CI must never go green with the image untested because no daemon answered (scripts/test.sh
starts one when it runs as root). This runs one real container test in a child pytest
pointed at a Docker socket that does not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/container/test_image.py::test_image_runs_as_documented"


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DOCKER_HOST")}
    env["DOCKER_HOST"] = f"unix://{tmp_path / 'no-docker.sock'}"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", TEST, "-q", "-rsf",
                           "-p", "no:cacheprovider"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ci", [None, "false"])
def test_without_a_daemon_container_tests_skip_outside_ci(tmp_path: Path, ci: str | None
                                                          ) -> None:
    proc = _run(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 skipped" in proc.stdout and "no Docker daemon reachable" in proc.stdout


def test_without_a_daemon_container_tests_fail_under_ci_true(tmp_path: Path) -> None:
    proc = _run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 error" in proc.stdout or "1 failed" in proc.stdout, proc.stdout[-3000:]
    assert "CI=true but no Docker daemon reachable" in proc.stdout
    assert "scripts/test.sh starts dockerd" in proc.stdout  # and how CI gets one
