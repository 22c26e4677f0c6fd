"""The Comfy API v2 on the wire (pure): what a request may hold and what an answer looks
like, exactly as comfy-sdk 0.5.0 (its ``comfy_low`` models and exceptions) reads them.

Every field here comes from a stranger, so each parser bounds and checks it and raises a
:class:`~comfy_worker.errors.WorkerError` naming the field, the value (never a secret)
and the fix; :func:`error_body` turns any error into the contract's envelope
``{"error": {"code", "message", "details"}}`` whose ``code`` the SDK types on.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import mimetypes
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from comfy_worker.config import Secret, env_name
from comfy_worker.errors import (
    IdempotencyKeyReuse,
    InvalidCursor,
    InvalidMetadataFilter,
    JobInputInvalid,
    MetadataInvalid,
    MissingAsset,
    RequestInvalid,
    WorkerError,
    WorkflowFormatUi,
)
from comfy_worker.job.events import JobEvent, NodeProgress, ReadaheadProgress, WaitProgress
from comfy_worker.job.request import api_key_of
from comfy_worker.jsontypes import json_type_name

PREFIX = "/api/v2"
RETRY_AFTER_SECONDS = 10
STATUSES = ("queued", "running", "succeeded", "canceling", "canceled", "failed", "expired")
TERMINAL = frozenset({"succeeded", "canceled", "failed", "expired"})

# --- errors: the envelope and its codes --------------------------------------------------

CODES = {
    "request-invalid": "invalid_request",
    "job-input-invalid": "invalid_workflow",
    "workflow-invalid": "invalid_workflow",
    "workflow-conversion-failed": "invalid_workflow",
    "job-not-found": "not_found",
    "asset-not-found": "not_found",
    "request-too-large": "payload_too_large",
    "worker-start-failed": "deployment_stopped",
}
"""Our references whose v2 code is not the reference with ``_`` for ``-``."""
STATUSES_BY_CODE = {"deployment_stopped": 422}
"""Where the contract gives a code another status than our error class carries
(``deployment_stopped``: a terminal state no retry fixes)."""


def error_code(err: WorkerError) -> str:
    return CODES.get(err.reference, err.reference.replace("-", "_"))


def error_status(err: WorkerError) -> int:
    return STATUSES_BY_CODE.get(error_code(err), err.status)


def error_body(err: WorkerError) -> dict[str, Any]:
    """The contract's error envelope; ``details`` carries our reference, hint and the
    structured details (e.g. one entry per failing node)."""
    details: dict[str, Any] = {"reference": err.reference}
    if err.hint:
        details["hint"] = err.hint
    if err.details:
        details["errors"] = list(err.details)
    return {"error": {"code": error_code(err), "message": err.message, "details": details}}


def error_headers(err: WorkerError) -> dict[str, str]:
    """``Retry-After`` (integer seconds) on 429 and 503: the SDK retries a 429 that
    carries it."""
    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if error_status(err) in (429, 503) \
        else {}


# --- ids, hashes, keys ----------------------------------------------------------------

MAX_ID_CHARS = 64


def new_id() -> str:
    return str(uuid.uuid4())


def canonical_id(text: str) -> str | None:
    """A job or asset id as this worker mints them (a UUID, lowercase, with dashes), or
    None for anything else: such an id names nothing here."""
    if not isinstance(text, str) or len(text) > MAX_ID_CHARS:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


_BLAKE3 = re.compile(r"blake3:[0-9a-f]{64}")


def parse_hash(raw: object, *, where: str) -> str:
    """``blake3:<64 hex>`` (hex case-insensitive), lowercased."""
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text is None or not _BLAKE3.fullmatch(text):
        shown = _shown(raw)
        raise RequestInvalid(f"{where} is {shown}, not a blake3 hash",
                             hint='send "blake3:" followed by the 64 hex digits of the '
                             "content's BLAKE3 digest")
    return text


MAX_IDEMPOTENCY_KEY_CHARS = 255


def parse_idempotency_key(raw: str | None) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 printable ASCII characters, or absent."""
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_IDEMPOTENCY_KEY_CHARS or not raw.isascii() or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise RequestInvalid(
            f"the Idempotency-Key header is not 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable "
            f"ASCII characters ({len(raw)} characters)",
            hint="send a fresh UUID per submission, or leave the header out")
    return raw


