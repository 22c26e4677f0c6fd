"""A job's own models (ModelStore, ``requested=True``) are a stranger's sources (issue
16): their URLs obey the URL policy (the default refuses loopback; every redirect hop is
checked), a presigned URL works, no download writes past the entry's size, a job's
Hugging Face source is fetched without the operator's HF_TOKEN (with the entry's own
token, if it gives one), and the errors name no hash the source serves, no secret of
its URL, and give the caller's fix. Real servers on 127.0.0.1 (and 127.0.0.2, an
"internal" address) and real directories."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import HFServer, hf_server_fixture  # noqa: F401
from support.hostile_server import HostileServer, Route

from comfy_worker.config import load_settings
from comfy_worker.errors import (
    GatedModel,
    JobInputInvalid,
    ModelHashMismatch,
    ModelSizeMismatch,
    ModelSourceInvalid,
    UrlNotAllowed,
    WorkerError,
)
from comfy_worker.job.models import brought_model_error
from comfy_worker.lockfile import KNOWN_FOLDERS, Lockfile, parse_entry
from comfy_worker.sync import ModelStore, prepare_model_paths

OPERATOR_TOKEN = "hf_operatorSECRET0123456789"
JOB_TOKEN = "hf_jobOWNtoken0123456789"


def data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def srv() -> Iterator[HostileServer]:
    with HostileServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def internal() -> Iterator[HostileServer]:
    with HostileServer("127.0.0.2") as server:
        yield server


def make_store(stores: list[ModelStore], tmp: Path, *, allow: str = "",
               hf: HFServer | None = None, hf_token: str | None = None) -> ModelStore:
    env = {"COMFY_WORKER_URL_ALLOW": allow}
    if hf is not None:
        env["HF_ENDPOINT"] = hf.endpoint
    if hf_token is not None:
        env["HF_TOKEN"] = hf_token
    settings = load_settings(env=env, lock_path=tmp / "none.lock.json",
                             models_dir=tmp / "models", retries=2)
    lock = Lockfile()
    store = ModelStore(settings, lock, prepare_model_paths(settings, lock), prefetch=False)
    stores.append(store)
    return store


def job_entry(path: str, source: dict[str, Any], payload: bytes, *, size: int | None = None,
              sha256: str | None = None) -> Any:
    import hashlib

    return parse_entry({"path": path, "source": source,
                        "sha256": sha256 or hashlib.sha256(payload).hexdigest(),
                        "size": len(payload) if size is None else size},
                       where="models[0]", folders=KNOWN_FOLDERS, job=True)


def fetch(store: ModelStore, entry: Any) -> Path:
    with store.ensure([entry], requested=True) as claim:
        return claim.wait(timeout=60)[entry.path]


def failure(store: ModelStore, entry: Any) -> WorkerError:
    with pytest.raises(WorkerError) as err, store.ensure([entry], requested=True) as claim:
        claim.wait(timeout=60)
    return err.value


def nothing_left(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "models").rglob("*")
                  if p.name.endswith(".incomplete") or p.suffix == ".safetensors")


def test_by_default_a_job_model_on_a_loopback_address_is_refused_before_any_request(
        srv: HostileServer, stores: list[ModelStore], tmp_path: Path) -> None:
    payload = data(1000)
    url = srv.add("m.safetensors", Route(data=payload)).replace("127.0.0.1", "localhost")
    store = make_store(stores, tmp_path)

    err = failure(store, job_entry("loras/m.safetensors", {"type": "url", "url": url},
                                   payload))

    assert isinstance(err, UrlNotAllowed) and err.status == 422
    assert "localhost resolves to 127.0.0.1, a loopback address" in err.message
    assert 'models entry "loras/m.safetensors"' in err.message
    assert "COMFY_WORKER_URL_ALLOW" in (err.hint or "")
    assert srv.requests() == []
    assert nothing_left(tmp_path) == []


def test_an_allowed_job_url_is_fetched_and_a_hop_to_another_address_is_refused(
        srv: HostileServer, internal: HostileServer, stores: list[ModelStore],
        tmp_path: Path) -> None:
    payload = data(200_000, seed=1)
    store = make_store(stores, tmp_path, allow="127.0.0.1/32")
    ok = job_entry("loras/ok.safetensors",
                   {"type": "url", "url": srv.add("ok.safetensors", Route(data=payload))},
                   payload)
    assert fetch(store, ok).read_bytes() == payload

    inside = internal.add("meta.safetensors", Route(data=payload))
    hop = srv.add("hop.safetensors", Route(redirect=inside))
    err = failure(store, job_entry("loras/hop.safetensors", {"type": "url", "url": hop},
                                   payload))
    assert isinstance(err, UrlNotAllowed)
    assert "(redirected)" in err.message and "127.0.0.2 is a loopback address" in err.message
    assert internal.requests() == []
    assert not (tmp_path / "models/loras/hop.safetensors").exists()


def test_a_presigned_job_model_is_fetched(srv: HostileServer, stores: list[ModelStore],
                                          tmp_path: Path) -> None:
    payload = data(3_000_000, seed=2)
    url = srv.add("signed.safetensors", Route(data=payload, signature="SIGxyz"))
    store = make_store(stores, tmp_path, allow="127.0.0.1/32")

    found = fetch(store, job_entry("loras/signed.safetensors", {"type": "url", "url": url},
                                   payload))

    assert found.read_bytes() == payload
    hits = srv.requests("signed.safetensors")  # HEAD is refused (403): sized by a GET
    assert [(h.method, h.range) for h in hits[:2]] == [("HEAD", None), ("GET", "bytes=0-0")]
    assert all("SIGxyz" in h.query for h in hits)


@pytest.mark.parametrize("route", [Route(head=405, endless=True),
                                   Route(length=False, ranges=False, extra=10)])
def test_a_job_source_that_sends_more_than_the_entry_fails_at_size_plus_one(
        srv: HostileServer, stores: list[ModelStore], tmp_path: Path, route: Route) -> None:
    payload = data(100_000, seed=3)
    route.data = payload
    url = srv.add("more.safetensors", route)
    store = make_store(stores, tmp_path, allow="127.0.0.1/32")

    err = failure(store, job_entry("loras/more.safetensors", {"type": "url", "url": url},
                                   payload))

    assert isinstance(err, ModelSizeMismatch)
    assert "sent more than the 100000 bytes" in err.message
    assert isinstance(brought_model_error(err), JobInputInvalid)  # the caller's 422
    assert nothing_left(tmp_path) == []


def test_errors_about_a_job_source_reveal_neither_its_hash_nor_its_size(
        srv: HostileServer, stores: list[ModelStore], tmp_path: Path) -> None:
    import hashlib

    served = data(50_000, seed=4)
    store = make_store(stores, tmp_path, allow="127.0.0.1/32")
    url = srv.add("other.safetensors", Route(data=served))
    wrong_size = failure(store, job_entry("loras/a.safetensors", {"type": "url", "url": url},
                                          served, size=1234))
    wrong_hash = failure(store, job_entry("loras/b.safetensors", {"type": "url", "url": url},
                                          served, sha256="ab" * 32))

    assert isinstance(wrong_size, ModelSizeMismatch)
    assert isinstance(wrong_hash, ModelHashMismatch)
    for err in (wrong_size, wrong_hash):
        text = str(err) + repr(err.to_json())
        assert hashlib.sha256(served).hexdigest() not in text
        assert "50000" not in text
    assert len(srv.requests("other.safetensors", "GET")) == 1  # a job's pin: no retry


@pytest.mark.parametrize(("routes", "says"), [
    ({"a.safetensors": Route(redirect="/b.safetensors"),
      "b.safetensors": Route(redirect="/a.safetensors")}, "its redirects loop"),
    ({"a.safetensors": Route(redirect="file:///etc/shadow")}, 'redirects to a "file" URL'),
])
def test_a_job_source_that_cannot_be_followed_is_the_callers_error(
        srv: HostileServer, stores: list[ModelStore], tmp_path: Path,
        routes: dict[str, Route], says: str) -> None:
    for name, route in routes.items():
        srv.add(name, route)
    store = make_store(stores, tmp_path, allow="127.0.0.1/32")

    err = failure(store, job_entry("loras/a.safetensors",
                                   {"type": "url", "url": f"{srv.base}/a.safetensors"},
                                   b"x" * 10))

    assert isinstance(err, ModelSourceInvalid) and says in err.message
    assert "give a URL that answers with the file" in (err.hint or "")
    job_error = brought_model_error(err)
    assert isinstance(job_error, JobInputInvalid) and job_error.status == 422


def test_a_job_url_with_secrets_is_never_echoed(srv: HostileServer,
                                                stores: list[ModelStore],
                                                tmp_path: Path) -> None:
    srv.add("gone.safetensors", Route(status=404))
    url = (f"http://user:hunter2@127.0.0.1:{srv.port}/gone.safetensors"
           "?X-Amz-Signature=TOPSECRET")
    store = make_store(stores, tmp_path, allow="127.0.0.1/32")

    err = failure(store, job_entry("loras/g.safetensors", {"type": "url", "url": url},
                                   b"x" * 10))

    text = str(err) + repr(err.to_json()) + repr(store.status().to_json())
    assert f"http://127.0.0.1:{srv.port}/gone.safetensors" in str(err)
    assert "hunter2" not in text and "TOPSECRET" not in text and "user" not in text


def test_a_job_hf_source_never_uses_the_operators_token_but_may_bring_its_own(
        hf_server: HFServer, stores: list[ModelStore], tmp_path: Path) -> None:
    payload = data(100_000, seed=5)
    served = hf_server.add_file("private/repo", "m.safetensors", payload)
    hf_server.gate("private/repo", allowed_tokens=(OPERATOR_TOKEN, JOB_TOKEN))
    store = make_store(stores, tmp_path, hf=hf_server, hf_token=OPERATOR_TOKEN)
    source = {"type": "huggingface", "repo": "private/repo", "revision": served.commit,
              "file": "m.safetensors"}

    err = failure(store, job_entry("loras/p.safetensors", source, payload))

    assert isinstance(err, GatedModel)
    assert "without the worker's HF_TOKEN" in err.message
    assert '"token"' in (err.hint or "")
    assert not any(q.authorization for q in hf_server.requests(served))
    assert hf_server.bytes_served(served) == 0

    own = job_entry("loras/own.safetensors", {**source, "token": JOB_TOKEN}, payload)
    assert "hf_job" not in repr(own) and "token" not in str(own.to_json())
    assert fetch(store, own).read_bytes() == payload
    hub = [q for q in hf_server.requests(served) if "/resolve/" in q.path]
    cdn = [q for q in hf_server.requests(served) if q.path.startswith("/cdn-lfs/")]
    assert hub and all(q.authorization for q in hub[-1:])
    assert cdn and not any(q.authorization for q in cdn)
