"""The editor's default workflow (SD 1.5 text-to-image) against a real CPU ComfyUI.

A tiny random-weight SD 1.5 checkpoint (``support/tiny_sd15.py``) is placed under the
name the templates' ``default.json`` loads. Its API-format equivalent runs at 64x64 with
2 steps straight against ComfyUI's HTTP API (``POST /prompt``, the websocket,
``GET /history``, ``GET /view``), and ``default.json`` itself, in the editor's UI format,
runs through ``comfy-worker run`` as a user runs it (``compat``: on v0.33.0 and v0.3.75).

Where ``default.json`` comes from: the templates of the ComfyUI under test, resolved as
its server resolves them (``comfyui_workflow_templates.get_asset_path("default",
"default.json")``: the manifest of ``comfyui_workflow_templates_core`` names the package,
the JSON package ``comfyui_workflow_templates_json`` from 0.8 on, a media package before),
else the single ``templates/`` folder of the packaging up to 0.7.x. The set v0.33.0 pins,
comfyui-workflow-templates 0.11.41, has none: its manifest lists 515 templates without
"default" and none loads an SD 1.5 checkpoint (frontend 1.48.7 keeps the SD 1.5 default
graph built into the editor, not as a template). The test then takes it from the compat
ComfyUI's templates (0.7.25), the last set that ships it: a workflow saved by an older
editor, which the worker converts with v0.33.0's node definitions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.comfyui import find_compat_comfyui, skip_or_fail
from support.tiny_sd15 import (
    FILENAME,
    as_a_client_sets_it,
    default_workflow_prompt,
    iter_tiny_sd15_tensors,
    plain_prompt,
    write_tiny_sd15_checkpoint,
)

from comfy_worker.comfy.client import ComfyClient
from comfy_worker.comfy.events import Event, Executing, ExecutionError, Progress
from comfy_worker.comfy.process import ComfyProcess, LaunchConfig
from comfy_worker.sync import write_extra_model_paths
from comfy_worker.workflow.embedded import embedded_texts
from e2e.conftest import FAST_BOOT_ARGS, ComfyInstall
from e2e.helpers import CLI, PNG_SIGNATURE, png_size

pytestmark = pytest.mark.comfyui

log = logging.getLogger(__name__)

JOB_TIMEOUT_S = 120.0
LOAD_PROBLEMS = ("unet missing", "unet unexpected", "clip missing", "Missing VAE keys",
                 "no match", "This is not a checkpoint file", "no CLIP/text encoder")
"""ComfyUI log lines (warning level) that say the checkpoint was not loaded as a whole."""
LOADED_AS_SD15 = ("model_type EPS", "Requested to load SD1ClipModel", "Requested to load TAESD")
"""ComfyUI's log lines (0.3.75 and 0.33.0 alike) for SD 1.5's UNet, its CLIP-L text encoder
and a TAESD VAE."""


# UI widget order per node type (the API inputs the UI file's ``widgets_values`` hold);
# None marks a UI-only widget (KSampler's "control after generate").
WIDGETS: dict[str, list[str | None]] = {
    "KSampler": ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "CLIPTextEncode": ["text"],
    "VAEDecode": [],
    "SaveImage": ["filename_prefix"],
}
CLIENT_SET = {("3", "steps"), ("5", "width"), ("5", "height")}
"""Widgets this test changes from the template's values (to 2 steps at 64x64)."""


FIND_DEFAULT = """
import glob, sys
from pathlib import Path
try:  # the manifest-based packaging (0.7.x on), as ComfyUI's server resolves templates
    from comfyui_workflow_templates import get_asset_path
    print(get_asset_path("default", "default.json"))
    sys.exit(0)
except (ImportError, KeyError, FileNotFoundError):
    pass
for entry in sys.path:  # one templates/ folder per package (the layout before 0.7)
    found = sorted(glob.glob(str(Path(entry) / "comfyui_workflow_templates*" / "templates"
                                 / "default.json")))
    if entry and found:
        print(found[0])
        break
"""
"""Run by the ComfyUI's own Python: the path of its templates' ``default.json``, or nothing."""


def _templates_default(python: str) -> Path | None:
    """``default.json`` of the ``comfyui_workflow_templates*`` packages ``python`` has."""
    out = subprocess.run([python, "-c", FIND_DEFAULT], capture_output=True, text=True,
                         timeout=60, check=True)
    path = out.stdout.strip()
    return Path(path) if path and Path(path).is_file() else None


def _find_default_template(install: ComfyInstall) -> Path:
    """The templates' ``default.json``: the ComfyUI under test's own, else the compat
    ComfyUI's (see the module docstring); skips (fails under CI=true) without either."""
    own = _templates_default(install.python)
    if own is not None:
        return own
    compat = find_compat_comfyui()
    found = _templates_default(compat.python) if compat is not None else None
    if found is None:
        skip_or_fail("no comfyui_workflow_templates* package with templates/default.json in "
                     f"{install.python}'s sys.path nor in the compat ComfyUI's")
    assert found is not None
    log.info("ComfyUI %s's templates have no default.json: using %s", install.version, found)
    return found


