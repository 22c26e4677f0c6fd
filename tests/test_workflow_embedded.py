"""The workflow ComfyUI embeds in the PNG/WEBP files it saves.

``tests/fixtures/workflows/images`` holds small images a real ComfyUI 0.3.75 saved
(EmptyImage → SaveImage / SaveAnimatedWEBP, queued with the "default" template as the
editor's workflow); the ``comfyui`` test makes fresh ones the same way.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from support.comfyui import comfyui_or_skip, run_prompt, running_comfyui
from support.workflow_cases import FIXTURES, template

from comfy_worker.errors import JobInputInvalid
from comfy_worker.workflow.embedded import embedded_texts, workflow_from_image

IMAGES = FIXTURES / "images"
PROMPT = {
    "1": {"class_type": "EmptyImage",
          "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0x3366CC}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "wf"}},
    "3": {"class_type": "SaveAnimatedWEBP",
          "inputs": {"images": ["1", 0], "filename_prefix": "wfanim", "fps": 4.0,
                     "lossless": True, "quality": 80, "method": "default"}},
}


def save_with_comfyui(dest: Path) -> dict[str, Path]:
    """Run PROMPT on a real ComfyUI; copy the PNG and WEBP it wrote into ``dest``."""
    with running_comfyui(comfyui_or_skip()) as comfy:
        run_prompt(comfy, PROMPT, extra_pnginfo={"workflow": template("default")})
        png = next(comfy.output_dir.glob("wf_*.png"))
        webp = next(comfy.output_dir.glob("wfanim_*.webp"))
        dest.mkdir(parents=True, exist_ok=True)
        out = {"png": dest / "saveimage.png", "webp": dest / "saveanimatedwebp.webp"}
        out["png"].write_bytes(png.read_bytes())
        out["webp"].write_bytes(webp.read_bytes())
        return out


def check_saved(png: bytes, webp: bytes) -> None:
    for data in (png, webp):
        assert workflow_from_image(data) == PROMPT         # the prompt wins
        texts = embedded_texts(data)
        assert json.loads(texts["workflow"]) == template("default")


def test_images_comfyui_saved_carry_prompt_and_workflow() -> None:
    check_saved((IMAGES / "saveimage.png").read_bytes(),
                (IMAGES / "saveanimatedwebp.webp").read_bytes())


@pytest.mark.comfyui
def test_fresh_images_from_a_real_comfyui(tmp_path: Path) -> None:
    made = save_with_comfyui(tmp_path)
    check_saved(made["png"].read_bytes(), made["webp"].read_bytes())


# --- other writers' chunk kinds ----------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png_with(*chunks: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunks)
            + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


UI = {"nodes": [], "links": [], "version": 0.4, "note": "Grüße ✓"}


def test_workflow_only_png_gives_the_ui_workflow() -> None:
    data = png_with(chunk(b"tEXt", b"workflow\0" + json.dumps(UI).encode("latin-1",
                                                                             "replace")))
    assert workflow_from_image(data)["nodes"] == []


@pytest.mark.parametrize("compressed", [False, True])
def test_itxt_chunks_are_read(compressed: bool) -> None:
    text = json.dumps(UI, ensure_ascii=False).encode("utf-8")
    body = b"workflow\0" + bytes([int(compressed), 0]) + b"\0\0" + (
        zlib.compress(text) if compressed else text)
    assert workflow_from_image(png_with(chunk(b"iTXt", body))) == UI


def test_ztxt_and_animated_png_comf_chunks_are_read() -> None:
    z = chunk(b"zTXt", b"workflow\0\0" + zlib.compress(json.dumps(UI).encode()))
    assert workflow_from_image(png_with(z))["version"] == 0.4
    comf = chunk(b"comf", b"prompt\0" + json.dumps({"1": {"class_type": "X"}}).encode())
    assert workflow_from_image(png_with(comf)) == {"1": {"class_type": "X"}}


def webp_with_exif(entries: list[tuple[int, str]], *, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    head = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(e + "I", 8)
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd, blobs = struct.pack(e + "H", len(entries)), b""
    for tag, text in entries:
        raw = text.encode("utf-8") + b"\0"
        ifd += struct.pack(e + "HHII", tag, 2, len(raw), data_at + len(blobs))
        blobs += raw
    exif = b"Exif\0\0" + head + ifd + struct.pack(e + "I", 0) + blobs
    body = b"WEBP" + b"VP8L" + struct.pack("<I", 5) + b"\x2f\0\0\0\0\0"
    body += b"EXIF" + struct.pack("<I", len(exif)) + exif + (b"\0" if len(exif) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("big_endian", [False, True])
def test_webp_exif_prompt_and_workflow(big_endian: bool) -> None:
    data = webp_with_exif([(0x010F, "workflow:" + json.dumps(UI)),
                           (0x0110, 'prompt:{"7": {"class_type": "Y"}}')],
                          big_endian=big_endian)
    assert workflow_from_image(data) == {"7": {"class_type": "Y"}}
    assert json.loads(embedded_texts(data)["workflow"]) == UI


@pytest.mark.parametrize(("data", "message"), [
    (png_with(), "no embedded workflow"),
    (webp_with_exif([(0x010E, "just a description")]), "no embedded workflow"),
    (b"GIF89a....", "not a PNG or WEBP"),
    (png_with(chunk(b"tEXt", b"prompt\0{broken")), "not valid JSON"),
    (png_with(chunk(b"tEXt", b"prompt\0[1, 2]")), "not a JSON object"),
])
def test_images_without_a_usable_workflow_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(JobInputInvalid, match=message) as err:
        workflow_from_image(data)
    assert err.value.hint


def test_truncated_png_keeps_what_it_read() -> None:
    data = png_with(chunk(b"tEXt", b"workflow\0" + json.dumps(UI).encode()))
    cut: Any = data[: data.index(b"IDAT") + 6]
    assert workflow_from_image(cut)["version"] == 0.4
