"""scripts/install_custom_nodes.sh against real git repositories on disk (no network).

Each node repository has two commits; the list pins the first, so a checkout of the
branch head would show. Requirements are a real wheel, installed into a real venv.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install_custom_nodes.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _wheel(dest: Path, name: str, version: str) -> Path:
    """A real pure-Python wheel: ``import NAME`` gives ``VERSION``."""
    files = {
        f"{name}/__init__.py": f'VERSION = "{version}"\n',
        f"{name}-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = f"{name}-{version}.dist-info/RECORD"
    lines = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        lines.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    lines.append(f"{record},,")
    files[record] = "\n".join(lines) + "\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def _node_repo(root: Path, name: str, requirement: str | None,
               *, allow_fetch_by_id: bool) -> tuple[Path, str, str]:
    """A repository with two commits; returns (path, first commit, second commit)."""
    repo = root / f"{name}.git-src"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    if allow_fetch_by_id:  # as GitHub: a shallow fetch of one commit by its id works
        _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    (repo / "__init__.py").write_text('NODE_CLASS_MAPPINGS = {}\nPINNED = "first"\n')
    if requirement:
        (repo / "requirements.txt").write_text(requirement + "\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "__init__.py").write_text('NODE_CLASS_MAPPINGS = {}\nPINNED = "second"\n')
    _git(repo, "commit", "-q", "-am", "second")
    second = _git(repo, "rev-parse", "HEAD")
    return repo, first, second


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv / "bin" / "python"


def _run(list_file: Path, dest: Path, python: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV, "PIP_NO_INDEX": "1"}
    return subprocess.run(["bash", str(SCRIPT), str(list_file), str(dest), str(python)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_nodes_are_installed_at_the_pinned_commit_with_their_requirements(
    tmp_path: Path, venv_python: Path
) -> None:
    wheel = _wheel(tmp_path, "tinydep_for_nodes", "1.2.3")
    shallow, shallow_first, _ = _node_repo(tmp_path, "ShallowNode",
                                           f"tinydep_for_nodes @ {wheel.as_uri()}",
                                           allow_fetch_by_id=True)
    cloned, cloned_first, _ = _node_repo(tmp_path, "ClonedNode", None,
                                         allow_fetch_by_id=False)
    nodes = tmp_path / "custom_nodes.txt"
    nodes.write_text(
        "# comment line\n\n"
        f"ShallowNode  {shallow.as_uri()}  {shallow_first}   # trailing comment\n"
        f"ClonedNode {cloned.as_uri()} {cloned_first}\n"
    )
    dest = tmp_path / "ComfyUI" / "custom_nodes"
    proc = _run(nodes, dest, venv_python)
    assert proc.returncode == 0, proc.stderr
    for name in ("ShallowNode", "ClonedNode"):
        assert 'PINNED = "first"' in (dest / name / "__init__.py").read_text()
        assert not (dest / name / ".git").exists()
    check = subprocess.run([str(venv_python), "-c",
                            "import tinydep_for_nodes; print(tinydep_for_nodes.VERSION)"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "1.2.3", check.stderr
    assert "2 node(s) installed" in proc.stdout


def test_a_commit_missing_from_the_repository_fails_naming_the_node(
    tmp_path: Path, venv_python: Path
) -> None:
    repo, _, _ = _node_repo(tmp_path, "Ghost", None, allow_fetch_by_id=True)
    nodes = tmp_path / "custom_nodes.txt"
    nodes.write_text(f"Ghost {repo.as_uri()} {'0' * 40}\n")
    proc = _run(nodes, tmp_path / "custom_nodes", venv_python)
    assert proc.returncode != 0
    assert "Ghost" in proc.stderr and "0" * 40 in proc.stderr


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("OnlyTwo https://example.org/x.git", "expected 'NAME GIT_URL COMMIT'"),
        ("Short https://example.org/x.git abc123", "not a full 40-hex commit id"),
        (f"../escape https://example.org/x.git {'a' * 40}", "plain folder name"),
    ],
)
def test_malformed_lines_are_rejected_with_their_line_number(
    tmp_path: Path, venv_python: Path, line: str, complaint: str
) -> None:
    nodes = tmp_path / "custom_nodes.txt"
    nodes.write_text("# header\n" + line + "\n")
    proc = _run(nodes, tmp_path / "custom_nodes", venv_python)
    assert proc.returncode != 0
    assert f"{nodes}:2:" in proc.stderr and complaint in proc.stderr


def test_the_shipped_list_pins_every_node_to_a_full_commit() -> None:
    pinned = []
    for raw in (REPO / "custom_nodes.txt").read_text().splitlines():
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        name, url, commit = fields
        assert url.startswith("https://github.com/"), url
        assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), commit
        pinned.append(name)
    assert {"RES4LYF", "ControlAltAI-Nodes"} <= set(pinned)
