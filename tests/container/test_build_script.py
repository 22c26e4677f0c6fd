"""build.sh without building: its help, option checks and the base-input hash that decides
whether the base image is rebuilt. Runs on a copy of the files build.sh reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_INPUTS = ["build.sh", "Dockerfile.base", "Dockerfile", "custom_nodes.txt", "pyproject.toml",
               "scripts/image", "scripts/install_custom_nodes.sh", "scripts/start.sh"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of what build.sh reads (it works in its own directory)."""
    root = tmp_path / "repo"
    for rel in BASE_INPUTS:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return root


def _build(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(root / "build.sh"), *args], capture_output=True,
                          text=True, timeout=120)


def _hash(root: Path, *args: str) -> str:
    proc = _build(root, "--print-base-hash", *args)
    assert proc.returncode == 0, proc.stderr
    value = proc.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", value), value
    return value


def test_help_documents_every_option_the_parser_accepts() -> None:
    proc = subprocess.run(["bash", str(REPO / "build.sh"), "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0
    script = (REPO / "build.sh").read_text()
    # the option parser's case patterns: "--image)", "-h|--help)", "--build-arg=*)"
    parsed = set(re.findall(r"^\s+(?:-h\|)?(--[a-z-]+)(?:=\*)?\)", script, flags=re.M))
    assert {"--push", "--platform", "--build-arg", "--cpu", "--wheels", "--ca-cert"} <= parsed
    for option in parsed:
        assert option in proc.stdout, f"{option} is parsed but not in --help"


def test_unknown_option_is_refused(tree: Path) -> None:
    proc = _build(tree, "--no-such-flag")
    assert proc.returncode == 2
    assert "--no-such-flag" in proc.stderr


def test_base_hash_is_stable_for_unchanged_inputs(tree: Path) -> None:
    assert _hash(tree) == _hash(tree)


def test_base_hash_changes_with_every_base_input(tree: Path) -> None:
    before = _hash(tree)
    nodes = tree / "custom_nodes.txt"
    nodes.write_text(nodes.read_text() + f"Extra https://github.com/a/b {'c' * 40}\n")
    after_nodes = _hash(tree)
    assert after_nodes != before
    install = tree / "scripts" / "image" / "install_base.sh"
    install.write_text(install.read_text() + "\n# changed\n")
    after_script = _hash(tree)
    assert after_script != after_nodes
    assert _hash(tree, "--cpu") != after_script
    assert _hash(tree, "--comfyui-ref", "v0.3.70") != after_script
    assert _hash(tree, "--build-arg", "APT_PACKAGES=python3") != after_script


def test_worker_only_files_do_not_rebuild_the_base(tree: Path) -> None:
    before = _hash(tree)
    for rel in ("Dockerfile", "scripts/start.sh", "pyproject.toml"):
        path = tree / rel
        path.write_text(path.read_text() + "\n# worker-side change\n")
    assert _hash(tree) == before


def test_local_inputs_are_checked_before_any_build(tree: Path, tmp_path: Path) -> None:
    proc = _build(tree, "--print-base-hash", "--comfyui-src", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "no main.py" in proc.stderr
    proc = _build(tree, "--print-base-hash", "--wheels", str(tmp_path / "nowheels"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    proc = _build(tree, "--print-base-hash", "--ca-cert", str(tmp_path / "none.pem"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