def _prompt_from_ui(ui: dict[str, Any]) -> dict[str, Any]:
    """The API prompt a UI workflow stands for (only the node types in WIDGETS)."""
    links = {link[0]: link for link in ui["links"]}  # [id, from, slot, to, to_slot, type]
    prompt: dict[str, Any] = {}
    for node in ui["nodes"]:
        if node["type"] not in WIDGETS:
            continue  # MarkdownNote and other UI-only nodes
        inputs: dict[str, Any] = {}
        for name, value in zip(WIDGETS[node["type"]], node.get("widgets_values") or [],
                               strict=False):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _png_pixels_bytes(data: bytes) -> int:
    """The size of a PNG's decompressed image data (all IDAT chunks)."""
    assert data[:8] == PNG_SIGNATURE
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(zlib.decompress(idat))


@dataclass
class TinyCheckpoint:
    root: Path  # a models root: checkpoints/FILENAME under it
    path: Path
    generate_s: float


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyCheckpoint]:
    """The 278 MB checkpoint, generated once for the module (whichever ComfyUI runs it) and
    deleted afterwards (pytest keeps the last temporary folders around)."""
    root = tmp_path_factory.mktemp("tiny-sd15") / "models"
    t0 = time.monotonic()
    path = write_tiny_sd15_checkpoint(root / "checkpoints" / FILENAME)
    try:
        yield TinyCheckpoint(root, path, time.monotonic() - t0)
    finally:
        path.unlink(missing_ok=True)


@dataclass
class TinySD15Comfy:
    comfy: ComfyProcess
    checkpoint: Path
    generate_s: float
    boot_s: float


@pytest.fixture(scope="module")
def tiny_sd15_comfy(comfy_install: ComfyInstall, tiny_checkpoint: TinyCheckpoint,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinySD15Comfy]:
    """A CPU ComfyUI whose ``checkpoints`` folder holds the tiny SD 1.5 as FILENAME."""
    root = tmp_path_factory.mktemp("tiny-sd15-comfy")
    yaml_path = write_extra_model_paths([tiny_checkpoint.root], ["checkpoints"],
                                        root / "extra_model_paths.yaml")
    comfy = ComfyProcess(LaunchConfig(
        comfyui_dir=comfy_install.comfyui_dir, python=comfy_install.python,
        work_dir=root / "comfyui", extra_model_paths=yaml_path, cpu=True,
        extra_args=FAST_BOOT_ARGS, boot_timeout=120.0))
    try:
        t0 = time.monotonic()
        comfy.start()
        yield TinySD15Comfy(comfy, tiny_checkpoint.path, tiny_checkpoint.generate_s,
                            time.monotonic() - t0)
    finally:
        comfy.stop()


@dataclass
class Run:
    prompt_id: str
    progress: list[Progress] = field(default_factory=list)
    node_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0


def _run_prompt(client: ComfyClient, prompt: dict[str, Any]) -> Run:
    """Queue ``prompt`` and follow the websocket until ComfyUI says it is done."""
    client_id = uuid.uuid4().hex
    events = client.events(client_id)
    events.connect()
    try:
        t0 = time.monotonic()
        response = client.queue_prompt(prompt, client_id)
        assert response.status == 200 and response.prompt_id, response.body
        run = Run(response.prompt_id)
        deadline = t0 + JOB_TIMEOUT_S
        node, node_t0 = None, t0
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no end of prompt within {JOB_TIMEOUT_S:.0f} s"
            event: Event | None = events.next(remaining)
            if event is None or event.prompt_id != run.prompt_id:
                continue
            if isinstance(event, ExecutionError):
                raise AssertionError(f"node {event.node_id} ({event.node_type}) failed: "
                                     f"{event.exception_type}: {event.exception_message}")
            if isinstance(event, Progress):
                run.progress.append(event)
            if isinstance(event, Executing):
                now = time.monotonic()
                if node is not None:
                    run.node_s[node] = now - node_t0
                node, node_t0 = event.node, now
                if event.node is None:
                    run.total_s = now - t0
                    return run
    finally:
        events.close()


def _peak_rss_mb(pid: int | None) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def test_api_prompt_is_the_templates_default_workflow(comfy_install: ComfyInstall) -> None:
    template = _find_default_template(comfy_install)
    from_ui = _prompt_from_ui(json.loads(template.read_text(encoding="utf-8")))
    ours = default_workflow_prompt()
    for node_id, name in CLIENT_SET:
        from_ui[node_id]["inputs"][name] = ours[node_id]["inputs"][name]
    assert ours == from_ui


