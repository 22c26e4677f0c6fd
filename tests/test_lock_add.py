"""``comfy-worker lock add``: Hub files and URLs into locked entries (real CLI, real server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import HFServer, hf_server_fixture, safetensors_bytes  # noqa: F401

from comfy_worker.errors import LockfileError
from comfy_worker.lockfile import HfSource, LockEntry, load_lock
from comfy_worker.resolve import parse_source

TOKEN = "hf_lockADDsecret0987654321"


def lock_add(hub: HFServer, lock: Path, source: str, path: str, *extra: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    full_env |= {"HF_ENDPOINT": hub.endpoint, **(env or {})}
    return subprocess.run([sys.executable, "-m", "comfy_worker.cli", "lock", "add", source,
                           "--path", path, "--lock", str(lock), *extra],
                          capture_output=True, text=True, env=full_env, timeout=60)


def test_branch_is_pinned_to_its_commit_from_lfs_metadata_without_download(
        hf_server: HFServer, tmp_path: Path) -> None:
    served = hf_server.add_file("acme/sdxl", "unet/model.safetensors", safetensors_bytes(5000))
    lock = tmp_path / "models.lock.json"

    r = lock_add(hf_server, lock, "hf://acme/sdxl/unet/model.safetensors",
                 "diffusion_models/model.safetensors")

    assert r.returncode == 0, r.stderr
    entry = load_lock(lock).entry("diffusion_models/model.safetensors")
    assert entry is not None
    assert entry.source.to_json() == {"type": "huggingface", "repo": "acme/sdxl",
                                      "revision": served.commit,
                                      "file": "unet/model.safetensors"}
    assert (entry.sha256, entry.size) == (served.sha256, served.size)
    assert hf_server.bytes_served(served) == 0  # the LFS metadata was enough


def test_explicit_revision_is_kept_when_it_is_a_commit(hf_server: HFServer,
                                                       tmp_path: Path) -> None:
    old = hf_server.add_file("acme/m", "a.safetensors", safetensors_bytes(100, seed=1))
    hf_server.add_file("acme/m", "a.safetensors", safetensors_bytes(100, seed=2))
    lock = tmp_path / "l.json"

    r = lock_add(hf_server, lock, f"hf://acme/m@{old.commit}/a.safetensors", "loras/a.safetensors")

    assert r.returncode == 0, r.stderr
    entry = load_lock(lock).models[0]
    assert entry.source.to_json()["revision"] == old.commit and entry.sha256 == old.sha256


def test_non_lfs_file_is_downloaded_once_to_hash_it(hf_server: HFServer, tmp_path: Path) -> None:
    served = hf_server.add_file("acme/m", "config.yaml", b"model: {}\n", lfs=False)
    lock = tmp_path / "l.json"

    r = lock_add(hf_server, lock, "hf://acme/m@main/config.yaml", "configs/m.yaml")

    assert r.returncode == 0, r.stderr
    entry = load_lock(lock).models[0]
    assert (entry.sha256, entry.size) == (served.sha256, served.size)
    assert hf_server.bytes_served(served) == served.size


def test_url_source_is_hashed_from_a_download(hf_server: HFServer, tmp_path: Path) -> None:
    served = hf_server.add_url("style.safetensors", safetensors_bytes(3000))
    lock = tmp_path / "l.json"

    r = lock_add(hf_server, lock, served.url, "loras/style.safetensors")

    assert r.returncode == 0, r.stderr
    data = json.loads(lock.read_text())
    assert data["models"] == [{"path": "loras/style.safetensors",
                               "source": {"type": "url", "url": served.url},
                               "sha256": served.sha256, "size": served.size}]


def test_adding_keeps_existing_entries_and_refuses_duplicates(hf_server: HFServer,
                                                              tmp_path: Path) -> None:
    a = hf_server.add_file("acme/m", "a.safetensors", safetensors_bytes(10))
    b = hf_server.add_file("acme/m", "b.safetensors", safetensors_bytes(20))
    lock = tmp_path / "l.json"
    assert lock_add(hf_server, lock, "hf://acme/m/a.safetensors", "loras/a.safetensors"
                    ).returncode == 0
    assert lock_add(hf_server, lock, "hf://acme/m/b.safetensors", "loras/b.safetensors"
                    ).returncode == 0

    dup = lock_add(hf_server, lock, "hf://acme/m/b.safetensors", "loras/a.safetensors")
    assert dup.returncode == 1 and "already locked" in dup.stderr and "--replace" in dup.stderr
    replaced = lock_add(hf_server, lock, "hf://acme/m/b.safetensors", "loras/a.safetensors",
                        "--replace")
    assert replaced.returncode == 0, replaced.stderr
    models = {m.path: m.sha256 for m in load_lock(lock).models}
    assert models == {"loras/a.safetensors": b.sha256, "loras/b.safetensors": b.sha256}
    assert a.sha256 != b.sha256


def test_bad_path_is_rejected_before_any_request(hf_server: HFServer, tmp_path: Path) -> None:
    hf_server.add_file("acme/m", "a.safetensors", safetensors_bytes(10))
    r = lock_add(hf_server, tmp_path / "l.json", "hf://acme/m/a.safetensors", "../a.safetensors")
    assert r.returncode == 1 and '".."' in r.stderr
    assert hf_server.requests() == []
    assert not (tmp_path / "l.json").exists()


def test_gated_repo_names_hf_token_and_hides_it(hf_server: HFServer, tmp_path: Path) -> None:
    hf_server.add_file("acme/gated", "g.safetensors", safetensors_bytes(10))
    hf_server.gate("acme/gated", allowed_tokens=("hf_someone_else",))

    r = lock_add(hf_server, tmp_path / "l.json", "hf://acme/gated/g.safetensors",
                 "loras/g.safetensors", env={"HF_TOKEN": TOKEN})

    assert r.returncode == 1
    assert "model-gated" in r.stderr and "HF_TOKEN" in r.stderr
    assert TOKEN not in r.stderr and TOKEN not in r.stdout


def test_unknown_file_is_model_not_found(hf_server: HFServer, tmp_path: Path) -> None:
    hf_server.add_file("acme/m", "a.safetensors", safetensors_bytes(10))
    r = lock_add(hf_server, tmp_path / "l.json", "hf://acme/m/nope.safetensors",
                 "loras/nope.safetensors")
    assert r.returncode == 1 and "model-not-found" in r.stderr


def test_parse_source_forms() -> None:
    assert parse_source("hf://o/r/a/b.safetensors") == HfSource("o/r", "main", "a/b.safetensors")
    assert parse_source("hf://o/r@v1.0/x") == HfSource("o/r", "v1.0", "x")
    assert parse_source("hf://datasets/o/r@abc/x") == HfSource("o/r", "abc", "x", "dataset")
    assert parse_source("https://h/x.bin").url == "https://h/x.bin"  # type: ignore[union-attr]


def test_a_reference_is_unpinned_until_resolved_and_a_lock_entry_must_be_pinned() -> None:
    ref = parse_source("hf://o/r@main/x.safetensors")
    assert isinstance(ref, HfSource) and not ref.pinned
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert ref.at(commit).pinned and ref.at(commit).revision == commit
    with pytest.raises(LockfileError, match="not pinned to a commit"):
        LockEntry(path="loras/x.safetensors", source=ref, sha256="a" * 64, size=1)
    LockEntry(path="loras/x.safetensors", source=ref.at(commit), sha256="a" * 64, size=1)
