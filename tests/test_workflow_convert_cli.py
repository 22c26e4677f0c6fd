"""`comfy-worker workflow convert` as a real subprocess, with the node definitions from a
saved ``/object_info`` file (the fixtures' snapshot): the output is the editor's own
prompt for the template. The URL form (a running ComfyUI) is in
tests/e2e/test_ui_workflows_e2e.py."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support.workflow_cases import FIXTURES, expected, template

from comfy_worker.workflow.embedded import embedded_texts

CLI = [sys.executable, "-m", "comfy_worker.cli"]
SNAPSHOT = FIXTURES / "object_info.json.gz"


def _convert(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFYUI_DIR", "COMFYUI_PYTHON")}  # it must not start a ComfyUI
    return subprocess.run([*CLI, "workflow", "convert", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["default", "01_qwen_t2i_subgraphed",
                                  "video_wan2_2_14B_i2v"])
def test_convert_with_a_saved_object_info_prints_the_editors_prompt(name: str,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text(json.dumps(template(name)))

    proc = _convert(["wf.json", "--object-info", str(SNAPSHOT)], tmp_path)

    assert proc.returncode == 0, proc.stderr[-3000:]
    prompt = expected(name)[0]
    got = json.loads(proc.stdout)
    assert got == prompt
    assert list(got) == list(prompt)


def _without_png_text(data: bytes, key: bytes) -> bytes:
    """``data`` (a PNG) without its ``tEXt`` chunk for ``key``."""
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if not (kind == b"tEXt" and data[pos + 8:end - 4].startswith(key + b"\0")):
            out += data[pos:end]
        pos = end
    return bytes(out)


def test_convert_reads_the_prompt_or_else_the_workflow_a_png_embeds(tmp_path: Path) -> None:
    saved = (FIXTURES / "images" / "saveimage.png").read_bytes()  # ComfyUI saved it
    workflow_only = _without_png_text(saved, b"prompt")
    assert "prompt" not in embedded_texts(workflow_only)
    (tmp_path / "workflow-only.png").write_bytes(workflow_only)
    out = tmp_path / "prompts" / "from-png.json"

    with_prompt = _convert(["saveimage.png", "--object-info", str(SNAPSHOT), "--out", str(out)],
                           FIXTURES / "images")
    assert with_prompt.returncode == 0, with_prompt.stderr[-3000:]
    assert with_prompt.stdout == ""
    assert json.loads(out.read_text()) == json.loads(embedded_texts(saved)["prompt"])

    from_workflow = _convert(["workflow-only.png", "--object-info", str(SNAPSHOT)], tmp_path)
    assert from_workflow.returncode == 0, from_workflow.stderr[-3000:]
    assert json.loads(from_workflow.stdout) == expected("default")[0]


def test_convert_of_a_ui_workflow_with_an_unknown_node_exits_1_naming_it(
        tmp_path: Path) -> None:
    wf = template("default")
    next(n for n in wf["nodes"] if n["id"] == 3)["type"] = "KSamplerFromACustomNode"
    (tmp_path / "wf.json").write_text(json.dumps(wf))

    proc = _convert(["wf.json", "--object-info", str(SNAPSHOT)], tmp_path)

    assert proc.returncode == 1, proc.stdout[-2000:]
    assert 'node 3 ("KSamplerFromACustomNode")' in proc.stderr
    assert proc.stdout == ""
