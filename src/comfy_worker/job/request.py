"""A job's ``input`` → a validated :class:`JobRequest` (pure).

The job input is the one of runpod-workers/worker-comfyui, so its users switch without
changes::

    {"workflow": {...API or UI format...} | "<the same as a JSON string>",
     "images": [{"name": "in.png", "image": "<base64, data: URI prefix allowed>"},
                {"name": "b.png", "url": "https://host/b.png"}],     # or by URL
     "timeout": 120,                                    # optional, seconds
     "models": [{"path": "loras/u123.safetensors",         # optional: models the job
                 "source": {"type": "url", "url": "https://..."},   # brings, each a lock
                 "sha256": "<64 hex>", "size": 1234}],              # entry
     "comfy_org_api_key": "comfyui-..."}     # optional: partner (API) nodes' key

The whole input may also be that object as a JSON string (worker-comfyui's clients send
it so). Images given by URL are fetched later (:mod:`comfy_worker.job.inputs`).

Everything in a job is a stranger's input, bounded here before anything acts on it
(:class:`JobLimits`): at most ``COMFY_WORKER_MAX_JOB_IMAGES`` images and
``COMFY_WORKER_MAX_JOB_MODELS`` models, and every URL passes the URL policy's early
check (http(s), no literal address that is not public; :mod:`comfy_worker.net.policy`),
naming the field of the first one that does not.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from comfy_worker.config import Secret, Settings, env_name
from comfy_worker.errors import JobInputInvalid, LockfileError
from comfy_worker.jsontypes import MAX_DEPTH, json_text, json_type_name, loads, nested_deeper_than
from comfy_worker.lockfile import KNOWN_FOLDERS, LockEntry, UrlSource, parse_entries
from comfy_worker.net.policy import UrlPolicy, url_not_allowed
from comfy_worker.net.redact import redact_url
from comfy_worker.workflow.convert import is_ui_workflow
from comfy_worker.workflow.load import parse_workflow_json, validate_api_prompt


@dataclass(frozen=True)
class InputImage:
    name: str
    data: bytes = b""
    url: str | None = None
    """Where to fetch the bytes (``data`` is empty until then)."""


@dataclass(frozen=True)
class JobRequest:
    workflow: dict[str, Any]
    images: tuple[InputImage, ...] = ()
    timeout: float = 600.0
    models: tuple[LockEntry, ...] = ()
    """Models the job brings (lock entries, validated by the lock's rules)."""
    comfy_org_api_key: Secret | None = None
    """The key partner (API) nodes authenticate with, for ComfyUI's prompt
    (``extra_data.api_key_comfy_org``); never shown."""


@dataclass(frozen=True)
class JobLimits:
    """What a job may ask for (from the settings)."""

    max_images: int = 64
    max_models: int = 32
    max_timeout: float = 3600.0
    """Most seconds a job may ask for (a caller's ``timeout`` holds the one-job queue)."""
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    """The URL policy for the job's URLs (public addresses only, plus the operator's
    exceptions)."""

    @classmethod
    def of(cls, settings: Settings) -> JobLimits:
        return cls(max_images=settings.max_job_images, max_models=settings.max_job_models,
                   max_timeout=max(settings.max_job_timeout, settings.job_timeout),
                   policy=UrlPolicy.of(settings.url_allow))


_DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_IMAGE_NAME_BYTES = 200


def validate_image_name(name: object, *, where: str) -> str:
    """A plain file name: no folders, no ``..``, not hidden."""
    if not isinstance(name, str) or not name.strip():
        shown = json.dumps(name) if isinstance(name, str) else json_type_name(name)
        raise JobInputInvalid(f'{where}: field "name" is {shown}',
                              hint='give each image a file name, e.g. "input.png"')
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") \
            or _CONTROL.search(name):
        raise JobInputInvalid(
            f'{where}: field "name" {json_text(name, limit=120)} is not a plain file name',
            hint='use a name without "/", "\\", control characters or a leading "." (e.g. '
            '"input.png") and reference it by that name in the workflow\'s LoadImage node',
        )
    if len(name.encode("utf-8")) > MAX_IMAGE_NAME_BYTES:
        raise JobInputInvalid(
            f'{where}: field "name" is {len(name.encode("utf-8"))} bytes long, over the '
            f"{MAX_IMAGE_NAME_BYTES}-byte limit", hint="use a shorter file name")
    return name


def decode_base64_image(value: object, *, where: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        shown = "an empty string" if isinstance(value, str) else json_type_name(value)
        raise JobInputInvalid(f'{where}: field "image" is {shown}, expected a base64 '
                              "string", hint="send the file's bytes as base64")
    text = _DATA_URI.sub("", value.strip(), count=1)
    text = re.sub(r"\s+", "", text)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise JobInputInvalid(
            f'{where}: field "image" is not valid base64 (starts {value[:40]!r})',
            hint='send plain base64, optionally prefixed "data:image/png;base64,"',
        ) from None
    if not data:
        raise JobInputInvalid(f'{where}: field "image" decodes to 0 bytes',
                              hint="send the image's bytes")
    return data


def parse_workflow(raw: object) -> dict[str, Any]:
    """A workflow in API format, or in the editor's UI format (converted later, once the
    node definitions are at hand: :func:`comfy_worker.workflow.is_ui_workflow`), either as
    an object or as a JSON string; validated for shape."""
    doc = parse_workflow_json(raw)
    if doc is None:
        raise JobInputInvalid('field "workflow" is missing',
                              hint='send {"input": {"workflow": {...}}} (API or UI format)')
    if not isinstance(doc, dict):
        raise JobInputInvalid(f'field "workflow" is {json_type_name(doc)}, expected an '
                              "object", hint="send the workflow JSON (API format, or the "
                              "editor's Save format)")
    if is_ui_workflow(doc):
        return doc
    return validate_api_prompt(doc)


def _too_many(field: str, count: int, limit: int, setting: str) -> JobInputInvalid:
    return JobInputInvalid(
        f'field "{field}" has {count} entries; a job may have at most {limit}',
        hint=f"send fewer {field} per job (the worker's operator sets the limit with "
        f"{setting})", details=[{"field": field, "count": count, "limit": limit,
                                 "setting": setting}])


def parse_images(raw: object, limits: JobLimits | None = None) -> tuple[InputImage, ...]:
    limits = limits or JobLimits()
    if not raw:  # null, [], or left out
        return ()
    if not isinstance(raw, list):
        raise JobInputInvalid(f'field "images" is {json_type_name(raw)}, expected an array',
                              hint='send [{"name": "in.png", "image": "<base64>"}]')
    if len(raw) > limits.max_images:
        raise _too_many("images", len(raw), limits.max_images, env_name("max_job_images"))
    images: list[InputImage] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"images[{i}]"
        if not isinstance(item, Mapping):
            raise JobInputInvalid(f"{where} is {json_type_name(item)}, expected an object",
                                  hint='each image is {"name": "in.png", "image": "<base64>"}')
        name = validate_image_name(item.get("name"), where=where)
        if name in seen:
            raise JobInputInvalid(f'{where}: image name "{name}" is used twice',
                                  hint="give each image its own name")
        seen.add(name)
        image = _image(item, name, where)
        if image.url is not None:
            refusal = limits.policy.check_url(image.url)
            if refusal is not None:
                raise url_not_allowed(f'{where} ("{name}"): field "url"', image.url, refusal)
        images.append(image)
    return tuple(images)


def _image(item: Mapping[str, Any], name: str, where: str) -> InputImage:
    has_url, has_data = item.get("url") is not None, item.get("image") is not None
    if has_url and has_data:
        raise JobInputInvalid(f'{where} ("{name}") has both "image" and "url"',
                              hint="send the bytes as base64 in \"image\" or a link in "
                              "\"url\", not both")
    if has_url:
        return InputImage(name, url=validate_image_url(item["url"], where=where))
    return InputImage(name, decode_base64_image(item.get("image"), where=where))


def validate_image_url(url: object, *, where: str) -> str:
    if not isinstance(url, str) or not url.strip():
        shown = "an empty string" if isinstance(url, str) else json_type_name(url)
        raise JobInputInvalid(f'{where}: field "url" is {shown}',
                              hint="give an http:// or https:// URL of the image")
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        valid = bool(parts.hostname)
    except ValueError:
        parts, valid = None, False
    if (parts is None or not valid or parts.scheme.lower() not in ("http", "https")
            or _CONTROL.search(text) or " " in text or len(text) > MAX_URL_CHARS):
        raise JobInputInvalid(
            f'{where}: field "url" {redact_url(text)!r} is not an http(s) URL',
            hint="only http:// and https:// URLs (without spaces or control characters, "
            f"at most {MAX_URL_CHARS} characters) are fetched; send other images as "
            "base64 in \"image\"")
    return text


MAX_URL_CHARS = 8192


def parse_timeout(raw: object, default: float, limit: float = JobLimits.max_timeout
                  ) -> float:
    """A job's ``timeout``: positive seconds, at most ``limit`` (``Infinity`` and ``1e308``
    are a stranger holding the queue, and overflow every wait)."""
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
        shown = json.dumps(raw, default=str)
        raise JobInputInvalid(f'field "timeout" is {shown}',
                              hint="a positive number of seconds, or leave it out")
    if not raw <= limit:
        raise JobInputInvalid(
            f'field "timeout" is {raw:g} s, over the most this worker allows, {limit:g} s',
            hint=f"ask for at most {limit:g} s, or leave it out (the operator may raise "
            f"{env_name('max_job_timeout')})")
    return float(raw)


def parse_models(raw: object, *, folders: frozenset[str], limits: JobLimits | None = None
                 ) -> tuple[LockEntry, ...]:
    """A job's ``models``: lock entries, checked by exactly the lock's rules (folder, no
    absolute path, no ``..``, a 40-hex commit, 64-hex sha256, a size); a huggingface
    source may carry the job's own ``token``; a URL must pass the URL policy's early
    check."""
    limits = limits or JobLimits()
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise JobInputInvalid(f'field "models" is {json_type_name(raw)}, expected an array',
                              hint='send [{"path": "loras/x.safetensors", "source": {...}, '
                              '"sha256": "...", "size": N}]')
    if len(raw) > limits.max_models:
        raise _too_many("models", len(raw), limits.max_models, env_name("max_job_models"))
    try:
        entries = parse_entries(raw, where="models", folders=folders, job=True)
    except LockfileError as exc:
        raise JobInputInvalid(exc.message, hint=exc.hint) from None
    for i, entry in enumerate(entries):
        if isinstance(entry.source, UrlSource):
            refusal = limits.policy.check_url(entry.source.url)
            if refusal is not None:
                raise url_not_allowed(f'models[{i}] ("{entry.path}"): field "source.url"',
                                      entry.source.url, refusal)
    return entries


MAX_API_KEY_CHARS = 4096


def api_key_of(raw: str) -> Secret | None:
    """``raw`` as a partner-node key, blanks around it dropped; None when it is none:
    blank, longer than :data:`MAX_API_KEY_CHARS` as sent, or with unprintable characters.
    The one rule for the job input's ``comfy_org_api_key`` and the v2 API's
    ``extra_data.api_key_comfy_org``."""
    key = raw.strip()
    if not key or len(raw) > MAX_API_KEY_CHARS or not key.isprintable():
        return None
    return Secret(key)


def parse_comfy_org_api_key(raw: object, default: Secret | None) -> Secret | None:
    """worker-comfyui's ``comfy_org_api_key``: the job's own key for partner (API) nodes,
    else ``default`` (COMFY_ORG_API_KEY). Messages name the field and the type or length,
    never the value."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        raise JobInputInvalid(f'field "comfy_org_api_key" is {json_type_name(raw)}, '
                              "expected a string", hint="send the Comfy API key as a string, "
                              "or leave the field out")
    key = api_key_of(raw)
    if key is None:
        raise JobInputInvalid(f'field "comfy_org_api_key" is not a key ({len(raw.strip())} '
                              "characters, or unprintable ones)",
                              hint="send the Comfy API key (comfyui-...) as it was issued")
    return key


def _json_object(raw: object, *, where: str) -> Mapping[str, Any]:
    """``raw`` as an object: itself, or decoded from a JSON string of one."""
    if isinstance(raw, str):
        try:
            raw = loads(raw)
        except ValueError as exc:
            raise JobInputInvalid(f"{where} is a string but not valid JSON: {exc}",
                                  hint='send {"workflow": {...}} as an object, or as a JSON '
                                  "string of one") from None
    if not isinstance(raw, Mapping):
        raise JobInputInvalid(f"{where} is a JSON {json_type_name(raw)}, not an object",
                              hint='send {"input": {"workflow": {...}}} or {"workflow": {...}}')
    return raw


def job_input_of(body: object, *, where: str = 'job "input"') -> Mapping[str, Any]:
    """The job input a request carries, whatever its wrapping: every edge (HTTP, RunPod,
    Vast, ``run``, job files) reads a body through this one function.

    ``{"input": X}`` gives X (RunPod's shape, and worker-comfyui's), anything else is the
    input itself; the body, and X, may each be a JSON string of the object (worker-comfyui's
    clients send the input so). A job input never has a field named ``input``, so a bare
    input passes through unchanged. Raises :class:`JobInputInvalid` naming ``where``."""
    if nested_deeper_than(body, MAX_DEPTH):
        raise JobInputInvalid(f"{where}: arrays or objects nested deeper than {MAX_DEPTH} "
                              "levels", hint="send a ComfyUI workflow as it was saved")
    doc = _json_object(body, where=where)
    if "input" in doc:
        doc = _json_object(doc["input"], where="'input'")
    return doc


def parse_job_input(raw: object, *, default_timeout: float,
                    folders: frozenset[str] = KNOWN_FOLDERS,
                    limits: JobLimits | None = None,
                    default_api_key: Secret | None = None) -> JobRequest:
    """Validate a job (its input, or a body around it: :func:`job_input_of`). Raises
    :class:`JobInputInvalid` (or ``UrlNotAllowed`` for a URL the policy refuses).
    ``folders``: the model folders a job's ``models`` may use (ComfyUI's and the lock's
    ``extra_folders``); ``limits``: counts and the URL policy (default: the defaults);
    ``default_api_key``: the partner-node key of a job that brings none
    (COMFY_ORG_API_KEY)."""
    doc = job_input_of(raw)
    return JobRequest(workflow=parse_workflow(doc.get("workflow")),
                      images=parse_images(doc.get("images"), limits),
                      timeout=parse_timeout(doc.get("timeout"), default_timeout,
                                            (limits or JobLimits()).max_timeout),
                      models=parse_models(doc.get("models"), folders=folders, limits=limits),
                      comfy_org_api_key=parse_comfy_org_api_key(
                          doc.get("comfy_org_api_key"), default_api_key))
