"""Every sync failure: the real CLI against a misbehaving server on 127.0.0.1.

Each test checks the exit status, the message, and that nothing partial is left under
a final name (nor a temp file beside it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    HFServer,
    ServedFile,
    hf_server_fixture,  # noqa: F401
    safetensors_bytes,
    skip_or_fail,
    write_lock_file,
)

from comfy_worker.config import load_settings
from comfy_worker.errors import DiskFull, DownloadFailed
from comfy_worker.sync import sync_models

TOKEN = "hf_testSECRETtoken1234567890"


def run_sync(hub: HFServer, tmp: Path, *extra: str, env: dict[str, str] | None = None,
             retries: int = 2, debug: bool = False) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    full_env |= {"HF_ENDPOINT": hub.endpoint, "COMFY_WORKER_RETRIES": str(retries)}
    full_env |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "comfy_worker.cli", *(["-vv"] if debug else []), "sync", "--lock",
         str(tmp / "models.lock.json"), "--models-dir", str(tmp / "models"), *extra],
        capture_output=True, text=True, env=full_env, timeout=120)


def assert_no_temp_files(root: Path) -> None:
    leftovers = [p.name for p in root.rglob("*") if p.name.endswith(".incomplete")]
    assert leftovers == []


def assert_nothing_partial(root: Path, final: Path) -> None:
    """After a failed sync: no final file, no temp file."""
    assert not final.exists(), f"{final} exists after a failed sync"
    assert_no_temp_files(root)


def assert_whole(root: Path, final: Path, served: ServedFile) -> None:
    """After a successful sync: the final file holds exactly the served bytes, no temp
    file is left."""
    assert hashlib.sha256(final.read_bytes()).hexdigest() == served.sha256
    assert_no_temp_files(root)


def one_file(hub: HFServer, tmp: Path, size_floats: int = 100_000,
             path: str = "checkpoints/m.safetensors") -> tuple[ServedFile, Path]:
    served = hub.add_file("acme/model", "m.safetensors", safetensors_bytes(size_floats))
    write_lock_file(tmp / "models.lock.json", {path: served})
    return served, tmp / "models" / path


def test_hash_mismatch_retries_then_names_file_expected_and_actual(
        hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    served.faults.corrupt_times = -1  # every response covering the middle byte
    data = bytearray(served.read(0, served.size))
    data[served.size // 2] ^= 0xFF
    actual = hashlib.sha256(bytes(data)).hexdigest()

    r = run_sync(hf_server, tmp_path, retries=2)

    assert r.returncode == 1
    assert "model-hash-mismatch" in r.stderr
    assert "checkpoints/m.safetensors" in r.stderr
    assert served.sha256 in r.stderr and actual in r.stderr
    corrupted = [q for q in hf_server.requests(served, "GET") if q.body_bytes > 1]
    # 3 attempts, each fetched the middle of the file again
    assert sum(1 for q in corrupted
               if q.range and _covers(q.range, served.size // 2)) == 3
    assert_nothing_partial(tmp_path, final)


def _covers(range_header: str, offset: int) -> bool:
    start, end = range_header.removeprefix("bytes=").split("-")
    return int(start) <= offset <= int(end)


def test_one_corrupted_download_is_retried_and_succeeds(hf_server: HFServer,
                                                        tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    served.faults.corrupt_times = 1

    r = run_sync(hf_server, tmp_path)

    assert r.returncode == 0, r.stderr
    assert "attempt 1 of 3 failed" in r.stderr
    assert_whole(tmp_path, final, served)


def test_5xx_twice_then_ok_succeeds_with_retries(hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    served.faults.fail_times = 2
    served.faults.fail_status = 503

    r = run_sync(hf_server, tmp_path, retries=3)

    assert r.returncode == 0, r.stderr
    assert_whole(tmp_path, final, served)
    assert [q.status for q in hf_server.requests(served, "GET")][:2] == [503, 503]


def test_5xx_on_metadata_is_retried_too(hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    served.faults.fail_times = 1
    served.faults.fail_methods = ("HEAD",)

    r = run_sync(hf_server, tmp_path)

    assert r.returncode == 0, r.stderr
    assert_whole(tmp_path, final, served)


def test_connection_cut_mid_file_is_resumed(hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path, size_floats=1_000_000)  # 4 MB
    served.faults.cut_times = 3
    served.faults.cut_after = 100_000

    r = run_sync(hf_server, tmp_path)

    assert r.returncode == 0, r.stderr
    assert_whole(tmp_path, final, served)
    cut = [q for q in hf_server.requests(served, "GET") if q.body_bytes == 100_000]
    assert len(cut) == 3


def test_always_5xx_fails_with_download_failed(hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    served.faults.status_always = 503

    r = run_sync(hf_server, tmp_path, retries=2)

    assert r.returncode == 1
    assert "download-failed" in r.stderr
    assert "checkpoints/m.safetensors" in r.stderr and "3 attempts" in r.stderr
    assert_nothing_partial(tmp_path, final)


def test_gated_without_token_names_hf_token(hf_server: HFServer, tmp_path: Path) -> None:
    _served, final = one_file(hf_server, tmp_path)
    hf_server.gate("acme/model", allowed_tokens=("hf_other",))

    r = run_sync(hf_server, tmp_path)

    assert r.returncode == 1
    assert "model-gated" in r.stderr and "401" in r.stderr
    assert "HF_TOKEN is not set" in r.stderr
    assert_nothing_partial(tmp_path, final)


def test_gated_with_token_without_access_never_prints_the_token(
        hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    hf_server.gate("acme/model", allowed_tokens=("hf_other",))

    r = run_sync(hf_server, tmp_path, "--json", env={"HF_TOKEN": TOKEN}, debug=True)

    assert r.returncode == 1
    assert "model-gated" in r.stderr and "403" in r.stderr and "HF_TOKEN" in r.stderr
    assert TOKEN not in r.stdout and TOKEN not in r.stderr
    assert_nothing_partial(tmp_path, final)
    # and the token was sent: the request carried an Authorization header
    assert any(q.authorization for q in hf_server.requests(served))


def test_token_reaches_the_hub_but_not_the_cdn(hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    hf_server.gate("acme/model", allowed_tokens=(TOKEN,))

    r = run_sync(hf_server, tmp_path, env={"HF_TOKEN": TOKEN})

    assert r.returncode == 0, r.stderr
    assert final.is_file()
    hub = [q for q in hf_server.requests(served) if "/resolve/" in q.path]
    cdn = [q for q in hf_server.requests(served) if q.path.startswith("/cdn-lfs/")]
    assert hub and all(q.authorization for q in hub)
    assert cdn and not any(q.authorization for q in cdn)


def test_missing_file_is_model_not_found(hf_server: HFServer, tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path)
    served.faults.status_always = 404

    r = run_sync(hf_server, tmp_path)

    assert r.returncode == 1
    assert "model-not-found" in r.stderr
    assert_nothing_partial(tmp_path, final)
    assert len(hf_server.requests(served)) == 1  # no retries for a 404


def test_one_failing_file_fails_the_sync_and_leaves_other_files_whole(
        hf_server: HFServer, tmp_path: Path) -> None:
    good = hf_server.add_file("acme/model", "good.safetensors", safetensors_bytes(30_000))
    bad = hf_server.add_file("acme/model", "bad.safetensors", safetensors_bytes(30_001))
    bad.faults.status_always = 500
    write_lock_file(tmp_path / "models.lock.json",
                    {"loras/good.safetensors": good, "loras/bad.safetensors": bad})

    r = run_sync(hf_server, tmp_path, retries=1)

    assert r.returncode == 1
    assert "loras/bad.safetensors" in r.stderr
    assert_nothing_partial(tmp_path, tmp_path / "models/loras/bad.safetensors")
    g = tmp_path / "models/loras/good.safetensors"
    assert not g.exists() or hashlib.sha256(g.read_bytes()).hexdigest() == good.sha256


# --- disk full: a real small filesystem ---------------------------------------------


@contextlib.contextmanager
def small_fs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        skip_or_fail(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_precheck_says_how_many_bytes_are_needed(hf_server: HFServer,
                                                            tmp_path: Path) -> None:
    served = hf_server.add_file("acme/model", "big.safetensors",
                                safetensors_bytes(600_000))  # 2.4 MB
    write_lock_file(tmp_path / "models.lock.json", {"checkpoints/big.safetensors": served})
    with small_fs(tmp_path / "models", "1m"):
        r = run_sync(hf_server, tmp_path)
        assert r.returncode == 1
        assert "disk-full" in r.stderr
        assert f"needs {served.size} bytes" in r.stderr
        assert_nothing_partial(tmp_path / "models",
                               tmp_path / "models/checkpoints/big.safetensors")
        assert hf_server.bytes_served(served) == 0


def test_disk_full_during_download_says_how_many_bytes_are_needed(tmp_path: Path) -> None:
    # A slow server, so the disk can fill up after the free-space check passed.
    with HFServer(per_connection_bps=1_000_000) as hub:
        served = hub.add_file("acme/model", "big.safetensors",
                              safetensors_bytes(750_000))  # 3 MB
        write_lock_file(tmp_path / "models.lock.json", {"checkpoints/big.safetensors": served})
        models = tmp_path / "models"
        with small_fs(models, "4m"):
            settings = load_settings(env={"HF_ENDPOINT": hub.endpoint},
                                     lock_path=tmp_path / "models.lock.json",
                                     models_dir=models, retries=0, connections=2)
            stop = threading.Event()

            def fill_when_download_starts() -> None:
                while not stop.is_set():
                    if any(p.name.endswith(".incomplete") for p in models.rglob("*")):
                        free = os.statvfs(models).f_bavail * os.statvfs(models).f_frsize
                        (models / "filler").write_bytes(b"\0" * (free - 4096))
                        return
                    time.sleep(0.005)

            filler = threading.Thread(target=fill_when_download_starts)
            filler.start()
            try:
                with pytest.raises(DiskFull) as err:
                    sync_models(settings, progress=False)
            finally:
                stop.set()
                filler.join()
            assert (models / "filler").exists(), "the disk was never filled"
            assert f"needs {served.size} bytes" in str(err.value)
            assert_nothing_partial(models, models / "checkpoints/big.safetensors")


def test_killed_sync_leaves_no_final_file_and_no_orphan_download(tmp_path: Path) -> None:
    with HFServer(per_connection_bps=1_000_000) as hub:
        served, final = one_file(hub, tmp_path, size_floats=1_000_000)  # 4 MB, ~2 s
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "COMFY_WORKER_CONNECTIONS": "2"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "comfy_worker.cli", "sync", "--lock",
             str(tmp_path / "models.lock.json"), "--models-dir", str(tmp_path / "models")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while hub.bytes_served(served) < 200_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        time.sleep(0.5)
        after_kill = hub.bytes_served(served)
        time.sleep(1.0)
        assert hub.bytes_served(served) - after_kill < 100_000, "download went on orphaned"
        assert after_kill < served.size
        assert not final.exists()
        assert [p.name for p in final.parent.iterdir() if p.name.endswith(".incomplete")]

        r = run_sync(hub, tmp_path)  # the next sync cleans up and completes

        assert r.returncode == 0, r.stderr
        assert_whole(tmp_path, final, served)


def test_stalled_connection_is_restarted_after_the_stall_timeout(hf_server: HFServer,
                                                                 tmp_path: Path) -> None:
    served, final = one_file(hf_server, tmp_path, size_floats=500_000)  # 2 MB, one range
    served.faults.stall_times = 1
    served.faults.stall_after = 50_000
    served.faults.stall_seconds = 60  # longer than the test: only a restart gets out

    r = run_sync(hf_server, tmp_path, env={"COMFY_WORKER_STALL_TIMEOUT": "2",
                                            "COMFY_WORKER_CONNECTIONS": "1"})

    assert r.returncode == 0, r.stderr
    assert "no data for 2 s" in r.stderr
    assert_whole(tmp_path, final, served)


# --- only network failures are retried ------------------------------------------------


def test_refused_connection_is_retried_then_reported_as_download_failed(
        tmp_path: Path) -> None:
    with HFServer() as hub:
        _served, final = one_file(hub, tmp_path)
        endpoint = hub.endpoint
    # the server is gone: every request is refused
    settings = load_settings(env={"HF_ENDPOINT": endpoint},
                             lock_path=tmp_path / "models.lock.json",
                             models_dir=tmp_path / "models", retries=1)

    with pytest.raises(DownloadFailed) as err:
        sync_models(settings, progress=False)

    assert "2 attempts" in str(err.value) and "ConnectError" in str(err.value)
    assert_nothing_partial(tmp_path, final)


def test_a_bug_is_not_retried_as_a_download_failure(hf_server: HFServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _served, final = one_file(hf_server, tmp_path)
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise KeyError("a bug in the metadata code")

    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", broken)
    settings = load_settings(env={"HF_ENDPOINT": hf_server.endpoint},
                             lock_path=tmp_path / "models.lock.json",
                             models_dir=tmp_path / "models", retries=3)

    with pytest.raises(KeyError, match="a bug in the metadata code"):
        sync_models(settings, progress=False)

    assert len(calls) == 1, "a bug must surface at once, not after retries"
    assert_nothing_partial(tmp_path, final)
