"""Which locked models a workflow uses, and the folder markers that tell loaders apart."""

from __future__ import annotations

from pathlib import Path

from comfy_worker.job.models import needed_entries
from comfy_worker.lockfile import LockEntry, UrlSource
from comfy_worker.sync.folder_markers import (
    EMPTY_SAFETENSORS,
    folder_of_marker,
    loader_folders,
    marker_name,
    without_markers,
    write_markers,
)


def entry(path: str) -> LockEntry:
    return LockEntry(path=path, source=UrlSource(url=f"https://h/{path}"), sha256="a" * 64,
                     size=1)


LOCK = [entry("checkpoints/sd_xl_turbo_1.0_fp16.safetensors"),
        entry("checkpoints/flux/x.safetensors"), entry("loras/flux/x.safetensors"),
        entry("upscale_models/4x.pth"), entry("vae/unused.safetensors")]


def test_a_workflow_needs_exactly_the_locked_files_its_string_inputs_name() -> None:
    wf = {"4": {"class_type": "CheckpointLoaderSimple",
                "inputs": {"ckpt_name": "sd_xl_turbo_1.0_fp16.safetensors"}},
          "5": {"class_type": "LoraLoader", "inputs": {"lora_name": "flux\\x.safetensors",
                                                       "model": ["4", 0]}},
          "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "4x.pth is a file"}}}
    assert [e.path for e in needed_entries(wf, LOCK)] == [
        "checkpoints/sd_xl_turbo_1.0_fp16.safetensors", "checkpoints/flux/x.safetensors",
        "loras/flux/x.safetensors"]  # a name locked in two folders counts for both


def test_nothing_is_needed_when_no_input_names_a_locked_file() -> None:
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                      "filename_prefix": "x.safetensors"}}}
    assert needed_entries(wf, LOCK) == ()


def test_markers_name_their_folder_and_are_hidden_from_option_lists(tmp_path: Path) -> None:
    assert folder_of_marker(marker_name("checkpoints")) == "checkpoints"
    assert folder_of_marker("sub/" + marker_name("loras")) == "loras"
    assert folder_of_marker("model.safetensors") is None
    options = [marker_name("clip"), "t5.safetensors", marker_name("text_encoders")]
    assert loader_folders(options) == {"clip", "text_encoders"}
    assert without_markers(options) == ["t5.safetensors"]
    root = write_markers(tmp_path / "markers", ["checkpoints", "loras"])
    made = root / "checkpoints" / marker_name("checkpoints")
    assert made.read_bytes() == EMPTY_SAFETENSORS
    write_markers(root, ["checkpoints"])  # idempotent
    assert sorted(p.name for p in root.rglob("*.safetensors")) == [
        marker_name("checkpoints"), marker_name("loras")]


def test_the_marker_is_a_valid_empty_safetensors_file(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    path = tmp_path / "m.safetensors"
    path.write_bytes(EMPTY_SAFETENSORS)
    assert load_file(str(path)) == {}
