"""``comfy-worker workflow convert FILE [--object-info FILE|URL] [--out F]``.

Prints the API prompt ComfyUI's editor would queue for FILE (or writes it to ``--out``).
FILE is a workflow JSON (the editor's Save format or API format) or a PNG/WEBP that
ComfyUI saved (its embedded prompt, else its embedded workflow). A UI-format workflow
needs the node definitions: ``--object-info`` names a JSON file or a running ComfyUI
(``http://host:8188`` or its ``/object_info`` URL); without it the caller supplies an
object-info provider (e.g. one that starts ComfyUI).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from comfy_worker.atomic_write import write_text_atomic
from comfy_worker.config import Settings
from comfy_worker.errors import JobInputInvalid
from comfy_worker.workflow.embedded import PNG_SIGNATURE, workflow_from_image
from comfy_worker.workflow.load import api_prompt_from, json_type

log = logging.getLogger(__name__)

ObjectInfoProvider = Callable[[], Mapping[str, Any]]
HTTP_TIMEOUT = 60.0


def read_workflow_file(path: Path) -> dict[str, Any]:
    """The workflow in ``path``: a JSON document, or the one a PNG/WEBP embeds."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise JobInputInvalid(f"workflow file {str(path)!r}: {exc.strerror or exc}",
                              hint="pass an existing workflow JSON, PNG or WEBP") from None
    if data.startswith(PNG_SIGNATURE) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return workflow_from_image(data)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JobInputInvalid(f"workflow file {str(path)!r} is not JSON, PNG or WEBP: {exc}",
                              hint="pass the JSON the editor saved, or an image ComfyUI "
                              "saved") from None
    if not isinstance(doc, dict):
        raise JobInputInvalid(f"workflow file {str(path)!r} holds {json_type(doc)}, "
                              "expected an object", hint="pass a workflow JSON object")
    return doc


def object_info_from(source: str) -> Mapping[str, Any]:
    """``/object_info`` from a JSON file (``.gz`` too) or an http(s) URL of a running
    ComfyUI (its base URL or the ``/object_info`` URL itself)."""
    if source.startswith(("http://", "https://")):
        import requests

        url = source.rstrip("/")
        if not url.endswith("/object_info"):
            url += "/object_info"
        log.info("fetching node definitions from %s", url)
        try:
            resp = requests.get(url, timeout=HTTP_TIMEOUT)
            resp.raise_for_status()
            info = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise JobInputInvalid(f"--object-info {source}: {exc}",
                                  hint="pass the URL of a running ComfyUI (e.g. "
                                  "http://127.0.0.1:8188) or a saved /object_info JSON "
                                  "file") from None
    else:
        path = Path(source)
        try:
            raw = path.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            info = json.loads(raw.decode("utf-8"))
        except OSError as exc:
            raise JobInputInvalid(f"--object-info {source!r}: {exc.strerror or exc}",
                                  hint="pass a saved /object_info JSON file or a URL") from None
        except ValueError as exc:
            raise JobInputInvalid(f"--object-info {source!r} is not JSON: {exc}",
                                  hint="save it with: curl http://127.0.0.1:8188/object_info"
                                  " > object_info.json") from None
    if not isinstance(info, dict):
        raise JobInputInvalid(f"--object-info {source}: expected a JSON object of node "
                              f"definitions, got {json_type(info)}",
                              hint="pass ComfyUI's /object_info")
    return info


def started_comfyui_object_info(settings: Settings) -> Mapping[str, Any]:
    """Start ComfyUI as ``run`` does (COMFYUI_DIR, COMFYUI_PYTHON, ...), read its
    ``/object_info``, stop it."""
    import tempfile

    from comfy_worker.comfy.client import ComfyClient
    from comfy_worker.comfy.process import ComfyProcess, launch_config

    with tempfile.TemporaryDirectory(prefix="comfy-worker-convert-") as work:
        log.info("starting ComfyUI to read its node definitions (or pass --object-info)")
        proc = ComfyProcess(launch_config(settings, Path(work)))
        proc.start()
        try:
            client = ComfyClient(proc.base_url)
            try:
                return client.object_info()
            finally:
                client.close()
        finally:
            proc.stop()


def convert(args: argparse.Namespace, settings: Settings, *,
            object_info_provider: ObjectInfoProvider | None = None) -> int:
    """``workflow convert``: FILE → API prompt on stdout or in ``--out``.

    ``args``: ``file`` (path), ``object_info`` (str or None), ``out`` (path or None).
    ``object_info_provider`` is used when ``--object-info`` is not given and FILE is in
    UI format; it is called at most once, only if needed.
    """
    doc = read_workflow_file(Path(args.file))
    source = getattr(args, "object_info", None)
    provider: ObjectInfoProvider
    if source:
        def provider() -> Mapping[str, Any]:
            return object_info_from(str(source))
    else:
        provider = object_info_provider or (lambda: started_comfyui_object_info(settings))
    prompt = api_prompt_from(doc, provider)
    text = json.dumps(prompt, indent=2, ensure_ascii=False) + "\n"
    out = getattr(args, "out", None)
    if out:
        write_text_atomic(Path(out), text)
        log.info("wrote the API prompt (%d nodes) to %s", len(prompt), out)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
