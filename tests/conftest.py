"""Fixtures shared by test modules of this folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.verify_reads import VerifyReads

from comfy_worker.sync import verify as sync_verify
from comfy_worker.sync.store import ModelStore

REPO = Path(__file__).resolve().parents[1]
VAST_VENV = REPO / ".vast-pyworker"


@pytest.fixture(scope="session")
def vast_python() -> str:
    """The python of the vastai virtualenv scripts/install_vast_pyworker.sh builds (once
    per session); skips without PyPI, fails under CI=true."""
    proc = subprocess.run([str(REPO / "scripts" / "install_vast_pyworker.sh"),
                           str(VAST_VENV)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        reason = ("could not build the vastai virtualenv (PyPI unreachable?):\n"
                  + (proc.stdout + proc.stderr)[-2000:])
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return str(VAST_VENV / "bin" / "python")


@pytest.fixture
def verify_reads(monkeypatch: pytest.MonkeyPatch) -> VerifyReads:
    """Counts the bytes :mod:`comfy_worker.sync.verify` reads from files from now on."""
    counter = VerifyReads()
    monkeypatch.setattr(sync_verify, "open", counter.open, raising=False)
    return counter


@pytest.fixture
def stores() -> Iterator[list[ModelStore]]:
    """Stores a test made; closed after it (no thread outlives a test)."""
    made: list[ModelStore] = []
    yield made
    for store in made:
        store.close()
