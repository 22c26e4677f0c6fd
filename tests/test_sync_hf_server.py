"""The fake Hub itself: huggingface_hub must accept it as a Hub, faults must fire."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from support import HFServer, hf_server_fixture  # noqa: F401


def test_branch_resolves_to_commit_with_lfs_metadata(hf_server: HFServer) -> None:
    data = os.urandom(50_000)
    f = hf_server.add_file("acme/models", "sub/x.safetensors", data)
    url = hf_hub_url("acme/models", "sub/x.safetensors", revision="main",
                     endpoint=hf_server.endpoint)
    meta = get_hf_file_metadata(url, endpoint=hf_server.endpoint)
    assert meta.commit_hash == f.commit and len(f.commit or "") == 40
    assert meta.etag == hashlib.sha256(data).hexdigest() == f.sha256
    assert meta.size == len(data)
    assert meta.location.startswith(hf_server.cdn_endpoint + "/cdn-lfs/")


def test_hf_hub_download_gets_exact_bytes(hf_server: HFServer, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    hf_server.add_file("acme/models", "x.bin", data)
    path = hf_hub_download("acme/models", "x.bin", revision="main", cache_dir=tmp_path,
                           endpoint=hf_server.endpoint)
    assert Path(path).read_bytes() == data


def test_new_commit_keeps_old_commit_downloadable(hf_server: HFServer) -> None:
    old = hf_server.add_file("acme/m", "a.bin", b"old" * 100)
    new = hf_server.add_file("acme/m", "a.bin", b"new" * 100)
    assert old.commit != new.commit
    assert hf_server.branch_commit("acme/m") == new.commit
    assert requests.get(old.url, timeout=5).content == b"old" * 100
    assert requests.get(new.url, timeout=5).content == b"new" * 100


def test_range_request_returns_206(hf_server: HFServer) -> None:
    data = bytes(range(256)) * 10
    f = hf_server.add_url("r.bin", data)
    r = requests.get(f.url, headers={"Range": "bytes=10-19"}, timeout=5)
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"


def test_faults_fire_then_stop(hf_server: HFServer) -> None:
    f = hf_server.add_url("f.bin", b"x" * 10_000)
    f.faults.fail_times = 2
    assert [requests.get(f.url, timeout=5).status_code for _ in range(3)] == [503, 503, 200]
    f.faults.corrupt_times = 1
    assert requests.get(f.url, timeout=5).content != b"x" * 10_000
    assert requests.get(f.url, timeout=5).content == b"x" * 10_000
    f.faults.cut_times, f.faults.cut_after = 1, 100
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f.url, timeout=5).raise_for_status()
    assert requests.get(f.url, timeout=5).content == b"x" * 10_000


def test_gated_repo_401_without_token_403_with_wrong_token(hf_server: HFServer) -> None:
    f = hf_server.add_file("acme/gated", "m.bin", b"secret weights")
    hf_server.gate("acme/gated", allowed_tokens=("hf_good",))
    assert requests.head(f.url, timeout=5).status_code == 401
    bad = {"Authorization": "Bearer hf_bad"}
    assert requests.head(f.url, headers=bad, timeout=5).status_code == 403
    good = {"Authorization": "Bearer hf_good"}
    assert requests.get(f.url, headers=good, timeout=5).content == b"secret weights"


def test_counters_count_body_bytes(hf_server: HFServer) -> None:
    f = hf_server.add_url("c.bin", b"y" * 1234)
    assert hf_server.bytes_served(f) == 0
    requests.head(f.url, timeout=5)
    assert hf_server.bytes_served(f) == 0
    requests.get(f.url, timeout=5)
    assert hf_server.bytes_served(f) == 1234
