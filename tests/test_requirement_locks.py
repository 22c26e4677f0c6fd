"""The hash-pinned requirement locks (requirements/*.lock) and what installing them enforces.

The image installs every venv with ``pip install --require-hashes --no-deps -r LOCK``
(scripts/image/install_base.sh, Dockerfile). The first tests run that same command on a
tiny wheel made here (no network, no Docker): a lock with one wrong hash, a substituted
file or an unhashed entry must fail. The rest check the committed locks: fully hashed,
the right torch per flavour, and in step with their inputs (ComfyUI's requirements.txt,
pyproject.toml, requirements/*.in). ``./build.sh --lock-deps`` regenerates them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
LOCKS = ("comfyui-gpu", "comfyui-cpu", "worker", "vast-pyworker")
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton"}


def make_wheel(directory: Path, name: str = "cwlocktest", version: str = "1.0",
               body: str = "VALUE = 1\n") -> Path:
    """A minimal valid pure-Python wheel."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def locked_install(lock: Path, links: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """install_base.sh's pip_locked, offline, into a target directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no host index, find-links or constraints
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-index", "--find-links", str(links), "--require-hashes", "--no-deps",
         "--target", str(target), "-r", str(lock)],
        capture_output=True, text=True, env=env, timeout=120)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def wheelhouse(tmp_path: Path) -> tuple[Path, Path]:
    links = tmp_path / "wheels"
    links.mkdir()
    return links, make_wheel(links)


def test_a_lock_with_the_right_hash_installs(wheelhouse: tuple[Path, Path], tmp_path: Path
                                             ) -> None:
    links, wheel = wheelhouse
    lock = tmp_path / "ok.lock"
    lock.write_text(f"cwlocktest==1.0 \\\n    --hash=sha256:{_sha256(wheel)}\n")
    proc = locked_install(lock, links, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "cwlocktest" / "__init__.py").read_text() == "VALUE = 1\n"


def test_a_lock_with_one_wrong_hash_fails_the_install(
    wheelhouse: tuple[Path, Path], tmp_path: Path
) -> None:
    links, wheel = wheelhouse
    good = _sha256(wheel)
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    lock = tmp_path / "tampered.lock"
    lock.write_text(f"cwlocktest==1.0 \\\n    --hash=sha256:{tampered}\n")
    proc = locked_install(lock, links, tmp_path / "site")
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr
    assert good in proc.stderr and tampered in proc.stderr
    assert not (tmp_path / "site" / "cwlocktest").exists()


def test_a_substituted_file_with_the_locked_name_fails_the_install(tmp_path: Path) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    locked = _sha256(make_wheel(links))
    make_wheel(links, body="VALUE = 'evil'\n")  # same name and version, other bytes
    lock = tmp_path / "ok.lock"
    lock.write_text(f"cwlocktest==1.0 --hash=sha256:{locked}\n")
    proc = locked_install(lock, links, tmp_path / "site")
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr


def test_an_unhashed_entry_fails_the_install(wheelhouse: tuple[Path, Path], tmp_path: Path
                                             ) -> None:
    links, _ = wheelhouse
    lock = tmp_path / "nohash.lock"
    lock.write_text("cwlocktest==1.0\n")
    proc = locked_install(lock, links, tmp_path / "site")
    assert proc.returncode != 0
    assert "hash" in proc.stderr.lower()


