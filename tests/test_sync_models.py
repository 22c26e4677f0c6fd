"""sync_models against a real HF-compatible server and real directories."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from support import (
    HFServer,
    ServedFile,
    hf_server_fixture,  # noqa: F401
    safetensors_bytes,
    write_lock_file,
)
from support.verify_reads import VerifyReads

from comfy_worker.config import Settings, load_settings
from comfy_worker.errors import DownloadFailed
from comfy_worker.lockfile import load_lock, parse_lock
from comfy_worker.sync import model_roots, prepare_model_paths, sync_models


def settings_for(hub: HFServer, tmp: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"lock_path": tmp / "models.lock.json",
                                 "models_dir": tmp / "models", "retries": 2}
    values.update(kw)
    return load_settings(env={"HF_ENDPOINT": hub.endpoint}, **values)


def serve_loras(hub: HFServer, n: int, floats: int = 20_000) -> dict[str, ServedFile]:
    return {f"loras/l{i}.safetensors": hub.add_file("acme/loras", f"l{i}.safetensors",
                                                   safetensors_bytes(floats + i, seed=i))
            for i in range(n)}


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".incomplete")]


def test_cold_sync_downloads_every_file_verified(hf_server: HFServer, tmp_path: Path) -> None:
    files = serve_loras(hf_server, 3)
    files["vae/plain.bin"] = hf_server.add_url("plain.bin", os.urandom(300_000))
    files["vae/no-ranges.bin"] = hf_server.add_url("nr.bin", os.urandom(70_000), ranges=False)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)

    report = sync_models(s, progress=False)

    assert [f.action for f in report.files] == ["downloaded"] * 5
    for path, served in files.items():
        target = tmp_path / "models" / path
        assert hashlib.sha256(target.read_bytes()).hexdigest() == served.sha256
        assert (target.parent / f".{target.name}.verified").is_file()
        # Each file's bytes crossed the wire exactly once.
        assert hf_server.bytes_served(served) == served.size
    assert no_temp_files(tmp_path) == []
    assert report.to_json()["files"][0].keys() >= {"path", "action", "bytes", "seconds"}


def test_warm_start_of_20_verified_files_reads_no_bytes(
        hf_server: HFServer, tmp_path: Path, verify_reads: VerifyReads) -> None:
    files = serve_loras(hf_server, 20, floats=2_000)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    sync_models(s, progress=False)
    hf_server.reset_counters()
    read_before = verify_reads.value

    report = sync_models(s, progress=False)

    assert [f.action for f in report.files] == ["cached"] * 20
    assert verify_reads.value == read_before
    assert hf_server.requests() == []


def test_changed_mtime_makes_the_file_hashed_again(
        hf_server: HFServer, tmp_path: Path, verify_reads: VerifyReads) -> None:
    files = serve_loras(hf_server, 1)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    sync_models(s, progress=False)
    target = tmp_path / "models" / "loras" / "l0.safetensors"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    before = verify_reads.value

    report = sync_models(s, progress=False)

    assert report.files[0].action == "cached"
    assert verify_reads.value - before == target.stat().st_size
    hf_server.reset_counters()
    sync_models(s, progress=False)  # the new record holds again
    assert verify_reads.value - before == target.stat().st_size


def test_fast_verify_checks_header_of_a_file_seen_before(
        hf_server: HFServer, tmp_path: Path, verify_reads: VerifyReads) -> None:
    files = serve_loras(hf_server, 1, floats=200_000)
    s = settings_for(hf_server, tmp_path, fast_verify=True)
    write_lock_file(s.lock_path, files)
    sync_models(s, progress=False)
    target = tmp_path / "models" / "loras" / "l0.safetensors"
    os.utime(target, ns=(2_000_000_000, 2_000_000_000))
    before = verify_reads.value

    report = sync_models(s, progress=False)

    assert report.files[0].action == "cached"
    read = verify_reads.value - before
    assert 0 < read < 4096  # the header only, not the 800 kB of tensors


def test_fast_verify_hashes_a_file_seen_for_the_first_time(
        hf_server: HFServer, tmp_path: Path, verify_reads: VerifyReads) -> None:
    files = serve_loras(hf_server, 1, floats=50_000)
    s = settings_for(hf_server, tmp_path, fast_verify=True)
    write_lock_file(s.lock_path, files)
    target = tmp_path / "models" / "loras" / "l0.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(files["loras/l0.safetensors"].read(0, files["loras/l0.safetensors"].size))
    before = verify_reads.value

    report = sync_models(s, progress=False)

    assert report.files[0].action == "cached"
    assert verify_reads.value - before == target.stat().st_size
    assert hf_server.bytes_served() == 0


def test_fast_verify_rejects_a_broken_header_and_redownloads(hf_server: HFServer,
                                                             tmp_path: Path) -> None:
    files = serve_loras(hf_server, 1)
    s = settings_for(hf_server, tmp_path, fast_verify=True)
    write_lock_file(s.lock_path, files)
    sync_models(s, progress=False)
    target = tmp_path / "models" / "loras" / "l0.safetensors"
    data = bytearray(target.read_bytes())
    data[8] = ord("[")  # the JSON header no longer parses; same size
    target.write_bytes(bytes(data))
    hf_server.reset_counters()

    report = sync_models(s, progress=False)

    assert report.files[0].action == "downloaded"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == files[
        "loras/l0.safetensors"].sha256


def test_a_wrong_file_under_the_final_name_is_replaced(hf_server: HFServer,
                                                       tmp_path: Path) -> None:
    files = serve_loras(hf_server, 1)
    served = files["loras/l0.safetensors"]
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    target = tmp_path / "models" / "loras" / "l0.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * served.size)

    report = sync_models(s, progress=False)

    assert report.files[0].action == "downloaded"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == served.sha256


def test_extra_model_paths_yaml_maps_lock_folders_under_every_root(
        hf_server: HFServer, tmp_path: Path) -> None:
    files = serve_loras(hf_server, 1)
    (tmp_path / "vol").mkdir()
    s = settings_for(hf_server, tmp_path, volume=tmp_path / "vol")
    write_lock_file(s.lock_path, files)

    report = sync_models(s, progress=False)

    doc = yaml.safe_load(report.extra_model_paths.read_text())
    bases = [section["base_path"] for section in doc.values()]
    assert bases == [str(tmp_path / "vol" / "models"), str(tmp_path / "models")]
    for section in doc.values():
        assert section["loras"] == "loras"
        assert section["checkpoints"] == "checkpoints"


def test_extra_model_paths_includes_custom_folders(tmp_path: Path) -> None:
    lock = parse_lock({"version": 1, "extra_folders": ["ipadapter", "my_nodes"], "models": []})
    s = load_settings(env={}, models_dir=tmp_path / "a")
    paths = prepare_model_paths(s, lock)
    doc = yaml.safe_load(paths.extra_model_paths.read_text())
    assert doc["comfy_worker_0"]["my_nodes"] == "my_nodes"
    assert doc["comfy_worker_0"]["is_default"] is True
    assert paths.roots == (tmp_path / "a",)


def test_sync_uses_prepared_model_paths_and_writes_no_second_yaml(
        hf_server: HFServer, tmp_path: Path) -> None:
    files = serve_loras(hf_server, 1)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    lock = load_lock(s.lock_path)
    paths = prepare_model_paths(s, lock)  # what the worker does before booting ComfyUI
    written = paths.extra_model_paths.read_text()
    paths.extra_model_paths.unlink()

    report = sync_models(s, lock=lock, paths=paths, progress=False)

    assert report.extra_model_paths == paths.extra_model_paths
    assert report.roots == paths.roots
    assert not paths.extra_model_paths.exists(), "sync wrote the yaml a second time"
    assert [f.action for f in report.files] == ["downloaded"]
    assert "loras" in yaml.safe_load(written)["comfy_worker_0"]


def test_model_roots_put_the_volume_first(tmp_path: Path) -> None:
    s = load_settings(env={}, models_dir=tmp_path / "m", volume=tmp_path / "v")
    assert model_roots(s) == [tmp_path / "v" / "models", tmp_path / "m"]
    assert model_roots(s.replace(volume=None)) == [tmp_path / "m"]


def test_lock_none_loads_settings_lock_path(hf_server: HFServer, tmp_path: Path) -> None:
    files = serve_loras(hf_server, 1)
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    report = sync_models(s, lock=None, progress=False)
    assert [f.path for f in report.files] == [m.path for m in load_lock(s.lock_path).models]


@pytest.mark.parametrize("jobs", [1, 3])
def test_many_files_any_jobs(hf_server: HFServer, tmp_path: Path, jobs: int) -> None:
    files = serve_loras(hf_server, 5)
    s = settings_for(hf_server, tmp_path, jobs=jobs)
    write_lock_file(s.lock_path, files)
    report = sync_models(s, progress=False)
    assert {f.action for f in report.files} == {"downloaded"}
    for path, served in files.items():
        assert (tmp_path / "models" / path).stat().st_size == served.size


def test_files_download_at_once_each_in_several_byte_ranges(tmp_path: Path) -> None:
    # A slow server makes the overlap visible in its request log.
    with HFServer(per_connection_bps=2_000_000) as hub:
        files = {f"loras/big{i}.safetensors": hub.add_file(
            "acme/big", f"big{i}.safetensors", safetensors_bytes(1_000_000, seed=i))
            for i in range(3)}  # 4 MB each
        s = settings_for(hub, tmp_path, jobs=3, connections=4)
        write_lock_file(s.lock_path, files)

        sync_models(s, progress=False)

        spans = {}
        for path, served in files.items():
            gets = [r for r in hub.requests(served, "GET") if r.body_bytes > 1]
            assert len({r.range for r in gets}) >= 4, path  # several ranges per file
            assert all(r.range and r.status == 206 for r in gets)
            # ranges of one file were in flight together
            first = min(gets, key=lambda r: r.started)
            assert any(r is not first and r.started < first.ended for r in gets)
            spans[path] = (min(r.started for r in gets), max(r.ended for r in gets))
        # and the files themselves overlapped in time
        (a0, a1), (b0, b1), (c0, c1) = spans.values()
        assert max(a0, b0, c0) < min(a1, b1, c1)


def test_a_mismatching_file_loses_its_record_before_it_is_replaced(
        hf_server: HFServer, tmp_path: Path) -> None:
    files = serve_loras(hf_server, 1)
    served = files["loras/l0.safetensors"]
    s = settings_for(hf_server, tmp_path)
    write_lock_file(s.lock_path, files)
    sync_models(s, progress=False)
    target = tmp_path / "models" / "loras" / "l0.safetensors"
    record = target.with_name(".l0.safetensors.verified")
    stale = record.read_text()
    target.write_bytes(b"\0" * served.size)  # same size, other bytes, new mtime
    served.faults.status_always = 503  # the replacement cannot be fetched

    with pytest.raises(DownloadFailed):
        sync_models(s.replace(retries=0), progress=False)

    assert not record.exists(), f"stale record survived: {stale}"
