"""Network volumes: files used in place, missing files fetched into the volume once,
and two real ``comfy-worker sync`` processes sharing one volume."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from support import (
    HFServer,
    ServedFile,
    hf_server_fixture,  # noqa: F401
    safetensors_bytes,
    skip_or_fail,
    write_lock_file,
)
from support.verify_reads import VerifyReads

from comfy_worker.config import Settings, load_settings
from comfy_worker.sync import sync_models


def settings_for(hub: HFServer, tmp: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"lock_path": tmp / "models.lock.json",
                                 "models_dir": tmp / "local", "volume": tmp / "vol"}
    values.update(kw)
    return load_settings(env={"HF_ENDPOINT": hub.endpoint}, **values)


def serve(hub: HFServer, n: int, floats: int = 50_000) -> dict[str, ServedFile]:
    return {f"checkpoints/c{i}.safetensors": hub.add_file(
        "acme/ckpt", f"c{i}.safetensors", safetensors_bytes(floats + i, seed=10 + i))
        for i in range(n)}


def test_file_on_the_volume_is_used_in_place(hf_server: HFServer, tmp_path: Path) -> None:
    files = serve(hf_server, 2)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    for path, served in files.items():  # what an earlier worker left on the volume
        target = tmp_path / "vol" / "models" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(served.read(0, served.size))

    report = sync_models(s, progress=False)

    assert [f.action for f in report.files] == ["volume", "volume"]
    assert [f.location for f in report.files] == [tmp_path / "vol" / "models" / p
                                                  for p in files]
    assert not (tmp_path / "local" / "checkpoints").exists()  # no copy
    assert hf_server.bytes_served() == 0


def test_missing_files_are_fetched_into_a_writable_volume(
        hf_server: HFServer, tmp_path: Path, verify_reads: VerifyReads) -> None:
    files = serve(hf_server, 2)
    (tmp_path / "vol").mkdir()
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)

    first = sync_models(s, progress=False)
    assert [f.action for f in first.files] == ["downloaded", "downloaded"]
    for path, served in files.items():
        data = (tmp_path / "vol" / "models" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == served.sha256

    # The next worker (fresh local dir) finds them on the volume, verified, unread.
    hf_server.reset_counters()
    before = verify_reads.value
    nxt = sync_models(s.replace(models_dir=tmp_path / "local2"), progress=False)
    assert [f.action for f in nxt.files] == ["volume", "volume"]
    assert verify_reads.value == before
    assert hf_server.requests() == []


def test_no_volume_directory_means_local_downloads(hf_server: HFServer, tmp_path: Path) -> None:
    files = serve(hf_server, 1)
    s = settings_for(hf_server, tmp_path, volume=tmp_path / "not-mounted")
    write_lock_file(s.lock_path, files)

    report = sync_models(s, progress=False)

    assert report.files[0].action == "downloaded"
    assert report.files[0].location == tmp_path / "local" / "checkpoints" / "c0.safetensors"
    assert not (tmp_path / "not-mounted").exists()


def test_read_only_volume_is_read_in_place_and_downloads_go_local(
        hf_server: HFServer, tmp_path: Path, verify_reads: VerifyReads) -> None:
    files = serve(hf_server, 2)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    src = tmp_path / "vol-src"
    first_path, first = next(iter(files.items()))
    (src / "models" / "checkpoints").mkdir(parents=True)
    (src / "models" / first_path).write_bytes(first.read(0, first.size))
    (tmp_path / "vol").mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(tmp_path / "vol")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        skip_or_fail(f"cannot bind-mount read-only here (needs root): {r.stderr.strip()}")
    try:
        if os.access(tmp_path / "vol" / "models", os.W_OK):
            skip_or_fail("the bind mount is not read-only here")
        report = sync_models(s, progress=False)
        assert [f.action for f in report.files] == ["volume", "downloaded"]
        second_path = list(files)[1]
        assert report.files[1].location == tmp_path / "local" / second_path
        # The read-only volume file's record went to the local state dir: no re-hash.
        before = verify_reads.value
        again = sync_models(s, progress=False)
        assert [f.action for f in again.files] == ["volume", "cached"]
        assert verify_reads.value == before
    finally:
        subprocess.run(["umount", str(tmp_path / "vol")], check=False)


def test_two_concurrent_syncs_on_one_volume_download_each_file_once(tmp_path: Path) -> None:
    # A slow server, so the two processes overlap for the whole download.
    # ~2 s per file: longer than any start-up skew between the two processes.
    with HFServer(per_connection_bps=500_000) as hub:
        files = serve(hub, 3, floats=500_000)  # 3 x 2 MB
        (tmp_path / "vol").mkdir()
        write_lock_file(tmp_path / "models.lock.json", files)
        env = {**{k: v for k, v in os.environ.items() if k != "HF_TOKEN"},
               "HF_ENDPOINT": hub.endpoint, "COMFY_WORKER_CONNECTIONS": "2"}

        def start(n: int) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", "comfy_worker.cli", "sync", "--json",
                 "--lock", str(tmp_path / "models.lock.json"),
                 "--models-dir", str(tmp_path / f"local{n}"), "--volume", str(tmp_path / "vol")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

        procs = [start(1), start(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        reports = [json.loads(out) for out, _err in outs]

        for path, served in files.items():
            # served once: its bytes crossed the wire exactly once
            assert hub.bytes_served(served) == served.size, path
            data = (tmp_path / "vol" / "models" / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == served.sha256
            actions = sorted(next(f["action"] for f in r["files"] if f["path"] == path)
                             for r in reports)
            assert actions == ["downloaded", "volume"]
        assert not any(p.name.endswith(".incomplete") for p in (tmp_path / "vol").rglob("*"))
        # They really overlapped: one of them waited on another's download.
        assert any("another sync is downloading it" in err for _out, err in outs)