# --- the committed locks ----------------------------------------------------------------


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip-compile style lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if not line[0].isspace():
            match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
            assert match, f"{path.name}: not an exact pin: {line!r}"
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(2), [])
        assert current is not None
        entries[current][1].extend(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return entries


@pytest.mark.parametrize("name", LOCKS)
def test_every_entry_of_a_lock_is_pinned_and_hashed(name: str) -> None:
    entries = parse_lock(REQ / f"{name}.lock")
    assert len(entries) >= 5
    unhashed = sorted(pkg for pkg, (_, hashes) in entries.items() if not hashes)
    assert unhashed == [], f"{name}.lock entries without --hash: {unhashed}"


def test_the_gpu_lock_has_pypi_torch_2_9_1_and_its_cuda_wheels() -> None:
    gpu = parse_lock(REQ / "comfyui-gpu.lock")
    assert gpu["torch"][0] == "2.9.1"
    assert gpu["torchvision"][0] == "0.24.1"
    assert gpu["torchaudio"][0] == "2.9.1"
    nvidia = sorted(p for p in gpu if p.startswith("nvidia-"))
    assert len(nvidia) >= 12, nvidia
    for lib in ("nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12",
                "nvidia-nccl-cu12"):
        assert lib in gpu, lib
    assert all("+" not in version for version, _ in gpu.values())


def test_the_cpu_lock_has_a_cpu_torch_and_no_cuda() -> None:
    cpu = parse_lock(REQ / "comfyui-cpu.lock")
    assert cpu["torch"][0].endswith("+cpu")
    assert not [p for p in cpu if p.startswith("nvidia-") or p == "triton"]


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_each_flavour_has_a_torchaudio_made_for_its_torch(flavour: str) -> None:
    """ComfyUI v0.33.0 imports torchaudio at start. A torchaudio up to 2.10 is built for
    exactly its torch release; 2.11, the last release, for torch 2.11 and every later one
    (its metadata: ``torch>=2.11``)."""
    lock = parse_lock(REQ / f"comfyui-{flavour}.lock")
    assert "torchaudio" in lock, f"comfyui-{flavour}.lock has no torchaudio"
    torch = Version(lock["torch"][0]).release[:2]
    audio = Version(lock["torchaudio"][0]).release[:2]
    assert audio == torch or (audio >= (2, 11) and torch >= audio), (torch, audio)


def test_both_flavours_pin_the_same_comfyui_stack() -> None:
    gpu, cpu = parse_lock(REQ / "comfyui-gpu.lock"), parse_lock(REQ / "comfyui-cpu.lock")
    names = {canonicalize_name(Requirement(r).name) for r in _requirements(REQ / "comfyui.in")}
    differ = {n: (gpu[n][0], cpu[n][0]) for n in names if gpu[n][0] != cpu[n][0]}
    assert differ == {}, f"GPU and CPU locks pin ComfyUI's packages differently: {differ}"


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _satisfied(requirement: str, lock: dict[str, tuple[str, list[str]]]) -> str | None:
    req = Requirement(requirement)
    name = canonicalize_name(req.name)
    if name not in lock:
        return f"{req.name} is not in the lock"
    version = lock[name][0]
    if req.specifier and not req.specifier.contains(Version(version), prereleases=True):
        return f"{req.name}=={version} does not satisfy {req.specifier}"
    return None


@pytest.mark.parametrize(("lock", "inputs"), [
    ("comfyui-gpu", ["comfyui.in", "torch-gpu.in"]),
    ("comfyui-cpu", ["comfyui.in", "torch-cpu.in"]),
    ("worker", ["worker-build.in"]),
    ("vast-pyworker", ["vast-pyworker.in"]),
])
def test_each_lock_satisfies_its_inputs(lock: str, inputs: list[str]) -> None:
    entries = parse_lock(REQ / f"{lock}.lock")
    problems = [p for name in inputs for r in _requirements(REQ / name)
                if (p := _satisfied(r, entries))]
    assert problems == [], f"{lock}.lock is stale (./build.sh --lock-deps): {problems}"


def test_the_worker_lock_satisfies_pyproject_dependencies() -> None:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    entries = parse_lock(REQ / "worker.lock")
    problems = [p for dep in deps if (p := _satisfied(dep, entries))]
    assert problems == [], f"worker.lock is stale (./build.sh --lock-deps): {problems}"


def test_comfyui_in_is_comfyuis_requirements_at_the_pinned_ref() -> None:
    header = (REQ / "comfyui.in").read_text().splitlines()[0]
    ref = re.search(r"ComfyUI (\S+) requirements\.txt", header)
    assert ref, header
    dockerfile_ref = re.search(r"^\s*COMFYUI_REF=(\S+)", (REPO / "Dockerfile").read_text(),
                               flags=re.M)
    assert dockerfile_ref and dockerfile_ref.group(1) == ref.group(1), \
        "the Dockerfile's COMFYUI_REF and the lock's ComfyUI differ: ./build.sh --lock-deps"
    ours = {r for r in _requirements(REQ / "comfyui.in") if r != "requests"}
    src = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")
    version = src / "comfyui_version.py"
    if not version.is_file() or f'"{ref.group(1).lstrip("v")}"' not in version.read_text():
        pytest.skip(f"no ComfyUI {ref.group(1)} tree here to compare with")
    theirs = {r for r in _requirements(src / "requirements.txt")
              if canonicalize_name(Requirement(r).name) not in TORCH_FAMILY
              and r != "requests"}  # listed by v0.33.0, added by lock_deps.sh for older ones
    assert ours == theirs


def test_every_image_install_goes_through_the_locks() -> None:
    install = (REPO / "scripts" / "image" / "install_base.sh").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    code = "\n".join(line for line in install.splitlines() if not line.lstrip().startswith("#"))
    # One pip install in the base script, and it requires hashes.
    assert len(re.findall(r"pip install", code)) == 1
    assert "--require-hashes --no-deps" in code
    worker_pip = re.findall(r"pip install[^\n]*", dockerfile)
    assert any("--require-hashes --no-deps -r /app/deps/worker.lock" in c for c in worker_pip)
    assert "VASTAI_LOCK=/app/deps/vast-pyworker.lock" in dockerfile
