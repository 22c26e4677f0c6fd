"""``POST /api/v2/assets``: one multipart/form-data body → the file part's bytes in a
:class:`~comfy_worker.entrypoints.api_v2.assets.BlobWriter` (hashed as they are
written) and the text fields, bounded: one file part, at most ``MAX_FIELDS`` text fields
of at most ``MAX_FIELD_BYTES`` each (python-multipart parses; nothing is buffered but the
small fields).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from comfy_worker.errors import RequestInvalid

MAX_FIELDS = 32
MAX_FIELD_BYTES = 4096
FIELDS = ("content_type", "file_path", "expected_hash", "tags")
"""The text fields comfy-sdk sends (``tags`` repeats); others are read (bounded) and
ignored."""


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...


@dataclass
class UploadForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file_parts: int = 0
    file_content_type: str | None = None

    def one(self, name: str) -> str | None:
        values = self.fields.get(name) or []
        if len(values) > 1:
            raise RequestInvalid(f'the form field "{name}" is sent {len(values)} times',
                                 hint="send it once")
        return values[0] if values else None


def _bad(why: str) -> RequestInvalid:
    return RequestInvalid(f"the upload is not a valid multipart/form-data body: {why}",
                          hint='send multipart/form-data with a "file" part and the '
                          '"file_path" (and optionally "content_type", "expected_hash") '
                          "fields")


def parse_upload(content_type: str | None, body: bytes, sink: Sink) -> UploadForm:
    """Parse ``body``; the ``file`` part's bytes go to ``sink`` as they are read."""
    media, params = parse_options_header(content_type or "")
    if media != b"multipart/form-data":
        raise _bad(f"Content-Type is {(content_type or 'missing')[:80]!r}")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise _bad("no boundary in the Content-Type")
    form = UploadForm()
    part: dict[str, object] = {}
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    text = bytearray()
    count = 0

    def on_part_begin() -> None:
        nonlocal count
        count += 1
        if count > MAX_FIELDS + 1:
            raise _bad(f"more than {MAX_FIELDS} fields")
        part.clear()
        headers.clear()
        text.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise _bad("a part has no name")
        part["name"] = name.decode("utf-8", "replace")
        if part["name"] == "file":
            form.file_parts += 1
            if form.file_parts > 1:
                raise _bad('more than one "file" part')
            raw_type = headers.get(b"content-type")
            form.file_content_type = raw_type.decode("latin-1").strip() if raw_type else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.get("name") == "file":
            sink.write(memoryview(data)[start:end])
            return
        if len(text) + end - start > MAX_FIELD_BYTES:
            raise _bad(f"field {part.get('name')!r} is over {MAX_FIELD_BYTES} bytes")
        text.extend(data[start:end])

    def on_part_end() -> None:
        name = str(part.get("name"))
        if name in FIELDS:
            try:
                value = text.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"field {name!r} is not UTF-8") from None
            form.fields.setdefault(name, []).append(value)

    callbacks: dict[str, Callable[..., None]] = {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise _bad(str(exc)[:200]) from None
    if parser.state != MultipartState.END:
        raise _bad("the body ends before its closing boundary")
    if form.file_parts == 0:
        raise _bad('no "file" part')
    return form
