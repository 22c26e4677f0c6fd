"""scripts/setup_comfyui.sh: where the test ComfyUI v0.33.0 comes from (``--print-source``).

The order is COMFYUI_SRC (a tree or a tarball), else ``../shared/comfyui/ComfyUI-0.33.0.tar.gz``
beside the checkout (beside a worktree's main checkout, or a local clone's origin, too),
sha256 checked, else GitHub's tag tarball. The script runs from a copy in a throwaway
checkout layout, so the real ``../shared`` of this machine plays no part except where a
test links it in on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "setup_comfyui.sh"
SHARED_SHA256 = "457148b3f25b097d9f2504398e9e536111b22a24e0916a9626aa5c467ca1cff8"
GITHUB = "https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/v0.33.0.tar.gz"


def _checkout(root: Path) -> Path:
    """A folder laid out like a checkout: scripts/setup_comfyui.sh in it."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "scripts" / SCRIPT.name)
    return root


def _git_checkout(root: Path) -> Path:
    repo = _checkout(root)
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "s"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, capture_output=True)
    return repo


def _print_source(repo: Path, comfyui_src: str | None = None
                  ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_SRC"}
    if comfyui_src is not None:
        env["COMFYUI_SRC"] = comfyui_src
    return subprocess.run(["bash", str(repo / "scripts" / SCRIPT.name), "--print-source"],
                          env=env, capture_output=True, text=True, timeout=60)


def _shared(parent: Path, content: bytes) -> Path:
    tarball = parent / "shared" / "comfyui" / "ComfyUI-0.33.0.tar.gz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(content)
    return tarball


def test_without_any_local_source_it_is_githubs_tag_tarball(tmp_path: Path) -> None:
    proc = _print_source(_checkout(tmp_path / "repo"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["github", GITHUB]
    assert not (tmp_path / "repo" / ".comfyui").exists()  # --print-source changes nothing


def test_comfyui_src_a_tree_or_a_tarball_comes_first(tmp_path: Path) -> None:
    repo = _checkout(tmp_path / "repo")
    _shared(tmp_path, b"would fail its sha256 check if it were looked at")
    tree = tmp_path / "my-comfy"
    tree.mkdir()
    (tree / "main.py").write_text("")
    tarball = tmp_path / "comfy.tar.gz"
    tarball.write_bytes(b"")

    proc = _print_source(repo, str(tree))
    assert (proc.returncode, proc.stdout.split()) == (0, ["tree", str(tree.resolve())])
    proc = _print_source(repo, str(tarball))
    assert (proc.returncode, proc.stdout.split()) == (0, ["tarball", str(tarball.resolve())])


@pytest.mark.parametrize("what", ["missing", "tree without main.py"])
def test_a_bad_comfyui_src_names_the_setting_and_the_fix(tmp_path: Path, what: str) -> None:
    src = tmp_path / "src"
    if what != "missing":
        src.mkdir()
    proc = _print_source(_checkout(tmp_path / "repo"), str(src))
    assert proc.returncode == 1
    assert f"COMFYUI_SRC={src}" in proc.stderr and "a ComfyUI tree or a .tar.gz" in proc.stderr


def test_a_shared_tarball_with_another_sha256_is_refused_naming_both(tmp_path: Path) -> None:
    tarball = _shared(tmp_path, b"not ComfyUI")
    proc = _print_source(_checkout(tmp_path / "repo"))
    assert proc.returncode == 1
    assert str(tarball) in proc.stderr and SHARED_SHA256 in proc.stderr
    assert "COMFYUI_SRC" in proc.stderr  # the way out


def test_the_shared_tarball_beside_the_checkout_is_used(tmp_path: Path) -> None:
    real = next((d / "shared" / "comfyui" / "ComfyUI-0.33.0.tar.gz" for d in
                 (REPO.parent, Path(subprocess.run(
                     ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute",
                      "--git-common-dir"], capture_output=True, text=True).stdout.strip()
                 ).parent.parent)
                 if (d / "shared" / "comfyui" / "ComfyUI-0.33.0.tar.gz").is_file()), None)
    if real is None:
        pytest.skip("no ../shared/comfyui/ComfyUI-0.33.0.tar.gz on this machine")
    (tmp_path / "shared" / "comfyui").mkdir(parents=True)
    (tmp_path / "shared" / "comfyui" / real.name).symlink_to(real)
    proc = _print_source(_checkout(tmp_path / "repo"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["tarball",
                                   str(tmp_path.resolve() / "shared" / "comfyui" / real.name)]


def test_a_clone_of_a_local_checkout_finds_the_tarball_beside_its_origin(tmp_path: Path
                                                                          ) -> None:
    origin = _git_checkout(tmp_path / "work" / "main")
    tarball = _shared(tmp_path / "work", b"beside the origin")
    clone = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True,
                   capture_output=True)
    proc = _print_source(clone)
    # Found (and checked: this one is not ComfyUI) through the clone's origin.
    assert proc.returncode == 1 and str(tarball.resolve()) in proc.stderr, proc.stderr


def test_a_worktree_finds_the_tarball_beside_its_main_checkout(tmp_path: Path) -> None:
    main = _git_checkout(tmp_path / "work" / "main")
    tarball = _shared(tmp_path / "work", b"beside the main checkout")
    worktree = tmp_path / "work" / "wt" / "branch"
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", "-b", "b",
                    str(worktree)], check=True, capture_output=True)
    proc = _print_source(worktree)
    assert proc.returncode == 1 and str(tarball.resolve()) in proc.stderr, proc.stderr


def test_an_unknown_comfyui_torch_names_the_setting_and_the_choices(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYUI_TORCH": "cuda"}
    proc = subprocess.run(["bash", str(_checkout(tmp_path / "repo") / "scripts" / SCRIPT.name),
                           "--print-source"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "COMFYUI_TORCH='cuda'" in proc.stderr and "cpu or gpu" in proc.stderr


def _lock_part(lock: Path, part: str) -> set[str]:
    """The script's own lock_part function, run on LOCK: the package names it keeps."""
    body = subprocess.run(["sed", "-n", "/^lock_part() {/,/^}/p", str(SCRIPT)],
                          capture_output=True, text=True, check=True).stdout
    assert body.startswith("lock_part() {"), "lock_part() not found in setup_comfyui.sh"
    out = subprocess.run(["bash", "-c", body + '\nlock_part "$1" "$2"', "-", str(lock), part],
                         capture_output=True, text=True, check=True).stdout
    assert "--hash=sha256:" in out  # hashes travel with their requirement
    return {line.split("==")[0] for line in out.splitlines() if "==" in line}


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_the_lock_splits_into_torch_and_the_rest_without_template_media(flavor: str) -> None:
    lock = REPO / "requirements" / f"comfyui-{flavor}.lock"
    names = {line.split("==")[0] for line in lock.read_text().splitlines()
             if line[:1].isalnum() and "==" in line}
    torch, rest = _lock_part(lock, "torch"), _lock_part(lock, "rest")
    assert {"torch", "torchvision", "torchaudio"} <= torch
    assert all(n in {"torch", "torchvision", "torchaudio", "triton"} or n.startswith("nvidia-")
               for n in torch)
    media = {n for n in names if n.startswith("comfyui-workflow-templates-media-")}
    assert media, "the lock has template media packages to leave out"
    assert not torch & rest and not media & (torch | rest)
    assert torch | rest | media == names


def _share_identical_files(root: Path) -> subprocess.CompletedProcess[str]:
    """The script's own share_identical_files function, run with ROOT=root."""
    body = subprocess.run(["sed", "-n", "/^share_identical_files() {/,/^}/p", str(SCRIPT)],
                          capture_output=True, text=True, check=True).stdout
    assert body.startswith("share_identical_files() {"), "not found in setup_comfyui.sh"
    harness = 'say() { echo "setup_comfyui: $*"; }\nROOT=$1\n' + body + "\nshare_identical_files"
    return subprocess.run(["bash", "-c", harness, "-", str(root)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("hardlink") is None, reason="no util-linux hardlink here")
def test_the_two_venvs_share_their_identical_files_and_only_those(tmp_path: Path) -> None:
    site = "lib/python3.11/site-packages"
    current, compat = tmp_path / "venv" / site, tmp_path / "compat" / "venv" / site
    same, other = os.urandom(64 << 10), os.urandom(64 << 10)
    files = {  # name: (bytes in current, bytes in compat, compat's mode)
        "torch/lib/libtorch.so": (same, same, 0o755),
        "numpy/core.py": (same[:8192], same[:8192], 0o644),
        "frontend/index.js": (same, other, 0o644),       # another version: kept apart
        "bin_helper": (same[:4096], same[:4096], 0o755),  # same bytes, another mode
    }
    for name, (a, b, mode) in files.items():
        for venv, data, m in ((current, a, 0o644), (compat, b, mode)):
            (venv / name).parent.mkdir(parents=True, exist_ok=True)
            (venv / name).write_bytes(data)
            (venv / name).chmod(m)
    (current / "torch/lib/libtorch.so").chmod(0o755)

    proc = _share_identical_files(tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert "share their identical files" in proc.stdout, proc.stdout
    shared = {name for name in files
              if (current / name).stat().st_ino == (compat / name).stat().st_ino}
    assert shared == {"torch/lib/libtorch.so", "numpy/core.py"}
    for name, (a, b, mode) in files.items():  # every file still reads as before
        assert (current / name).read_bytes() == a and (compat / name).read_bytes() == b
        assert (compat / name).stat().st_mode & 0o777 == mode


def test_with_one_venv_missing_nothing_is_linked(tmp_path: Path) -> None:
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    proc = _share_identical_files(tmp_path)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
