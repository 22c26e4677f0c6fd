"""build.sh without building: its help, option checks and the base-input hash that decides
whether the base image is rebuilt. Runs on a copy of the files build.sh reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_INPUTS = ["build.sh", "Dockerfile", "custom_nodes.txt", "pyproject.toml", "requirements",
               "scripts/image", "scripts/install_custom_nodes.sh", "scripts/start.sh",
               ".build-inputs/README.md"]


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
    # The Dockerfile's worker stage is its end: appending changes only that stage.
    for rel in ("Dockerfile", "scripts/start.sh", "pyproject.toml", "requirements/worker.lock",
                "requirements/vast-pyworker.lock", "scripts/image/lock_deps.sh",
                "scripts/image/check_image.py"):
        path = tree / rel
        path.write_text(path.read_text() + "\n# worker-side change\n")
    assert _hash(tree) == before
    assert _hash(tree, "--cpu") == _hash(tree, "--cpu")


def test_the_base_stage_and_the_flavours_lock_are_base_inputs(tree: Path) -> None:
    gpu, cpu = _hash(tree), _hash(tree, "--cpu")
    assert gpu != cpu
    lock = tree / "requirements" / "comfyui-gpu.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    assert _hash(tree) != gpu
    assert _hash(tree, "--cpu") == cpu  # the CPU base does not copy the GPU lock
    dockerfile = tree / "Dockerfile"
    text = dockerfile.read_text()
    dockerfile.write_text(text.replace("FROM ${BASE_IMAGE} AS base",
                                       "FROM ${BASE_IMAGE} AS base\nENV CHANGED=1", 1))
    assert _hash(tree, "--cpu") != cpu


def test_the_hash_reads_exactly_the_files_the_base_stage_copies() -> None:
    """build.sh's hash and the Dockerfile's base-stage COPY lines must name the same files,
    or an unhashed change would hide behind an "up to date" base."""
    dockerfile = (REPO / "Dockerfile").read_text()
    base_stage = dockerfile.split("AS worker", 1)[0]
    copied = set()
    for line in re.findall(r"^COPY (.+)$", base_stage, flags=re.M):
        copied.update(line.split()[:-1])
    build = (REPO / "build.sh").read_text()
    hashed = build.split("base_hash() {", 1)[1].split("\n}", 1)[0]
    for source in copied:
        source = source.rstrip("/").replace("comfyui-${FLAVOR}.lock", "comfyui-$FLAVOR.lock")
        assert source in hashed, f"the base stage copies {source}, build.sh does not hash it"
    # and .dockerignore lets each of them into the context
    ignore = (REPO / ".dockerignore").read_text()
    allowed = [line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")]
    for source in copied:
        assert any(source.startswith(a) for a in allowed), f".dockerignore drops {source}"


def test_lock_deps_is_documented_and_delegates(tree: Path) -> None:
    proc = _build(tree, "--lock-deps", "--comfyui-src", "/nonexistent")
    assert proc.returncode == 2
    assert "no requirements.txt" in proc.stderr


def test_local_inputs_are_checked_before_any_build(tree: Path, tmp_path: Path) -> None:
    proc = _build(tree, "--print-base-hash", "--comfyui-src", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "no main.py" in proc.stderr
    proc = _build(tree, "--print-base-hash", "--wheels", str(tmp_path / "nowheels"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    proc = _build(tree, "--print-base-hash", "--ca-cert", str(tmp_path / "none.pem"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