def key_reused(key: str) -> IdempotencyKeyReuse:
    return IdempotencyKeyReuse(
        "this Idempotency-Key was already used: keys are single-use and a reuse is "
        "refused, never replayed",
        hint="poll or list your jobs (GET /api/v2/jobs) for the job the first request made, "
        "and send a new key with a new submission",
        details=[{"idempotency_key_chars": len(key)}])


def _shown(raw: object, limit: int = 80) -> str:
    """A stranger's value for a message: JSON, cut at ``limit`` characters."""
    if isinstance(raw, str):
        text = json.dumps(raw[:limit]) + ("..." if len(raw) > limit else "")
        return text
    if isinstance(raw, bool | int | float) or raw is None:
        return json.dumps(raw)
    return json_type_name(raw)


# --- job labels (metadata) -------------------------------------------------------------

MAX_LABELS = 16
MAX_LABEL_KEY_CHARS = 40
MAX_LABEL_VALUE_BYTES = 256
MAX_LABEL_FILTERS = 3
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_FORBIDDEN = re.compile("[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]")


def label_problem(key: object, value: object) -> str | None:
    """Why one label breaks the contract's rules, or None."""
    if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
        return (f"key {_shown(key)} is not 1 to {MAX_LABEL_KEY_CHARS} characters of "
                "A-Z a-z 0-9 _ - .")
    if not isinstance(value, str):
        return f"the value of {key!r} is {json_type_name(value)}, not a string"
    if len(value.encode("utf-8")) > MAX_LABEL_VALUE_BYTES:
        return f"the value of {key!r} is over {MAX_LABEL_VALUE_BYTES} bytes in UTF-8"
    if _FORBIDDEN.search(value):
        return (f"the value of {key!r} holds a control or bidirectional formatting "
                "character")
    return None


def parse_labels(raw: object) -> dict[str, str]:
    """A job's ``metadata``: at most 16 string labels (none when absent or null)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise MetadataInvalid(f'field "metadata" is {json_type_name(raw)}, expected an '
                              "object of string labels",
                              hint='send {"client": "acme", "batch": "7"}, or leave it out')
    if len(raw) > MAX_LABELS:
        raise MetadataInvalid(f'field "metadata" has {len(raw)} labels, over the limit of '
                              f"{MAX_LABELS}", hint=f"keep at most {MAX_LABELS} labels")
    for key, value in raw.items():
        problem = label_problem(key, value)
        if problem is not None:
            raise MetadataInvalid(f'field "metadata": {problem}',
                                  hint="keys are 1-40 of A-Z a-z 0-9 _ - .; values are "
                                  "strings of at most 256 UTF-8 bytes without control "
                                  "characters")
    return dict(raw)


# --- POST /jobs ------------------------------------------------------------------------

RESERVED_FIELDS = ("webhook_url", "inputs")
EXTENSION_FIELDS = ("models", "timeout")
"""Ours beyond the contract, passed to the job input as they are (a job's own models,
its timeout) and checked by the job's own rules."""


@dataclass(frozen=True)
class Submission:
    """A v2 job request, checked for shape (its assets are resolved by the job registry)."""

    workflow: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    api_key: Secret | None = None
    """``extra_data.api_key_comfy_org``: never stored with the job, never shown."""
    extensions: dict[str, Any] = field(default_factory=dict)


def is_ui_format(workflow: Mapping[str, Any]) -> bool:
    """The editor's own "Save" format (nodes and links), not an API prompt."""
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def parse_submission(body: object) -> Submission:
    if not isinstance(body, Mapping):
        raise RequestInvalid(f"the request body is a JSON {json_type_name(body)}, not an "
                             "object", hint='send {"workflow": {...API format...}}')
    reserved = [name for name in RESERVED_FIELDS if body.get(name) is not None]
    if reserved:
        raise RequestInvalid(f"field {reserved[0]!r} is reserved by the Comfy API v2 and not "
                             "accepted", hint=f"leave out {', '.join(reserved)}")
    workflow = body.get("workflow")
    if workflow is None:
        raise JobInputInvalid('field "workflow" is missing',
                              hint='send {"workflow": {...}}: the API-format graph ("Export '
                              '(API)" in the editor)')
    if not isinstance(workflow, dict):
        raise JobInputInvalid(f'field "workflow" is {json_type_name(workflow)}, expected an '
                              "object", hint="send the API-format graph as a JSON object")
    if is_ui_format(workflow):
        raise WorkflowFormatUi(
            "the workflow is in the editor's UI format (nodes and links); the Comfy API v2 "
            "takes the API format", hint='export it with "Export (API)" in the editor, '
            "convert it with `comfy-worker workflow convert`, or send it as it is to "
            "POST /generate, which converts it")
    return Submission(workflow=workflow, labels=parse_labels(body.get("metadata")),
                      api_key=parse_extra_data(body.get("extra_data")),
                      extensions={k: body[k] for k in EXTENSION_FIELDS if k in body})