def test_default_workflow_runs_on_the_tiny_sd15_checkpoint(
        tiny_sd15_comfy: TinySD15Comfy) -> None:
    comfy = tiny_sd15_comfy.comfy
    client = ComfyClient(comfy.base_url)
    try:
        run = _run_prompt(client, default_workflow_prompt(64, 64, steps=2))
        history = client.history(run.prompt_id)[run.prompt_id]
        assert history["status"]["status_str"] == "success", history["status"]
        images = history["outputs"]["9"]["images"]
        assert len(images) == 1, images
        png = client.view(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
    finally:
        client.close()

    assert png_size(png) == (64, 64)
    assert _png_pixels_bytes(png) == 64 * (1 + 64 * 3)  # 8-bit RGB rows, one filter byte each
    steps = [(p.value, p.max) for p in run.progress if p.node == "3"]
    assert steps == [(1, 2), (2, 2)], run.progress

    log_text = comfy.cfg.log_path.read_text(encoding="utf-8", errors="replace")
    problems = [line for line in log_text.splitlines()
                if any(marker in line for marker in LOAD_PROBLEMS)]
    assert problems == [], problems
    for line in LOADED_AS_SD15:
        assert line in log_text, f"ComfyUI never logged {line!r}"

    log.info("tiny SD 1.5: %.1f MB generated in %.2f s; ComfyUI ready in %.1f s; job %.2f s "
             "(per node: %s); ComfyUI peak RSS %s MB",
             tiny_sd15_comfy.checkpoint.stat().st_size / 1e6, tiny_sd15_comfy.generate_s,
             tiny_sd15_comfy.boot_s, run.total_s,
             ", ".join(f"{n} {s:.2f} s" for n, s in run.node_s.items()),
             _peak_rss_mb(comfy.pid))



@pytest.mark.compat
def test_comfy_worker_run_of_the_templates_default_json_on_the_tiny_sd15(
        comfy_install: ComfyInstall, tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    """`comfy-worker run default.json --out DIR`: the UI workflow converted with the
    running ComfyUI's node definitions, the checkpoint found verified in the models dir (its
    lock entry's URL does not resolve), 2 KSampler steps reported, one 64x64 PNG written."""
    ui = json.loads(_find_default_template(comfy_install).read_text(encoding="utf-8"))
    workflow = tmp_path / "default.json"
    workflow.write_text(json.dumps(as_a_client_sets_it(ui, 64, 64, 2)), encoding="utf-8")
    lock = tmp_path / "models.lock.json"
    lock.write_text(json.dumps({"version": 1, "models": [{
        "path": f"checkpoints/{FILENAME}",
        "source": {"type": "url", "url": f"https://models.invalid/{FILENAME}"},
        "sha256": _sha256(tiny_checkpoint.path), "size": tiny_checkpoint.path.stat().st_size,
    }]}), encoding="utf-8")
    env = dict(os.environ)
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    env.update({
        "COMFYUI_DIR": str(comfy_install.comfyui_dir), "COMFYUI_PYTHON": comfy_install.python,
        "COMFYUI_CPU": "1", "COMFYUI_EXTRA_ARGS": " ".join(FAST_BOOT_ARGS),
        "COMFYUI_BOOT_TIMEOUT": "120", "COMFY_WORKER_LOCK": str(lock),
        "COMFY_WORKER_MODELS_DIR": str(tiny_checkpoint.root),
        "COMFY_WORKER_WORK_DIR": str(tmp_path / "work"),
    })
    out = tmp_path / "out"
    t0 = time.monotonic()
    ran = subprocess.run([*CLI, "run", str(workflow), "--out", str(out)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    run_s = time.monotonic() - t0
    assert ran.returncode == 0, ran.stderr[-4000:]
    steps = re.findall(r"node 3 \(KSampler\) (\d+)/(\d+)", ran.stderr)
    assert sorted(set(steps)) == [("1", "2"), ("2", "2")], ran.stderr[-4000:]
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["SD1.5_00001_.png"], ran.stdout
    png = written[0].read_bytes()
    assert png_size(png) == (64, 64)
    # What ran is the editor's prompt for default.json with the client's values.
    ran = json.loads(embedded_texts(png)["prompt"])
    assert plain_prompt(ran) == default_workflow_prompt(64, 64, 2)
    log.info("comfy-worker run of default.json on ComfyUI %s: %.1f s (boot and job)",
             comfy_install.version, run_s)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_checkpoint_is_byte_identical_for_a_seed_and_differs_for_another(
        tiny_sd15_comfy: TinySD15Comfy, tmp_path: Path) -> None:
    again = write_tiny_sd15_checkpoint(tmp_path / FILENAME, seed=0)
    try:
        assert _sha256(again) == _sha256(tiny_sd15_comfy.checkpoint)
    finally:
        again.unlink()
    first_random = [next(v for _, v in iter_tiny_sd15_tensors(seed) if v.std() > 0)
                    for seed in (0, 1)]
    assert (first_random[0] != first_random[1]).any()
