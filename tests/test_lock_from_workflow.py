"""`comfy-worker lock from-workflow` on the editor's real templates, then `comfy-worker sync`.

Both commands run as real subprocesses against the HF-compatible server on 127.0.0.1
(``HF_ENDPOINT``), which serves a small file at every repo/revision/path a template's
``huggingface.co/.../resolve/...`` URLs name. The templates are the committed copies in
tests/fixtures/workflows (byte for byte the packages'). No template declares a model
outside ComfyUI's standard folders and civitai.com cannot be reached here, so one
workflow is edited as a user would: its civitai URL points at a plain URL of the test
server, and a custom node declaring a model in its own folder ("rembg") is added.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import HFServer, ServedFile, safetensors_bytes
from support.workflow_cases import template

from comfy_worker.lockfile import load_lock

CLI = [sys.executable, "-m", "comfy_worker.cli"]

QWEN_EDIT = {  # image_qwen_image_edit_2509: 8 declarations on 8 nodes, 4 files
    "vae/qwen_image_vae.safetensors":
        ("Comfy-Org/Qwen-Image_ComfyUI", "split_files/vae/qwen_image_vae.safetensors"),
    "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors":
        ("Comfy-Org/Qwen-Image_ComfyUI",
         "split_files/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"),
    "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors":
        ("Comfy-Org/Qwen-Image-Edit_ComfyUI",
         "split_files/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors"),
    "loras/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors":
        ("lightx2v/Qwen-Image-Lightning",
         "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors"),
}
FLUX_DEPTH_LORA = {  # flux_depth_lora_example: two of its loaders sit in a subgraph
    "vae/ae.safetensors":
        ("Comfy-Org/Lumina_Image_2.0_Repackaged", "split_files/vae/ae.safetensors"),
    "text_encoders/t5xxl_fp16.safetensors":
        ("comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors"),
    "text_encoders/clip_l.safetensors": ("comfyanonymous/flux_text_encoders", "clip_l.safetensors"),
    "loras/flux1-depth-dev-lora.safetensors":
        ("Comfy-Org/flux1-dev", "split_files/loras/flux1-depth-dev-lora.safetensors"),
    "diffusion_models/flux1-dev-fp8.safetensors":
        ("Comfy-Org/flux1-dev", "flux1-dev-fp8.safetensors"),
    "vae/vae-ft-mse-840000-ema-pruned.safetensors":
        ("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors"),
    "diffusion_models/lotus-depth-d-v1-1.safetensors":
        ("Comfy-Org/lotus", "lotus-depth-d-v1-1.safetensors"),
}
DEPTH_CONTROLNET_HF = {
    "controlnet/control_v11f1p_sd15_depth_fp16.safetensors":
        ("comfyanonymous/ControlNet-v1-1_fp16_safetensors",
         "control_v11f1p_sd15_depth_fp16.safetensors"),
    "rembg/u2net.onnx": ("e2e/rembg", "u2net.onnx"),
}
CIVITAI_CHECKPOINT = "checkpoints/architecturerealmix_v11.safetensors"


@dataclass
class Hub:
    server: HFServer
    files: dict[str, ServedFile]
    """Lock path → the file the server holds for it."""


def _serve(server: HFServer, table: dict[str, tuple[str, str]], files: dict[str, ServedFile]
           ) -> None:
    for i, (path, (repo, file)) in enumerate(table.items(), len(files)):
        files[path] = server.add_file(repo, file, safetensors_bytes(64 + i, seed=i))


@pytest.fixture
def hub() -> Iterator[Hub]:
    with HFServer() as server:
        files: dict[str, ServedFile] = {}
        for table in (QWEN_EDIT, FLUX_DEPTH_LORA, DEPTH_CONTROLNET_HF):
            _serve(server, table, files)
        files[CIVITAI_CHECKPOINT] = server.add_url("architecturerealmix_v11.safetensors",
                                                   safetensors_bytes(300, seed=99))
        yield Hub(server, files)


def _depth_controlnet_edited(hub: Hub) -> dict[str, Any]:
    """depth_controlnet with its civitai URL on the test server and a custom node whose
    model lives in a folder of its own."""
    wf = template("depth_controlnet")
    for node in wf["nodes"]:
        for model in (node.get("properties") or {}).get("models") or []:
            if "civitai.com" in model["url"]:
                model["url"] = hub.files[CIVITAI_CHECKPOINT].url
    wf["nodes"].append({
        "id": 900, "type": "RembgSessionLoader", "pos": [0, 0], "size": [300, 60], "flags": {},
        "order": 99, "mode": 0, "inputs": [], "outputs": [],
        "widgets_values": ["u2net.onnx"],
        "properties": {"models": [{"name": "u2net.onnx", "directory": "rembg",
                                   "url": "https://huggingface.co/e2e/rembg/resolve/main/"
                                          "u2net.onnx"}]}})
    return wf


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _cli(hub: Hub, *args: str, extra_env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env |= {"HF_ENDPOINT": hub.server.endpoint, **(extra_env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def _from_workflow(hub: Hub, workflow: Path, lock: Path, *flags: str
                   ) -> subprocess.CompletedProcess[str]:
    return _cli(hub, "lock", "from-workflow", str(workflow), "--lock", str(lock), *flags)


def _hf_entry(hub: Hub, path: str, table: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The entry the lock must hold: pinned to the commit the branch is at now."""
    repo, file = table[path]
    served = hub.files[path]
    return {"path": path, "source": {"type": "huggingface", "repo": repo,
                                     "revision": hub.server.branch_commit(repo), "file": file},
            "sha256": served.sha256, "size": served.size}