def parse_extra_data(raw: object) -> Secret | None:
    """The contract's closed ``extra_data``: only ``api_key_comfy_org``, a string."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RequestInvalid(f'field "extra_data" is {json_type_name(raw)}, expected an '
                             "object", hint='send {"api_key_comfy_org": "comfyui-..."}, or '
                             "leave it out")
    others = sorted(str(k)[:40] for k in raw if k != "api_key_comfy_org")
    if others:
        raise RequestInvalid(f'field "extra_data" accepts only "api_key_comfy_org", not '
                             f"{', '.join(repr(o) for o in others[:5])}",
                             hint="send the partner-node key as extra_data.api_key_comfy_org")
    key = raw.get("api_key_comfy_org")
    if key is None:
        return None
    secret = api_key_of(key) if isinstance(key, str) else None
    if secret is None:
        what = json_type_name(key) if not isinstance(key, str) else f"{len(key)} characters"
        raise RequestInvalid(f'field "extra_data.api_key_comfy_org" is not a key ({what})',
                             hint="send the Comfy API key (comfyui-...) as a string")
    return secret


# --- core/ASSET references ------------------------------------------------------------

ASSET_TYPE = "core/ASSET"
MAX_REF_DEPTH = 16
MAX_ASSETS_PER_JOB = 64


@dataclass(frozen=True)
class AssetRef:
    node_id: str
    input_name: str
    asset_id: str


def is_asset_ref(value: object) -> bool:
    return isinstance(value, Mapping) and value.get("__type") == ASSET_TYPE


def find_asset_refs(workflow: Mapping[str, Any]) -> list[AssetRef]:
    """Every ``core/ASSET`` reference in the nodes' inputs (nested in lists or objects
    too). A malformed one (no ``info``, no ``info.id``, an id that is no UUID) raises
    :class:`MissingAsset` naming the node and input; the ids are canonical."""
    refs: list[AssetRef] = []
    bad: list[dict[str, Any]] = []

    def walk(value: object, node_id: str, name: str, depth: int) -> None:
        if depth > MAX_REF_DEPTH:
            return
        if is_asset_ref(value):
            info = value.get("info")  # type: ignore[union-attr]
            raw = info.get("id") if isinstance(info, Mapping) else None
            asset_id = canonical_id(raw) if isinstance(raw, str) else None
            if asset_id is None:
                bad.append({"node_id": node_id, "input": name, "id": _shown(raw, 64)})
            else:
                refs.append(AssetRef(node_id, name, asset_id))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v, node_id, name, depth + 1)
        elif isinstance(value, list):
            for v in value:
                walk(v, node_id, name, depth + 1)

    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if isinstance(inputs, Mapping):
            for name, value in inputs.items():
                walk(value, str(node_id), str(name), 0)
    if bad:
        first = bad[0]
        raise MissingAsset(
            f"node {first['node_id']} input {first['input']!r}: a core/ASSET reference "
            f"needs info.id, the asset's id (got {first['id']})",
            hint='reference an asset as {"__type": "core/ASSET", "info": {"id": "<the id '
            'POST /api/v2/assets answered>"}}', details=bad[:20])
    if len({r.asset_id for r in refs}) > MAX_ASSETS_PER_JOB:
        raise MissingAsset(f"the workflow references {len({r.asset_id for r in refs})} "
                           f"assets, over the limit of {MAX_ASSETS_PER_JOB} per job",
                           hint="use fewer input assets per job")
    return refs


def missing_assets(refs: Iterable[AssetRef]) -> MissingAsset:
    refs = list(refs)
    first = refs[0]
    return MissingAsset(
        f"node {first.node_id} input {first.input_name!r}: no asset {first.asset_id} on "
        f"this worker ({len(refs)} unresolved reference(s))",
        hint=f"upload it first (POST /api/v2/assets; assets expire after "
        f"{env_name('asset_ttl')} and may be evicted under {env_name('assets_max_bytes')})",
        details=[{"node_id": r.node_id, "input": r.input_name, "id": r.asset_id}
                 for r in refs[:20]])


def with_assets(workflow: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """``workflow`` (a copy) with each ``core/ASSET`` reference replaced by the file name
    ComfyUI loads its bytes under (``names``: asset id → name)."""

    def sub(value: object, depth: int) -> object:
        if depth > MAX_REF_DEPTH:
            return value
        if is_asset_ref(value):
            info = value.get("info")  # type: ignore[union-attr]
            asset_id = canonical_id(info.get("id")) if isinstance(info, Mapping) else None
            return names.get(asset_id, value)  # type: ignore[arg-type]
        if isinstance(value, Mapping):
            return {k: sub(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, depth + 1) for v in value]
        return value

    out = copy.deepcopy(dict(workflow))
    for node in out.values():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            node["inputs"] = {k: sub(v, 0) for k, v in node["inputs"].items()}
    return out


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def input_name(asset_id: str, file_path: str | None, content_type: str) -> str:
    """The file name an asset is uploaded to ComfyUI's input folder under: unique (its
    id), a plain name (no folder, not hidden), and keeping the extension loaders read."""
    base = _UNSAFE_NAME.sub("_", (file_path or "").rsplit("/", 1)[-1]).strip("._")
    stem, dot, ext = base.partition(".")
    if not dot or len(ext) > 16:
        ext = (mimetypes.guess_extension(content_type) or ".").lstrip(".")
    return f"asset-{asset_id}-{stem[:64] or 'asset'}" + (f".{ext}" if ext else "")


# --- uploads ----------------------------------------------------------------------------

MAX_FILE_PATH_CHARS = 512
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/"
                           r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}( *;[ -~]{0,200})?")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def parse_file_path(raw: object) -> str:
    """An asset's ``file_path``: a relative name (``photo.png``, ``in/photo.png``) kept as
    its label and for the extension; never used as a path on this machine."""
    if not isinstance(raw, str) or not raw.strip():
        raise RequestInvalid(f'field "file_path" is {_shown(raw)}, expected a file name',
                             hint='send the file\'s name, e.g. "photo.png"')
    text = raw.strip()
    parts = text.replace("\\", "/").split("/")
    if (len(text) > MAX_FILE_PATH_CHARS or text.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", text) or any(p in ("", ".", "..") for p in parts)
            or not text.isprintable()):
        raise RequestInvalid(
            f'field "file_path" {_shown(text)} is not a relative file name',
            hint=f"send a name like \"photo.png\" or \"inputs/photo.png\": at most "
            f"{MAX_FILE_PATH_CHARS} printable characters, no leading '/', no '..' or empty "
            "segments")
    return text


def parse_content_type(raw: object, file_path: str | None) -> str:
    """A MIME type as sent (``image/png``), else guessed from ``file_path``."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        guessed = mimetypes.guess_type(file_path or "")[0]
        return guessed or DEFAULT_CONTENT_TYPE
    if not isinstance(raw, str) or not _CONTENT_TYPE.fullmatch(raw.strip()):
        raise RequestInvalid(f'field "content_type" {_shown(raw)} is not a MIME type',
                             hint='send a type like "image/png", or leave it out')
    return raw.strip()


