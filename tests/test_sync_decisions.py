"""The small pure decisions of sync, and its output (JSON summary, bar only on a TTY)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from support import HFServer, hf_server_fixture, safetensors_bytes, write_lock_file  # noqa: F401

from comfy_worker.config import Secret, load_settings
from comfy_worker.errors import GatedModel, ModelNotFound
from comfy_worker.lockfile import HfSource, UrlSource
from comfy_worker.sync.fetch import (
    Transient,
    chunk_size_for,
    headers_for,
    http_error,
    space_shortfall,
)
from comfy_worker.sync.plan import Check, action_for, backoff_seconds, check_for, download_root
from comfy_worker.sync.progress import Progress
from comfy_worker.sync.record import Record
from comfy_worker.sync.verify import header_structure_ok

SHA = "a" * 64
SRC = HfSource(repo="o/r", revision="0" * 40, file="m.safetensors")


def stat_of(tmp: Path, data: bytes) -> os.stat_result:
    p = tmp / "f.safetensors"
    p.write_bytes(data)
    return os.stat(p)


def test_check_for_each_state(tmp_path: Path) -> None:
    st = stat_of(tmp_path, b"x" * 10)
    rec = Record.of(st, SHA)
    kw = {"sha256": SHA, "size": 10, "path": "loras/f.safetensors"}
    assert check_for(None, None, fast=False, **kw) is Check.MISSING
    assert check_for(st, rec, fast=False, **kw) is Check.TRUSTED
    assert check_for(st, None, fast=True, **kw) is Check.HASH  # first seen: full hash
    moved = Record(SHA, 10, st.st_mtime_ns - 1, st.st_ino)
    assert check_for(st, moved, fast=False, **kw) is Check.HASH
    assert check_for(st, moved, fast=True, **kw) is Check.HEADER
    assert check_for(st, moved, fast=True, **{**kw, "path": "vae/f.bin"}) is Check.HASH
    other = Record("b" * 64, 10, st.st_mtime_ns, st.st_ino)
    assert check_for(st, other, fast=True, **kw) is Check.HASH  # lock changed
    assert check_for(st, rec, fast=False, **{**kw, "size": 11}) is Check.WRONG_SIZE


def test_download_root_prefers_a_usable_volume() -> None:
    local, vol = Path("/m"), Path("/v/models")
    assert download_root([vol, local], vol, volume_usable=True) == vol
    assert download_root([vol, local], vol, volume_usable=False) == local
    assert download_root([local], None, volume_usable=False) == local
    assert action_for(vol, vol) == "volume" and action_for(local, vol) == "cached"


def test_backoff_grows_and_is_capped() -> None:
    assert 0.18 <= backoff_seconds(1) <= 0.32
    assert 0.75 <= backoff_seconds(3) <= 1.25
    assert backoff_seconds(20) <= 10.0


def test_chunk_size_spreads_a_file_over_connections() -> None:
    mib = 1024 * 1024
    assert chunk_size_for(100, 8) == mib
    assert chunk_size_for(256 * mib, 8) == 4 * mib
    assert chunk_size_for(10_000 * mib, 8) == 8 * mib


def test_http_error_mapping_never_contains_the_token() -> None:
    s = load_settings(env={"HF_TOKEN": "hf_secret123"})
    err = http_error(403, path="loras/a.safetensors", source=SRC, settings=s)
    assert isinstance(err, GatedModel)
    assert "HF_TOKEN is set but has no access" in str(err) and "hf_secret123" not in str(err)
    assert "HF_TOKEN is not set" in str(http_error(401, path="p", source=SRC,
                                                    settings=load_settings(env={})))
    assert isinstance(http_error(404, path="p", source=SRC, settings=s), ModelNotFound)
    assert isinstance(http_error(503, path="p", source=SRC, settings=s), Transient)
    assert isinstance(http_error(429, path="p", source=UrlSource("https://h/x"), settings=s),
                      Transient)
    assert repr(s.hf_token) == repr(Secret("x"))


def test_token_header_only_for_the_hub_origin() -> None:
    hdrs = {"authorization": "Bearer t", "user-agent": "x"}
    assert headers_for("https://hub.example/a/resolve/x", hdrs, "https://hub.example") == hdrs
    assert headers_for("https://cdn.example/blob", hdrs, "https://hub.example") == {
        "user-agent": "x"}


def test_space_shortfall() -> None:
    assert space_shortfall(free=100, needed=40) == 0
    assert space_shortfall(free=10, needed=40) == 30


def test_header_structure() -> None:
    ok = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
          "b": {"dtype": "U8", "shape": [4], "data_offsets": [16, 20]},
          "__metadata__": {"x": "y"}}
    assert header_structure_ok(ok, 20) == (True, "ok")
    assert not header_structure_ok(ok, 24)[0]  # data after the last tensor
    gap = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}
    assert not header_structure_ok(gap, 8)[0]
    wrong = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    assert "needs 12 bytes" in header_structure_ok(wrong, 8)[1]
    assert not header_structure_ok([1, 2], 0)[0]


def test_progress_draws_a_bar_only_when_asked() -> None:
    out = io.StringIO()
    p = Progress(100, bar=None, stream=out).start()  # StringIO is no TTY
    p.add(100)
    p.stop()
    assert out.getvalue() == ""
    out = io.StringIO()
    p = Progress(100 * 10**6, bar=True, stream=out).start()
    p.add(60 * 10**6)
    p.add(-10 * 10**6)  # a failed attempt's bytes are taken back
    p.stop()
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith(" 50%|") and "50.0MB/100MB" in last and "ETA" in last
    assert p.done == 50 * 10**6


def test_log_lines_are_written_above_the_bar(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out = io.StringIO()
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        p = Progress(10**6, bar=True, stream=out).start()
        # while the bar is up, the console handler writes through tqdm (clears the bar)
        assert handler not in root.handlers
        p.file_done("loras/a.safetensors", "downloaded", 10**6, 0.5)
        p.stop()
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
    assert "downloaded loras/a.safetensors (976.6 KiB, 0.50 s, 2.0 MB/s)" in caplog.text


def test_cli_json_summary_and_bar_only_on_a_terminal(hf_server: HFServer,
                                                     tmp_path: Path) -> None:
    served = hf_server.add_file("acme/m", "a.safetensors", safetensors_bytes(200_000))
    write_lock_file(tmp_path / "models.lock.json", {"loras/a.safetensors": served})
    cmd = [sys.executable, "-m", "comfy_worker.cli", "sync", "--json", "--lock",
           str(tmp_path / "models.lock.json"), "--models-dir", str(tmp_path / "m")]
    env = {**os.environ, "HF_ENDPOINT": hf_server.endpoint}

    master, slave = pty.openpty()  # stderr on a terminal: the bar appears there
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=60,
                              text=True)
        os.close(slave)
        tty = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    summary = json.loads(proc.stdout)  # stdout is pure JSON
    assert summary["files"][0]["path"] == "loras/a.safetensors"
    assert summary["files"][0]["action"] == "downloaded"
    assert {"bytes", "seconds"} <= summary["files"][0].keys()
    assert b"B/s" in tty and b"ETA" in tty and b"100%|" in tty

    again = subprocess.run(cmd, capture_output=True, env=env, timeout=60, text=True)
    assert again.returncode == 0
    assert json.loads(again.stdout)["files"][0]["action"] == "cached"
    assert "ETA" not in again.stderr  # not a terminal: no bar
    assert "cached" in again.stderr  # the per-file line
