"""The guides' canonical workflow, as a user runs it: the templates' own ``default.json``
(UI format) is locked with `comfy-worker lock from-workflow` and run with
`comfy-worker run`, both real subprocesses, on a real CPU ComfyUI.

The checkpoint it declares (``v1-5-pruned-emaonly-fp16.safetensors`` from
``Comfy-Org/stable-diffusion-v1-5-archive``) is the tiny random-weight SD 1.5 of
``support/tiny_sd15.py`` (278 MB, generated once for the module), served by the
HF-compatible test server at that repo and path (``HF_ENDPOINT``): `lock from-workflow`
pins it from the Hub's metadata alone, and the on-demand sync of `run` fetches it.
The client sets 64x64 and 2 steps by editing the UI JSON's ``widgets_values``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import HFServer, ServedFile
from support.tiny_sd15 import (
    FILENAME,
    as_a_client_sets_it,
    default_workflow_prompt,
    plain_prompt,
    write_tiny_sd15_checkpoint,
)
from support.workflow_cases import template

from comfy_worker.lockfile import load_lock
from comfy_worker.workflow.embedded import embedded_texts
from e2e.conftest import ComfyInstall, ModelEnv, e2e_env
from e2e.helpers import CLI, png_size

pytestmark = pytest.mark.comfyui

log = logging.getLogger(__name__)

REPO = "Comfy-Org/stable-diffusion-v1-5-archive"
"""Where default.json's declaration says the checkpoint comes from."""


@dataclass
class TinyHub:
    server: HFServer
    checkpoint: ServedFile
    generate_s: float


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyHub]:
    """The test server holding the tiny SD 1.5 at default.json's repo and path (streamed
    from disk; the file is deleted afterwards, as pytest keeps recent temporary folders)."""
    root = tmp_path_factory.mktemp("tiny-sd15-hub")
    t0 = time.monotonic()
    path = write_tiny_sd15_checkpoint(root / FILENAME)
    generate_s = time.monotonic() - t0
    try:
        with HFServer() as server:
            yield TinyHub(server, server.add_file(REPO, FILENAME, path), generate_s)
    finally:
        path.unlink(missing_ok=True)



def test_default_workflow_is_locked_from_its_declaration_then_runs_on_demand(
        comfy_install: ComfyInstall, tiny_hub: TinyHub, tmp_path: Path) -> None:
    served = tiny_hub.checkpoint
    lock = tmp_path / "models.lock.json"
    models = tmp_path / "models"
    env = e2e_env(comfy_install, ModelEnv(hub=tiny_hub.server, lock_path=lock,
                                          models_dir=models, model_name=FILENAME,
                                          model_sha256=served.sha256))
    env["COMFY_WORKER_WORK_DIR"] = str(tmp_path / "work")
    workflow = tmp_path / "default.json"
    workflow.write_text(json.dumps(as_a_client_sets_it(template("default"), 64, 64, 2)))

    t0 = time.monotonic()
    locked = subprocess.run([*CLI, "lock", "from-workflow", str(workflow), "--lock", str(lock)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lock_s = time.monotonic() - t0
    assert locked.returncode == 0, locked.stderr[-3000:]
    entry = load_lock(lock).entry(f"checkpoints/{FILENAME}")
    assert entry is not None
    assert entry.source.to_json() == {"type": "huggingface", "repo": REPO,
                                      "revision": served.commit, "file": FILENAME}
    assert (entry.sha256, entry.size) == (served.sha256, served.size)
    assert tiny_hub.server.bytes_served(served) == 0  # pinned from the metadata alone

    out = tmp_path / "out"
    t0 = time.monotonic()
    try:
        ran = subprocess.run([*CLI, "run", str(workflow), "--out", str(out)], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        run_s = time.monotonic() - t0
        assert ran.returncode == 0, ran.stderr[-4000:]
        synced = models / "checkpoints" / FILENAME
        assert synced.stat().st_size == served.size
    finally:
        (models / "checkpoints" / FILENAME).unlink(missing_ok=True)

    assert tiny_hub.server.bytes_served(served) == served.size  # fetched once, on demand
    steps = re.findall(r"node 3 \(KSampler\) (\d+)/(\d+)", ran.stderr)
    assert sorted(set(steps)) == [("1", "2"), ("2", "2")], ran.stderr[-4000:]
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["SD1.5_00001_.png"], ran.stdout
    png = written[0].read_bytes()
    assert png_size(png) == (64, 64)
    # what ran is the editor's prompt for default.json with the client's values
    ran_prompt = json.loads(embedded_texts(png)["prompt"])
    assert plain_prompt(ran_prompt) == default_workflow_prompt(64, 64, steps=2)
    log.info("tiny SD 1.5 generated in %.2f s; lock from-workflow %.2f s; run (sync 278 MB, "
             "ComfyUI boot, job) %.1f s", tiny_hub.generate_s, lock_s, run_s)