def test_templates_models_are_pinned_to_the_hubs_commits_and_sync_fetches_them(
        hub: Hub, tmp_path: Path) -> None:
    lock = tmp_path / "models.lock.json"
    runs = {}
    for name, doc in (("image_qwen_image_edit_2509", template("image_qwen_image_edit_2509")),
                      ("flux_depth_lora_example", template("flux_depth_lora_example")),
                      ("depth_controlnet", _depth_controlnet_edited(hub))):
        proc = _from_workflow(hub, _write(tmp_path, name, doc), lock, "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout)

    qwen = runs["image_qwen_image_edit_2509"]
    assert qwen["lock"] == str(lock) and qwen["written"] is True
    assert qwen["added"] == [_hf_entry(hub, p, QWEN_EDIT) for p in QWEN_EDIT]  # 8 → 4
    assert (qwen["already_locked"], qwen["extra_folders"], qwen["needs_source"]) == ([], [], [])
    flux = runs["flux_depth_lora_example"]
    assert sorted(e["path"] for e in flux["added"]) == sorted(FLUX_DEPTH_LORA)
    for entry in flux["added"]:
        assert entry == _hf_entry(hub, entry["path"], FLUX_DEPTH_LORA)
    depth = runs["depth_controlnet"]
    civitai = hub.files[CIVITAI_CHECKPOINT]
    assert {e["path"]: e for e in depth["added"]} == {
        CIVITAI_CHECKPOINT: {"path": CIVITAI_CHECKPOINT,
                             "source": {"type": "url", "url": civitai.url},
                             "sha256": civitai.sha256, "size": civitai.size},
        **{p: _hf_entry(hub, p, DEPTH_CONTROLNET_HF) for p in DEPTH_CONTROLNET_HF}}
    assert depth["extra_folders"] == ["rembg"]

    # Hub files: metadata only; the plain URL: one streamed download to hash it
    for path, served in hub.files.items():
        expected = served.size if path == CIVITAI_CHECKPOINT else 0
        assert hub.server.bytes_served(served) == expected, path
    assert len(hub.server.requests(civitai, "GET")) == 1

    written = load_lock(lock)
    assert {e.path for e in written.models} == set(hub.files)
    assert written.extra_folders == ("rembg",)

    models = tmp_path / "models"
    sync = _cli(hub, "sync", "--json", extra_env={"COMFY_WORKER_LOCK": str(lock),
                                                   "COMFY_WORKER_MODELS_DIR": str(models)})
    assert sync.returncode == 0, sync.stderr[-3000:]
    report = json.loads(sync.stdout)
    assert report["counts"] == {"downloaded": len(hub.files)}
    for path, served in hub.files.items():
        data = (models / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == served.sha256, path
    assert "rembg" in Path(report["extra_model_paths"]).read_text()  # ComfyUI sees it


def test_dry_run_resolves_and_prints_but_writes_nothing(hub: Hub, tmp_path: Path) -> None:
    workflow = _write(tmp_path, "wf", template("image_qwen_image_edit_2509"))
    lock = tmp_path / "models.lock.json"

    text = _from_workflow(hub, workflow, lock, "--dry-run")
    as_json = _from_workflow(hub, workflow, lock, "--dry-run", "--json")

    assert text.returncode == 0, text.stderr[-3000:]
    lines = text.stdout.splitlines()
    for path, (repo, file) in QWEN_EDIT.items():
        served, commit = hub.files[path], hub.server.branch_commit(repo)
        assert (f"would lock {path}: hf://{repo}@{commit[:12]}/{file} sha256 {served.sha256} "
                f"{served.size} bytes") in lines
    assert lines[-1] == "4 added, 0 already locked, 0 need a source"
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    summary = json.loads(as_json.stdout)
    assert summary["written"] is False
    assert [e["path"] for e in summary["added"]] == list(QWEN_EDIT)
    assert not lock.exists()
    assert list(tmp_path.iterdir()) == [workflow]


def test_rerun_on_a_locked_lock_adds_nothing_and_asks_nothing(hub: Hub, tmp_path: Path) -> None:
    workflow = _write(tmp_path, "wf", template("image_qwen_image_edit_2509"))
    lock = tmp_path / "models.lock.json"
    assert _from_workflow(hub, workflow, lock).returncode == 0
    before = (lock.read_bytes(), lock.stat().st_mtime_ns)
    hub.server.reset_counters()

    again = _from_workflow(hub, workflow, lock, "--json")

    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["written"]) == ([], False)
    assert summary["already_locked"] == list(QWEN_EDIT)
    assert (lock.read_bytes(), lock.stat().st_mtime_ns) == before
    assert hub.server.requests() == []


def test_a_model_name_nobody_declares_exits_1_until_it_is_locked(hub: Hub,
                                                                tmp_path: Path) -> None:
    sd15 = hub.server.add_file("Comfy-Org/stable-diffusion-v1-5-archive",
                               "v1-5-pruned-emaonly-fp16.safetensors", safetensors_bytes(40))
    finetune = hub.server.add_url("my_finetune.safetensors", safetensors_bytes(50, seed=5))
    wf = template("default")
    loader = next(n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["widgets_values"] = ["my_finetune.safetensors"]  # declaration left as it was
    workflow = _write(tmp_path, "wf", wf)
    lock = tmp_path / "models.lock.json"

    first = _from_workflow(hub, workflow, lock)

    assert first.returncode == 1, first.stderr[-3000:]
    assert (f"needs a source: my_finetune.safetensors (node {loader['id']}); pin it with "
            "`comfy-worker lock add SOURCE --path FOLDER/my_finetune.safetensors`"
            ) in first.stdout
    assert first.stdout.splitlines()[-1].startswith("1 added, 0 already locked, 1 need a source")
    assert load_lock(lock).entry("checkpoints/v1-5-pruned-emaonly-fp16.safetensors"
                                 ).sha256 == sd15.sha256  # the declared one was locked

    added = _cli(hub, "lock", "add", finetune.url, "--path",
                 "checkpoints/my_finetune.safetensors", "--lock", str(lock))
    assert added.returncode == 0, added.stderr[-3000:]
    second = _from_workflow(hub, workflow, lock)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "needs a source" not in second.stdout
    assert second.stdout.splitlines()[-1] == "0 added, 1 already locked, 0 need a source"


def test_one_path_declared_with_two_sources_fails_naming_both(hub: Hub,
                                                              tmp_path: Path) -> None:
    wf = template("default")
    loader = next(n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple")
    first_url = loader["properties"]["models"][0]["url"]
    other_url = ("https://huggingface.co/someone-else/sd15-mirror/resolve/main/"
                 "v1-5-pruned-emaonly-fp16.safetensors")
    wf["nodes"].append({**loader, "id": 50, "outputs": [], "properties": {"models": [
        {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
         "url": other_url}]}})
    lock = tmp_path / "models.lock.json"

    proc = _from_workflow(hub, _write(tmp_path, "wf", wf), lock)

    assert proc.returncode == 1, proc.stdout
    message = proc.stderr
    assert '"checkpoints/v1-5-pruned-emaonly-fp16.safetensors" is declared with two sources' \
        in message
    assert f"{first_url} (node {loader['id']})" in message
    assert f"{other_url} (node 50)" in message
    assert not lock.exists()
    assert hub.server.requests() == []  # refused before asking the Hub anything


# --- declared hashes (newer templates: properties.models[].hash / hash_type) -------------


def _declare(wf: dict[str, Any], node_id: int, name: str, directory: str, url: str,
             sha256: str | None, hash_type: str = "SHA256") -> None:
    node = next(n for n in wf["nodes"] if n["id"] == node_id)
    entry = {"name": name, "url": url, "directory": directory}
    if sha256 is not None:
        entry |= {"hash": sha256, "hash_type": hash_type}
    node.setdefault("properties", {})["models"] = [entry]


def test_a_declared_sha256_is_checked_against_the_hub_and_spares_url_downloads(
        hub: Hub, tmp_path: Path) -> None:
    lfs = hub.server.add_file("o/declared", "a.safetensors", safetensors_bytes(30, seed=31))
    plain = hub.server.add_file("o/declared", "b.safetensors", safetensors_bytes(20, seed=32),
                                lfs=False)
    url = hub.server.add_url("c.safetensors", safetensors_bytes(40, seed=33))
    wf = template("default")
    _declare(wf, 4, "a.safetensors", "checkpoints",
             "https://huggingface.co/o/declared/resolve/main/a.safetensors",
             lfs.sha256.upper())           # templates write hex in either case
    next(n for n in wf["nodes"] if n["id"] == 4)["widgets_values"] = ["a.safetensors"]
    wf["nodes"].append({"id": 60, "type": "VAELoader", "mode": 0, "inputs": [],
                        "outputs": [], "widgets_values": ["b.safetensors"], "properties": {}})
    _declare(wf, 60, "b.safetensors", "vae",
             "https://huggingface.co/o/declared/resolve/main/b.safetensors", plain.sha256)
    wf["nodes"].append({"id": 61, "type": "LoraLoaderModelOnly", "mode": 0, "inputs": [],
                        "outputs": [], "widgets_values": ["c.safetensors", 1],
                        "properties": {}})
    _declare(wf, 61, "c.safetensors", "loras", url.url, url.sha256)
    lock = tmp_path / "models.lock.json"

    proc = _from_workflow(hub, _write(tmp_path, "wf", wf), lock, "--json")

    assert proc.returncode == 0, proc.stderr[-3000:]
    added = {e["path"]: e for e in json.loads(proc.stdout)["added"]}
    assert added["checkpoints/a.safetensors"]["sha256"] == lfs.sha256
    assert (added["vae/b.safetensors"]["sha256"], added["vae/b.safetensors"]["size"]) == (
        plain.sha256, plain.size)
    assert added["loras/c.safetensors"] == {
        "path": "loras/c.safetensors", "source": {"type": "url", "url": url.url},
        "sha256": url.sha256, "size": url.size}
    for served in (lfs, plain, url):      # metadata only: the declared sha256 was used
        assert hub.server.bytes_served(served) == 0, served.key
    assert {e.path: e.sha256 for e in load_lock(lock).models} == {
        p: e["sha256"] for p, e in added.items()}


def test_a_declared_sha256_the_hub_contradicts_is_refused_naming_both(
        hub: Hub, tmp_path: Path) -> None:
    """hidream_e1_full (comfyui-workflow-templates 0.11.41) declares the SHA256 of each of
    its files; served with other bytes, the first one it meets is refused, nothing is
    written and nothing downloaded."""
    wf = template("hidream_e1_full")
    declared = [m for n in wf["nodes"] for m in (n.get("properties") or {}).get("models", [])]
    assert declared and all(m["hash_type"] == "SHA256" for m in declared)
    first = declared[0]
    repo_path = first["url"].split("/resolve/main/")[1]
    served = hub.server.add_file("Comfy-Org/HiDream-I1_ComfyUI", repo_path,
                                 safetensors_bytes(16, seed=41))
    lock = tmp_path / "models.lock.json"

    proc = _from_workflow(hub, _write(tmp_path, "wf", wf), lock)

    assert proc.returncode == 1, proc.stdout
    node_id = next(n["id"] for n in wf["nodes"]
                   if first in (n.get("properties") or {}).get("models", []))
    assert f"has sha256 {served.sha256}, but the workflow declares {first['hash']} " \
        f"(node {node_id})" in proc.stderr
    assert not lock.exists()
    assert hub.server.bytes_served(served) == 0


def test_a_url_whose_download_contradicts_the_declared_sha256_is_refused(
        hub: Hub, tmp_path: Path) -> None:
    """A server that tells no size (no Content-Length, no ranges): the file is hashed by
    one download, then checked against the declaration."""
    url = hub.server.add_url("d.safetensors", safetensors_bytes(12, seed=51), ranges=False)
    url.faults.no_length = True
    wf = template("default")
    wrong = "0" * 64
    _declare(wf, 4, "d.safetensors", "checkpoints", url.url, wrong)
    next(n for n in wf["nodes"] if n["id"] == 4)["widgets_values"] = ["d.safetensors"]
    lock = tmp_path / "models.lock.json"

    proc = _from_workflow(hub, _write(tmp_path, "wf", wf), lock)

    assert proc.returncode == 1, proc.stdout
    assert f"has sha256 {url.sha256}, but the workflow declares {wrong} (node 4)" \
        in proc.stderr
    # the size probe (HEAD, then a GET it does not read) and the one hashing download
    assert [(r.method, r.range) for r in hub.server.requests(url)] == [
        ("HEAD", None), ("GET", "bytes=0-0"), ("GET", None)]
    assert not lock.exists()


def test_a_declared_sha256_the_lock_contradicts_is_refused_and_the_lock_kept(
        hub: Hub, tmp_path: Path) -> None:
    served = hub.server.add_file("o/declared", "e.safetensors", safetensors_bytes(10, seed=61))
    wf = template("default")
    url = "https://huggingface.co/o/declared/resolve/main/e.safetensors"
    _declare(wf, 4, "e.safetensors", "checkpoints", url, served.sha256)
    next(n for n in wf["nodes"] if n["id"] == 4)["widgets_values"] = ["e.safetensors"]
    lock = tmp_path / "models.lock.json"
    assert _from_workflow(hub, _write(tmp_path, "wf", wf), lock).returncode == 0
    before = lock.read_bytes()
    hub.server.reset_counters()
    other = "f" * 64
    _declare(wf, 4, "e.safetensors", "checkpoints", url, other)

    proc = _from_workflow(hub, _write(tmp_path, "wf2", wf), lock)

    assert proc.returncode == 1, proc.stdout
    assert f'"checkpoints/e.safetensors" is locked with sha256 {served.sha256}, but the ' \
        f"workflow declares {other} (node 4)" in proc.stderr
    assert lock.read_bytes() == before
    assert hub.server.requests() == []


def test_a_url_locked_with_a_wrong_declared_sha256_is_refused_by_sync_naming_both(
        hub: Hub, tmp_path: Path) -> None:
    """A URL whose size the server tells is locked with the declared sha256 and no
    download; the bytes are checked when sync fetches them, and a contradiction fails
    there, naming both hashes, with nothing placed."""
    url = hub.server.add_url("w.safetensors", safetensors_bytes(12, seed=71))
    wf = template("default")
    wrong = "1" * 64
    _declare(wf, 4, "w.safetensors", "checkpoints", url.url, wrong)
    next(n for n in wf["nodes"] if n["id"] == 4)["widgets_values"] = ["w.safetensors"]
    lock = tmp_path / "models.lock.json"
    assert _from_workflow(hub, _write(tmp_path, "wf", wf), lock).returncode == 0
    assert [e.sha256 for e in load_lock(lock).models] == [wrong]
    assert hub.server.bytes_served(url) == 0
    models = tmp_path / "models"

    sync = _cli(hub, "sync", extra_env={"COMFY_WORKER_LOCK": str(lock),
                                        "COMFY_WORKER_MODELS_DIR": str(models)})

    assert sync.returncode != 0
    assert wrong in sync.stderr and url.sha256 in sync.stderr, sync.stderr[-3000:]
    assert not (models / "checkpoints" / "w.safetensors").exists()
