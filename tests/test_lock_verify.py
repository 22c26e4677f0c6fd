"""``comfy-worker lock verify DIR [--fast] [--json]`` on real files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from support import safetensors_bytes

from comfy_worker.sync import verify as sync_verify

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_dir(tmp: Path, files: dict[str, bytes]) -> Path:
    models = []
    for path, data in files.items():
        target = tmp / "models" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        models.append({"path": path, "source": {"type": "huggingface", "repo": "o/r",
                                                "revision": COMMIT, "file": path},
                       "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    lock = tmp / "models.lock.json"
    lock.write_text(json.dumps({"version": 1, "models": models}))
    return lock


def run_verify(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfy_worker.cli", "lock", "verify",
                           str(tmp / "models"), "--lock", str(tmp / "models.lock.json"), *extra],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COMFY_WORKER_MODELS_DIR": str(tmp / "state")})


def test_matching_files_pass(tmp_path: Path) -> None:
    make_dir(tmp_path, {"loras/a.safetensors": safetensors_bytes(100),
                        "vae/b.bin": b"b" * 1000})
    r = run_verify(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 2 files match" in r.stdout and "sha256" in r.stdout


def test_missing_changed_and_resized_files_fail_with_reasons(tmp_path: Path) -> None:
    make_dir(tmp_path, {"loras/a.safetensors": safetensors_bytes(100),
                        "vae/b.bin": b"b" * 1000, "vae/c.bin": b"c" * 10})
    (tmp_path / "models/loras/a.safetensors").unlink()
    (tmp_path / "models/vae/b.bin").write_bytes(b"x" * 1000)
    (tmp_path / "models/vae/c.bin").write_bytes(b"c" * 11)

    r = run_verify(tmp_path, "--json")

    assert r.returncode == 1
    out = json.loads(r.stdout)
    checks = {f["path"]: (f["ok"], f["check"]) for f in out["files"]}
    assert checks["loras/a.safetensors"] == (False, "missing")
    assert checks["vae/b.bin"][0] is False
    assert checks["vae/b.bin"][1].startswith("sha256 " + hashlib.sha256(b"x" * 1000).hexdigest())
    assert checks["vae/c.bin"] == (False, "size 11, expected 10")


def test_fast_uses_record_then_header_for_files_seen_before(tmp_path: Path) -> None:
    make_dir(tmp_path, {"checkpoints/m.safetensors": safetensors_bytes(50_000)})
    first = run_verify(tmp_path, "--fast")  # first seen: full hash, record written
    assert first.returncode == 0 and "sha256" in first.stdout
    second = run_verify(tmp_path, "--fast")
    assert second.returncode == 0 and "record" in second.stdout
    os.utime(tmp_path / "models/checkpoints/m.safetensors", ns=(10**9, 10**9))
    third = run_verify(tmp_path, "--fast")
    assert third.returncode == 0 and "safetensors header" in third.stdout
    full = run_verify(tmp_path)  # without --fast a changed mtime means a full hash
    assert full.returncode == 0 and ": sha256" in full.stdout


def test_fast_catches_a_truncated_safetensors_file(tmp_path: Path) -> None:
    data = safetensors_bytes(50_000)
    make_dir(tmp_path, {"checkpoints/m.safetensors": data})
    assert run_verify(tmp_path, "--fast").returncode == 0
    target = tmp_path / "models/checkpoints/m.safetensors"
    # Same size, but the header now claims less data than the file holds.
    header_len = int.from_bytes(data[:8], "little")
    header = data[8:8 + header_len].replace(b"[50000]", b"[49999]")
    target.write_bytes(data[:8] + header + data[8 + header_len:])
    assert target.stat().st_size == len(data)
    ok, reason = sync_verify.safetensors_header_ok(target, len(data))
    assert not ok and "needs" in reason
    r = run_verify(tmp_path, "--fast")
    assert r.returncode == 1


def test_a_mismatch_forgets_the_stale_record(tmp_path: Path) -> None:
    data = safetensors_bytes(1000)
    make_dir(tmp_path, {"loras/a.safetensors": data})
    target = tmp_path / "models/loras/a.safetensors"
    record = target.with_name(".a.safetensors.verified")
    assert run_verify(tmp_path).returncode == 0
    assert record.is_file()
    changed = bytearray(data)
    changed[-1] ^= 0xFF
    target.write_bytes(bytes(changed))  # same size, new mtime: hashed again

    r = run_verify(tmp_path)

    assert r.returncode == 1 and "FAIL loras/a.safetensors: sha256" in r.stdout
    assert not record.exists(), "a record for other bytes must not survive a mismatch"
    # Without the record, --fast cannot take the header shortcut for the changed file.
    fast = run_verify(tmp_path, "--fast")
    assert fast.returncode == 1 and "FAIL loras/a.safetensors: sha256" in fast.stdout