# --- the job list ----------------------------------------------------------------------

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 100


@dataclass(frozen=True)
class ListQuery:
    statuses: frozenset[str] | None = None
    limit: int = DEFAULT_LIST_LIMIT
    before: int | None = None
    """Only jobs submitted before the one with this sequence number (the cursor)."""
    labels: tuple[tuple[str, str], ...] = ()


_LABEL_FILTER = re.compile(r"metadata\[(.*)\]")


def parse_list_query(params: Iterable[tuple[str, str]]) -> ListQuery:
    """``status`` (comma-separated, repeatable), ``limit`` (1-100), ``cursor`` and
    ``metadata[KEY]=VALUE`` filters (at most 3)."""
    statuses: set[str] = set()
    limit = DEFAULT_LIST_LIMIT
    before: int | None = None
    labels: list[tuple[str, str]] = []
    for name, value in params:
        if name == "status":
            statuses.update(s.strip() for s in value.split(",") if s.strip())
        elif name == "limit":
            if not re.fullmatch(r"\d{1,4}", value.strip()) or not \
                    1 <= int(value) <= MAX_LIST_LIMIT:
                raise RequestInvalid(f"limit={_shown(value)} is not a number from 1 to "
                                     f"{MAX_LIST_LIMIT}",
                                     hint=f"send limit=1..{MAX_LIST_LIMIT} (default "
                                     f"{DEFAULT_LIST_LIMIT})")
            limit = int(value)
        elif name == "cursor":
            before = decode_cursor(value)
        elif (match := _LABEL_FILTER.fullmatch(name)) is not None:
            problem = label_problem(match.group(1), value)
            if problem is not None:
                raise InvalidMetadataFilter(f"metadata filter: {problem}",
                                            hint="filter on labels as they were given")
            labels.append((match.group(1), value))
    unknown = sorted(statuses - set(STATUSES))
    if unknown:
        raise RequestInvalid(f"status={_shown(','.join(unknown))} is not a job status",
                             hint=f"filter on {', '.join(STATUSES)} (comma-separated)")
    if len(labels) > MAX_LABEL_FILTERS:
        raise InvalidMetadataFilter(f"{len(labels)} metadata filters, over the limit of "
                                    f"{MAX_LABEL_FILTERS}",
                                    hint=f"filter on at most {MAX_LABEL_FILTERS} labels")
    return ListQuery(frozenset(statuses) or None, limit, before, tuple(labels))


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii") \
            if len(text) <= 64 else ""
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    match = re.fullmatch(r"v1:(\d{1,18})", raw)
    if match is None:
        raise InvalidCursor(f"cursor={_shown(text)} was not issued by this worker",
                            hint="pass the next_cursor of the previous page as it was, or "
                            "leave it out for the first page")
    return int(match.group(1))


