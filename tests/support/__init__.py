"""Reusable test parts: a Hugging Face-compatible server and model-file helpers.

Test modules import what they need (``tests/`` is on ``sys.path`` under pytest; importing
``hf_server_fixture`` makes the fixture ``hf_server`` available in that module)::

    from support import HFServer, hf_server_fixture, safetensors_bytes  # noqa: F401

    def test_x(hf_server: HFServer) -> None:
        f = hf_server.add_file("acme/upscale", "4x.safetensors", safetensors_bytes(64))
        ... HF_ENDPOINT=hf_server.endpoint ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from support.hf_server import (
    Faults,
    HFServer,
    RateLimiter,
    RequestRecord,
    ServedFile,
    Valve,
    iter_random_bytes,
    write_random_file,
)


def safetensors_bytes(n_floats: int = 256, *, seed: int = 0, name: str = "weight") -> bytes:
    """A real ``.safetensors`` file: one float32 tensor of ``n_floats`` values."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({name: rng.standard_normal(n_floats).astype(np.float32)})


def lock_entry(path: str, served: ServedFile) -> dict[str, Any]:
    """A ``models.lock.json`` entry (dict) for a file served by :class:`HFServer`."""
    if served.repo is not None:
        source: dict[str, Any] = {"type": "huggingface", "repo": served.repo,
                                  "revision": served.commit, "file": served.path}
    else:
        source = {"type": "url", "url": served.url}
    return {"path": path, "source": source, "sha256": served.sha256, "size": served.size}


def write_lock_file(dest: Path, entries: dict[str, ServedFile]) -> Path:
    """Write a lock file with one entry per ``{lock path: served file}``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "models": [lock_entry(p, f) for p, f in entries.items()]}
    dest.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return dest


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose environment is missing something, but fail it under ``CI=true``
    (CI must run every test)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(name="hf_server")
def hf_server_fixture() -> Iterator[HFServer]:
    """A started :class:`HFServer` on 127.0.0.1, stopped after the test."""
    with HFServer() as server:
        yield server


__all__ = [
    "Faults",
    "HFServer",
    "RateLimiter",
    "RequestRecord",
    "ServedFile",
    "Valve",
    "hf_server_fixture",
    "iter_random_bytes",
    "lock_entry",
    "safetensors_bytes",
    "skip_or_fail",
    "write_lock_file",
    "write_random_file",
]
