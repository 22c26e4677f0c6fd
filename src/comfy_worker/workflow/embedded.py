"""The workflow ComfyUI embeds in the images it saves (pure, standard library only).

- PNG (SaveImage, PreviewImage): ``tEXt`` chunks ``prompt`` (the API prompt that ran) and
  ``workflow`` (the editor's UI document), ``iTXt``/``zTXt`` when a writer chose those;
  animated PNG (SaveAnimatedPNG) writes ``comf`` chunks after the image data holding
  ``key\\0value``.
- WEBP (SaveAnimatedWEBP, SaveWEBP): EXIF tags in IFD0: ``0x0110`` (Model) holds
  ``prompt:{...}``, ``0x010F`` (Make) ``workflow:{...}``, further extra data counting down
  from there.

:func:`workflow_from_image` returns the API prompt when there is one (what ran, needs no
node definitions to convert), else the UI workflow.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from comfy_worker.errors import JobInputInvalid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KEYS = ("prompt", "workflow")
_MAX_INFLATE = 256 * 1024 * 1024


def workflow_from_image(data: bytes) -> dict[str, Any]:
    """The workflow embedded in a PNG or WEBP that ComfyUI saved: its ``prompt`` (API
    format) if present, else its ``workflow`` (UI format).

    Raises :class:`~comfy_worker.errors.JobInputInvalid` when the bytes are not a PNG/WEBP
    or carry no workflow.
    """
    texts = embedded_texts(data)
    for key in _KEYS:
        if key in texts:
            return _parse(key, texts[key])
    raise JobInputInvalid(
        "the image has no embedded workflow (no \"prompt\" or \"workflow\" metadata)",
        hint="use an image ComfyUI saved (SaveImage, SaveAnimatedWEBP) with metadata "
        "enabled (not --disable-metadata), or send the workflow JSON itself")


def embedded_texts(data: bytes) -> dict[str, str]:
    """Every ``key -> text`` ComfyUI-style metadata entry of a PNG or WEBP."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise JobInputInvalid(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if data.startswith(PNG_SIGNATURE):
        return _png_texts(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_texts(data)
    raise JobInputInvalid(
        f"not a PNG or WEBP image (starts with {data[:12]!r})",
        hint="pass a PNG or WEBP that ComfyUI saved, or a workflow JSON file")


def _parse(key: str, text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise JobInputInvalid(f'the image\'s embedded "{key}" is not valid JSON: {exc}',
                              hint="the metadata is damaged; send the workflow JSON") from None
    if not isinstance(doc, dict):
        raise JobInputInvalid(f'the image\'s embedded "{key}" is not a JSON object',
                              hint="send the workflow JSON itself")
    return doc


def _inflate(blob: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(blob, _MAX_INFLATE)
    if d.unconsumed_tail:
        raise JobInputInvalid("the image's compressed metadata is too large",
                              hint=f"metadata over {_MAX_INFLATE} bytes is not read")
    return out


def _png_texts(data: bytes) -> dict[str, str]:
    texts: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if len(body) < length:
            break                       # truncated file: keep what was read
        try:
            entry = _png_text_chunk(kind, body)
        except (ValueError, zlib.error, UnicodeDecodeError):
            continue                    # a damaged chunk: ignore it, like readers do
        if entry is not None and entry[0] not in texts:
            texts[entry[0]] = entry[1]
        if kind == b"IEND":
            break
    return texts


def _png_text_chunk(kind: bytes, body: bytes) -> tuple[str, str] | None:
    if kind == b"tEXt":
        key, _, text = body.partition(b"\0")
        return key.decode("latin-1"), text.decode("latin-1")
    if kind == b"comf":             # ComfyUI's animated PNG: key\0value after IDAT
        key, _, text = body.partition(b"\0")
        return key.decode("latin-1"), text.decode("latin-1")
    if kind == b"zTXt":
        key, _, rest = body.partition(b"\0")
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    if kind == b"iTXt":
        key, _, rest = body.partition(b"\0")
        if len(rest) < 2:
            return None
        compressed, rest = rest[0], rest[2:]
        _lang, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        raw = _inflate(text) if compressed else text
        return key.decode("latin-1"), raw.decode("utf-8")
    return None


def _webp_texts(data: bytes) -> dict[str, str]:
    texts: dict[str, str] = {}
    size = struct.unpack("<I", data[4:8])[0]
    end = min(len(data), 8 + size)
    pos = 12
    while pos + 8 <= end:
        kind = data[pos:pos + 4]
        length = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
        if kind == b"EXIF":
            for text in _exif_strings(body):
                key, sep, value = text.partition(":")
                if sep and key and key not in texts:
                    texts[key] = value
    return texts


def _exif_strings(blob: bytes) -> list[str]:
    """The text values of IFD0 of an EXIF/TIFF block."""
    if blob.startswith(b"Exif\0\0"):
        blob = blob[6:]
    if len(blob) < 8:
        return []
    order = blob[:2]
    if order == b"II":
        endian = "<"
    elif order == b"MM":
        endian = ">"
    else:
        return []
    try:
        offset = struct.unpack(endian + "I", blob[4:8])[0]
        count = struct.unpack(endian + "H", blob[offset:offset + 2])[0]
    except struct.error:
        return []
    out: list[str] = []
    for i in range(count):
        entry = blob[offset + 2 + 12 * i:offset + 14 + 12 * i]
        if len(entry) < 12:
            break
        _tag, typ, n = struct.unpack(endian + "HHI", entry[:8])
        if typ not in (1, 2, 7) or n == 0:
            continue
        raw = entry[8:8 + n] if n <= 4 else blob[
            struct.unpack(endian + "I", entry[8:12])[0]:
            struct.unpack(endian + "I", entry[8:12])[0] + n]
        raw = raw.rstrip(b"\0")
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(raw.decode("latin-1"))
    return out