# --- answers -------------------------------------------------------------------------------


def iso(ts: float) -> str:
    """An epoch time as ISO 8601 with its time zone (the SDK requires one)."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def progress_json(event: JobEvent | None) -> dict[str, Any] | None:
    """A job's progress event as the contract's ``Progress`` snapshot: the value of the
    running prompt, and a message while it waits for its models or reads them."""
    if isinstance(event, NodeProgress):
        label = event.class_type or (f"node {event.node}" if event.node else None)
        step = int(event.step) if event.step is not None else None
        steps = int(event.max) if event.max is not None else None
        message = f"{label} {step}/{steps}" if label and step is not None and steps \
            else label
        return {"value": min(1.0, max(0.0, event.percent / 100.0)),
                "nodes_done": event.nodes_done, "nodes_total": event.nodes_total,
                "current_node": event.node, "current_node_class": event.class_type,
                "step": step, "steps": steps, "message": message}
    if isinstance(event, WaitProgress):
        waiting = ", ".join(event.waiting_for[:3])
        return {"value": 0.0, "nodes_done": 0, "nodes_total": 0,
                "message": f"fetching models: {event.files_done}/{event.files_total} files, "
                f"{event.bytes_done / 1e6:.1f}/{event.bytes_total / 1e6:.1f} MB at "
                f"{event.bytes_per_s / 1e6:.1f} MB/s" + (f" ({waiting})" if waiting else "")}
    if isinstance(event, ReadaheadProgress):
        return {"value": 0.0, "nodes_done": 0, "nodes_total": 0,
                "message": f"reading models into memory: {event.bytes_done / 1e6:.1f}/"
                f"{event.bytes_total / 1e6:.1f} MB"}
    return None


OUTPUT_KINDS = {"image": "image", "video": "video", "audio": "audio", "text": "text"}


def output_kind(name: str, content_type: str, *, video: bool = False) -> str:
    """The contract's output ``type``: image, video, audio, text or file."""
    if video:
        return "video"
    major = content_type.split("/", 1)[0]
    if name.lower().endswith((".latent",)):
        return "latent"
    return OUTPUT_KINDS.get(major, "file")


def job_error_json(err: WorkerError) -> dict[str, Any]:
    """A failed job's ``error``: the code, the message, the node when one failed, and
    (ours) the hint and details."""
    node_id = class_type = traceback = None
    for item in err.details:
        if isinstance(item, Mapping):
            node_id = node_id or _text(item.get("node_id"))
            class_type = class_type or _text(item.get("class_type") or item.get("node_type"))
            traceback = traceback or _traceback(item.get("traceback"))
    code = error_code(err)
    if code == "workflow_execution_error":
        code = "node_execution_error"
    out: dict[str, Any] = {"code": code, "message": err.message, "node_id": node_id,
                           "class_type": class_type, "traceback": traceback,
                           "reference": err.reference}
    if err.hint:
        out["hint"] = err.hint
    if err.details:
        out["details"] = list(err.details)
    return out


def _text(value: object) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) \
        else None


def _traceback(value: object) -> str | None:
    if isinstance(value, list):
        return "".join(str(v) for v in value)[-8000:] or None
    return value[-8000:] if isinstance(value, str) and value else None
