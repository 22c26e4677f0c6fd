"""One job: input → validated request → preflight → run on ComfyUI → collected outputs.

The job input is the one of runpod-workers/worker-comfyui, so its users switch without
changes::

    {"workflow": {...API format...} | "<the same as a JSON string>",
     "images": [{"name": "in.png", "image": "<base64, data: URI prefix allowed>"}],
     "timeout": 120}                                    # optional, seconds

The result is ``{"images": [...], "videos": [...], "timings": {...}}`` or
``{"error": "...", "details": [...]}``. Decisions are small pure functions
(:func:`parse_job_input`, :func:`find_preflight_problems`, :func:`collect_output_files`,
:func:`check_inline_size`, the ``*_error`` builders); :class:`JobRunner` is the I/O edge
that drives ComfyUI.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from comfy_worker.comfy import events as ev
from comfy_worker.comfy.client import ComfyClient, EventStream, PromptResponse
from comfy_worker.errors import (
    ComfyDied,
    ComfyError,
    JobCancelled,
    JobError,
    JobInputInvalid,
    JobTimeout,
    OutputTooLarge,
    WorkerError,
    WorkflowExecutionError,
    WorkflowInvalid,
)

if TYPE_CHECKING:
    from comfy_worker.comfy.process import ComfyProcess
    from comfy_worker.config import Settings

log = logging.getLogger(__name__)

MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".gguf",
                    ".onnx", ".pkl")
VIDEO_EXTENSIONS = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
VIDEO_OUTPUT_KEYS = ("gifs", "videos", "video")
ABORT_GRACE_S = 30.0
"""After /interrupt, how long a prompt may take to stop before ComfyUI is restarted."""
WS_POLL_S = 0.25

ProgressFn = Callable[[dict[str, Any]], None]


# --- job input (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    name: str
    data: bytes


@dataclass(frozen=True)
class JobRequest:
    workflow: dict[str, Any]
    images: tuple[InputImage, ...] = ()
    timeout: float = 600.0


_DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.I)


def validate_image_name(name: object, *, where: str) -> str:
    """A plain file name: no folders, no ``..``, not hidden."""
    if not isinstance(name, str) or not name.strip():
        raise JobInputInvalid(f'{where}: field "name" is {name!r}',
                              hint='give each image a file name, e.g. "input.png"')
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") \
            or "\x00" in name:
        raise JobInputInvalid(
            f'{where}: field "name" {name!r} is not a plain file name',
            hint='use a name without "/", "\\" or a leading "." (e.g. "input.png") and '
            "reference it by that name in the workflow's LoadImage node",
        )
    return name


def decode_base64_image(value: object, *, where: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise JobInputInvalid(f'{where}: field "image" is {type(value).__name__}, expected a '
                              "base64 string", hint="send the file's bytes as base64")
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
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise JobInputInvalid(f'field "workflow" is a string but not valid JSON: {exc}',
                                  hint="send the workflow as a JSON object") from None
    if raw is None:
        raise JobInputInvalid('field "workflow" is missing',
                              hint='send {"input": {"workflow": {...API format...}}}')
    if not isinstance(raw, dict):
        raise JobInputInvalid(f'field "workflow" is {type(raw).__name__}, expected an object',
                              hint="send the workflow in ComfyUI's API format")
    if "nodes" in raw and "links" in raw:
        raise JobInputInvalid(
            'field "workflow" is in ComfyUI\'s UI format (it has "nodes" and "links")',
            hint='export it with "Export (API)" in ComfyUI (Workflow menu) and send that',
        )
    if not raw:
        raise JobInputInvalid('field "workflow" is empty', hint="send at least one node")
    for node_id, node in raw.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise JobInputInvalid(
                f'workflow node "{node_id}" has no "class_type"',
                hint='each node is {"class_type": "...", "inputs": {...}} (API format)',
            )
        if "inputs" in node and not isinstance(node["inputs"], dict):
            raise JobInputInvalid(f'workflow node "{node_id}": field "inputs" is '
                                  f'{type(node["inputs"]).__name__}, expected an object')
    return raw


def parse_job_input(raw: object, *, default_timeout: float) -> JobRequest:
    """Validate a job's ``input`` (pure). Raises :class:`JobInputInvalid`."""
    if not isinstance(raw, Mapping):
        raise JobInputInvalid(f'job "input" is {type(raw).__name__}, expected an object',
                              hint='send {"input": {"workflow": {...}}}')
    workflow = parse_workflow(raw.get("workflow"))
    images_raw = raw.get("images") or []
    if not isinstance(images_raw, list):
        raise JobInputInvalid(f'field "images" is {type(images_raw).__name__}, expected a list',
                              hint='send [{"name": "in.png", "image": "<base64>"}]')
    images: list[InputImage] = []
    seen: set[str] = set()
    for i, item in enumerate(images_raw):
        where = f"images[{i}]"
        if not isinstance(item, Mapping):
            raise JobInputInvalid(f"{where} is {type(item).__name__}, expected an object",
                                  hint='each image is {"name": "in.png", "image": "<base64>"}')
        name = validate_image_name(item.get("name"), where=where)
        if name in seen:
            raise JobInputInvalid(f'{where}: image name "{name}" is used twice',
                                  hint="give each image its own name")
        seen.add(name)
        images.append(InputImage(name, decode_base64_image(item.get("image"), where=where)))
    timeout = raw.get("timeout")
    if timeout is None:
        timeout = default_timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise JobInputInvalid(f'field "timeout" is {timeout!r}',
                              hint="a positive number of seconds, or leave it out")
    return JobRequest(workflow=workflow, images=tuple(images), timeout=float(timeout))


# --- preflight (pure) ---------------------------------------------------------------------


def combo_options(spec: object) -> list[str] | None:
    """The options of a COMBO input spec from ``/object_info``, else ``None``.

    Two spellings: ``[[opt, ...], {...}]`` (classic nodes) and
    ``["COMBO", {"options": [...]}]`` (v3 nodes).
    """
    if not isinstance(spec, list) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list):
        return [str(o) for o in head]
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return [str(o) for o in options] if isinstance(options, list) else []
    return None


def looks_like_model_file(value: object) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)


def locked_names(paths: Iterable[str]) -> frozenset[str]:
    """Lock paths (``folder/sub/x.safetensors``) → names a loader uses (``sub/x.safetensors``)."""
    return frozenset(p.split("/", 1)[1] for p in paths if "/" in p)


def _node_inputs_spec(info: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    inputs = info.get("input") or {}
    for group in ("required", "optional"):
        part = inputs.get(group)
        if isinstance(part, dict):
            spec.update(part)
    return spec


def find_preflight_problems(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    available_models: frozenset[str],
) -> list[dict[str, Any]]:
    """Every unknown ``class_type`` and every model file a loader names that is neither
    locked nor present, all at once (pure).

    A model input is a COMBO input (per ``/object_info``) whose value is a model file name
    (``.safetensors``, ``.ckpt``, ...). It is fine when ComfyUI lists it (present on disk)
    or when ``available_models`` (locked names, see :func:`locked_names`) has it.
    """
    problems: list[dict[str, Any]] = []
    for node_id, node in workflow.items():
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if info is None:
            problems.append({
                "node_id": str(node_id), "class_type": class_type, "type": "missing_node",
                "message": f'node type "{class_type}" is not installed in this ComfyUI',
            })
            continue
        specs = _node_inputs_spec(info)
        for input_name, value in (node.get("inputs") or {}).items():
            if not looks_like_model_file(value):
                continue
            options = combo_options(specs.get(input_name))
            if options is None:
                continue
            normalised = value.replace("\\", "/")
            if value in options or normalised in options or normalised in available_models:
                continue
            problems.append({
                "node_id": str(node_id), "class_type": class_type, "type": "missing_model",
                "input_name": input_name, "value": value,
                "message": f'model "{value}" (input "{input_name}") is not in the lock and '
                "not present",
            })
    return problems


JOB_MARKER_INPUT = "comfy_worker_job"


def mark_output_nodes(workflow: Mapping[str, Any], object_info: Mapping[str, Any],
                      marker: str) -> dict[str, Any]:
    """A copy of ``workflow`` whose output nodes carry an extra ``comfy_worker_job`` input.

    ComfyUI caches node results between prompts; an unchanged SaveImage would be served
    from the cache, pointing at the previous job's files (which cleanup removed). The
    extra input changes only the output nodes' cache keys, so they run (and write fresh
    files) while everything upstream is still cached. ComfyUI ignores inputs a node does
    not declare.
    """
    marked: dict[str, Any] = dict(workflow)
    for node_id, node in workflow.items():
        info = object_info.get(node.get("class_type"))
        if isinstance(info, dict) and info.get("output_node"):
            marked[node_id] = {**node, "inputs": {**(node.get("inputs") or {}),
                                                  JOB_MARKER_INPUT: marker}}
    return marked


def preflight_error(problems: list[dict[str, Any]]) -> WorkflowInvalid:
    nodes = sorted({p["class_type"] for p in problems if p["type"] == "missing_node"})
    models = sorted({p["value"] for p in problems if p["type"] == "missing_model"})
    parts = []
    if models:
        parts.append(f"{len(models)} missing model(s): {', '.join(models)}")
    if nodes:
        parts.append(f"{len(nodes)} unknown node type(s): {', '.join(nodes)}")
    hints = []
    if models:
        hints.append("add the models to models.lock.json (`comfy-worker lock add`)")
    if nodes:
        hints.append("install the custom nodes that provide the node types in the image")
    return WorkflowInvalid("workflow cannot run: " + "; ".join(parts),
                           hint=" and ".join(hints), details=problems)


# --- ComfyUI's answers → errors (pure) ------------------------------------------------------


def validation_error(resp: PromptResponse, workflow: Mapping[str, Any]) -> WorkflowInvalid:
    """``POST /prompt`` rejected the workflow: one detail per node error."""
    body = resp.body if isinstance(resp.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    details: list[dict[str, Any]] = []
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type") or (workflow.get(node_id) or {}).get("class_type")
        for err in entry.get("errors") or []:
            extra = err.get("extra_info") or {}
            details.append({
                "node_id": str(node_id), "class_type": class_type,
                "type": err.get("type"), "message": err.get("message"),
                "details": err.get("details"), "input_name": extra.get("input_name"),
            })
    if not details:
        text = body if isinstance(resp.body, dict) else str(resp.body)[:500]
        details.append({"node_id": None, "class_type": None,
                        "type": error.get("type") if error else None,
                        "message": error.get("message") if error else str(text),
                        "details": error.get("details") if error else None})
    summary = "; ".join(
        (f"node {d['node_id']} ({d['class_type']}): " if d["node_id"] else "")
        + f"{d['message']}" + (f": {d['details']}" if d.get("details") else "")
        for d in details[:5]
    )
    message = error.get("message") if error else None
    return WorkflowInvalid(
        f"ComfyUI rejected the workflow (HTTP {resp.status}): {summary}"
        if summary else f"ComfyUI rejected the workflow (HTTP {resp.status}): {message}",
        hint="fix the named node inputs; ComfyUI's own message is in details",
        details=details,
    )


def execution_error(event: ev.ExecutionError) -> WorkflowExecutionError:
    detail = {
        "node_id": event.node_id, "class_type": event.node_type,
        "type": event.exception_type, "message": event.exception_message,
        "traceback": list(event.traceback[-6:]),
    }
    return WorkflowExecutionError(
        f"node {event.node_id} ({event.node_type}) failed: {event.exception_type}: "
        f"{event.exception_message}",
        details=[detail],
    )


def error_response(exc: WorkerError) -> dict[str, Any]:
    """The job result for a failure: ``{"error", "details"}`` (+ ``reference``, ``hint``)."""
    out: dict[str, Any] = {"error": exc.message, "details": list(exc.details),
                           "reference": exc.reference}
    if exc.hint:
        out["hint"] = exc.hint
    return out


# --- outputs (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    filename: str
    subfolder: str
    kind: str
    """ComfyUI's folder type: "output" or "temp"."""
    video: bool


def collect_output_files(outputs: Mapping[str, Any]) -> list[OutputFile]:
    """Every file of every output node in ``/history``'s ``outputs`` (batches included).

    Videos: VideoHelperSuite's ``gifs``, native ``videos``/``video`` lists, ``images``
    flagged ``animated`` (SaveAnimatedWEBP/PNG, SaveVideo) and video file extensions.
    """
    files: list[OutputFile] = []
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        animated = node_output.get("animated")
        is_animated = isinstance(animated, list | tuple) and any(animated)
        for key, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                name = item["filename"]
                video = (key in VIDEO_OUTPUT_KEYS or is_animated
                         or name.lower().endswith(VIDEO_EXTENSIONS))
                files.append(OutputFile(str(node_id), name, str(item.get("subfolder") or ""),
                                        str(item.get("type") or "output"), video))
    return files


def base64_size(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n} bytes"


def check_inline_size(sizes: Iterable[int], limit: int) -> int:
    """Total base64 size of inline outputs; :class:`OutputTooLarge` above ``limit``."""
    sizes = list(sizes)
    total = sum(base64_size(s) for s in sizes)
    if total > limit:
        raise OutputTooLarge(
            f"outputs are {_size_text(total)} as base64 ({len(sizes)} file(s)), over the "
            f"{_size_text(limit)} limit for inline results",
            hint="configure S3 upload (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, "
            "BUCKET_SECRET_ACCESS_KEY), raise COMFY_WORKER_MAX_OUTPUT_BYTES, or return "
            "fewer/smaller images",
            details=[{"total_base64_bytes": total, "limit_bytes": limit,
                      "files": len(sizes)}],
        )
    return total


def progress_payload(*, node: str | None, class_type: str | None, step: float | None,
                     max_steps: float | None, nodes_done: int, nodes_total: int
                     ) -> dict[str, Any]:
    """What a progress update says: the node, its step/max and an overall percent."""
    fraction = 0.0
    if step is not None and max_steps:
        fraction = min(max(step / max_steps, 0.0), 1.0)
    total = max(nodes_total, 1)
    percent = round(min(100.0, 100.0 * (min(nodes_done, total) + fraction) / total), 1)
    return {"node": node, "class_type": class_type, "step": step, "max": max_steps,
            "percent": percent, "nodes_done": nodes_done, "nodes_total": nodes_total}


# --- S3 ---------------------------------------------------------------------------------------


def s3_region(endpoint_url: str) -> str | None:
    """The region in an AWS-style endpoint (``https://b.s3.eu-west-1.amazonaws.com``)."""
    match = re.search(r"[/.]s3[.-]([a-z0-9-]+)\.", endpoint_url)
    return match.group(1) if match and match.group(1) != "amazonaws" else None


class S3Uploader:
    """Outputs to an S3-compatible bucket, as worker-comfyui does (``BUCKET_*`` settings).

    Keys are ``{job_id}/{name}``; URLs are presigned for 7 days. boto3 is imported here
    only (``pip install comfy-worker[s3]``).
    """

    def __init__(self, settings: Settings) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise JobError("BUCKET_ENDPOINT_URL is set but boto3 is not installed",
                           hint="pip install 'comfy-worker[s3]'") from exc
        key_id = settings.bucket_access_key_id
        secret = settings.bucket_secret_access_key
        self.bucket = settings.bucket_name or time.strftime("%m-%y")
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.bucket_endpoint_url,
            aws_access_key_id=key_id.reveal() if key_id else None,
            aws_secret_access_key=secret.reveal() if secret else None,
            config=Config(signature_version="s3v4",
                          retries={"max_attempts": 3, "mode": "standard"}),
            region_name=s3_region(settings.bucket_endpoint_url or ""),
        )

    def upload(self, job_id: str, name: str, data: bytes) -> str:
        key = f"{job_id}/{uuid.uuid4().hex[:8]}-{name}"
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
            return str(self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=604800))
        except Exception as exc:  # botocore raises many unrelated types
            raise JobError(f"S3 upload of {name!r} to bucket {self.bucket!r} failed: {exc}",
                           hint="check BUCKET_ENDPOINT_URL, the bucket and the keys") from exc


# --- running a job on ComfyUI (I/O edge) -------------------------------------------------------


@dataclass
class _Follow:
    """What following a prompt's events saw."""

    error: ev.ExecutionError | None = None
    interrupted: bool = False
    executed: list[str] = field(default_factory=list)


class JobRunner:
    """Runs jobs on one supervised ComfyUI; keeps a websocket and ``/object_info`` per
    ComfyUI process (both renewed after a restart). One job at a time."""

    def __init__(self, settings: Settings, comfy: ComfyProcess,
                 lock_paths: Iterable[str] = ()) -> None:
        self.settings = settings
        self.comfy = comfy
        self.available_models = locked_names(lock_paths)
        self.client_id = uuid.uuid4().hex
        self._gen = -1
        self._client: ComfyClient | None = None
        self._stream: EventStream | None = None
        self._object_info: dict[str, Any] | None = None
        self._s3: S3Uploader | None = None
        self._lock = threading.Lock()

    # --- per-process state --------------------------------------------------------------

    def _connect(self) -> tuple[ComfyClient, EventStream]:
        self.comfy.wait_ready(timeout=self.settings.boot_timeout)
        gen = self.comfy.generation
        if gen != self._gen or self._client is None or self._stream is None:
            if self._stream is not None:
                self._stream.close()
            if self._client is not None:
                self._client.close()
            self._client = ComfyClient(self.comfy.base_url)
            self._stream = self._client.events(self.client_id)
            self._object_info = None
            self._gen = gen
        if not self._stream.connected:
            self._stream.connect()
        return self._client, self._stream

    def warm_up(self) -> None:
        """Read ``/object_info`` now (it takes a while), so the first job does not pay
        for it."""
        self.comfy.wait_ready(timeout=self.settings.boot_timeout)
        if self._gen != self.comfy.generation or self._client is None:
            self._client = ComfyClient(self.comfy.base_url)
            self._stream = self._client.events(self.client_id)
            self._gen = self.comfy.generation
        self._object_info = self._client.object_info()

    def _info(self, client: ComfyClient) -> dict[str, Any]:
        if self._object_info is None:
            self._object_info = client.object_info()
        return self._object_info

    def _went_away(self, gen: int, wait: float = 2.0) -> bool:
        """ComfyUI (generation ``gen``) is dead or dying: a refused or reset connection
        comes a moment before the process can be seen to have exited."""
        deadline = time.monotonic() + wait
        while True:
            if self.comfy.generation != gen or not self.comfy.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _died(self, gen: int) -> ComfyDied:
        message = self.comfy.exit_reason()
        return ComfyDied(
            f"ComfyUI stopped while running this job: {message}",
            hint="ComfyUI is being restarted; retry the job (if it died of memory, use "
            "smaller sizes or a bigger GPU)",
            details=[{"type": "comfyui_died", "generation": gen,
                      "log_tail": self.comfy.log_tail(15)}],
        )

    # --- the job ----------------------------------------------------------------------------

    def run(self, request: JobRequest, *, job_id: str | None = None,
            progress: ProgressFn | None = None,
            cancel: threading.Event | None = None) -> dict[str, Any]:
        with self._lock:
            return self._run(request, job_id or uuid.uuid4().hex[:12], progress, cancel)

    def _run(self, request: JobRequest, job_id: str, progress: ProgressFn | None,
             cancel: threading.Event | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        deadline = time.monotonic() + request.timeout
        timings: dict[str, float] = {}
        uploaded: list[str] = []
        outputs: list[OutputFile] = []
        prompt_id: str | None = None
        client: ComfyClient | None = None
        gen = self.comfy.generation
        try:
            for attempt in (1, 2):
                try:
                    client, stream = self._connect()
                    gen = self._gen
                    self._preflight(client, request.workflow)
                    t1 = time.perf_counter()
                    timings["preflight_ms"] = (t1 - t0) * 1000
                    for image in request.images:
                        uploaded.append(client.upload_image(image.name, image.data))
                    t2 = time.perf_counter()
                    timings["upload_ms"] = (t2 - t1) * 1000
                    prompt = mark_output_nodes(request.workflow, self._info(client), job_id)
                    resp = client.queue_prompt(prompt, self.client_id)
                    break
                except ComfyError:
                    # ComfyUI died before it took the prompt (e.g. between jobs, and the
                    # watchdog has not restarted it yet): nothing ran, so retry once.
                    if attempt == 2 or not self._went_away(gen):
                        raise
                    log.warning("job %s: ComfyUI went away before the prompt was queued; "
                                "retrying on the restarted ComfyUI", job_id)
                    uploaded.clear()
                    client = None
            prompt_id = resp.prompt_id
            if prompt_id is None:
                raise validation_error(resp, request.workflow)
            log.info("job %s: queued prompt %s", job_id, prompt_id)
            follow = self._follow(client, stream, prompt_id, request, gen, deadline,
                                  progress, cancel)
            t3 = time.perf_counter()
            timings["execution_ms"] = (t3 - t2) * 1000
            if follow.error is not None:
                raise execution_error(follow.error)
            if follow.interrupted:
                raise JobCancelled("ComfyUI interrupted the prompt (someone called "
                                   "/interrupt)", details=[{"prompt_id": prompt_id}])
            history = client.history(prompt_id).get(prompt_id) or {}
            outputs = collect_output_files(history.get("outputs") or {})
            result = self._deliver(client, job_id, outputs)
            t4 = time.perf_counter()
            timings["outputs_ms"] = (t4 - t3) * 1000
            timings["total_ms"] = (t4 - t0) * 1000
            result["timings"] = {k: round(v, 1) for k, v in timings.items()}
            return result
        except ComfyError as exc:
            if isinstance(exc, ComfyDied) or self._went_away(gen):
                err: WorkerError = exc if isinstance(exc, ComfyDied) else self._died(gen)
            else:
                err = exc
            log.warning("job %s failed: %s", job_id, err.message)
            return error_response(err)
        except JobError as exc:
            log.info("job %s failed: %s", job_id, exc.message)
            return error_response(exc)
        finally:
            if client is not None and self.comfy.generation == gen and self.comfy.alive():
                self._cleanup(client, prompt_id, uploaded, outputs)

    def _preflight(self, client: ComfyClient, workflow: Mapping[str, Any]) -> None:
        info = self._info(client)
        problems = find_preflight_problems(workflow, info, self.available_models)
        stale = {p["class_type"] for p in problems if p["type"] == "missing_model"}
        if stale:
            # Model lists in the cached /object_info may predate files added since.
            fresh = dict(info)
            for class_type in stale:
                fresh.update(client.object_info(class_type))
            self._object_info = fresh
            problems = find_preflight_problems(workflow, fresh, self.available_models)
        if problems:
            raise preflight_error(problems)

    def _follow(self, client: ComfyClient, stream: EventStream, prompt_id: str,
                request: JobRequest, gen: int, deadline: float,
                progress: ProgressFn | None, cancel: threading.Event | None) -> _Follow:
        seen = _Follow()
        workflow = request.workflow
        nodes_total = len(workflow)
        done: set[str] = set()
        current: str | None = None
        while True:
            if cancel is not None and cancel.is_set():
                self._abort(client, stream, prompt_id, gen)
                raise JobCancelled("job cancelled; ComfyUI was interrupted and its queue "
                                   "cleared", details=[{"prompt_id": prompt_id}])
            now = time.monotonic()
            if now >= deadline:
                self._abort(client, stream, prompt_id, gen)
                raise JobTimeout(
                    f"job timed out after {request.timeout:g} s; ComfyUI was interrupted "
                    "and its queue cleared",
                    hint='raise "timeout" in the job input or COMFY_WORKER_JOB_TIMEOUT',
                    details=[{"prompt_id": prompt_id, "timeout_s": request.timeout,
                              "node_id": current,
                              "class_type": (workflow.get(current) or {}).get("class_type")
                              if current else None}],
                )
            if self.comfy.generation != gen or not self.comfy.alive():
                raise self._died(gen)
            try:
                event = stream.next(min(WS_POLL_S, deadline - now))
            except ComfyError:
                if self._lost(client, stream, gen):
                    raise self._died(gen) from None
                if prompt_id in client.history(prompt_id):
                    return seen
                continue
            if event is None or event.prompt_id != prompt_id:
                continue
            if isinstance(event, ev.Executing):
                if event.node is None:
                    return seen
                if current is not None:
                    done.add(current)
                current = event.node
                self._report(progress, workflow, current, None, None, len(done), nodes_total)
            elif isinstance(event, ev.ExecutionCached):
                done.update(event.nodes)
            elif isinstance(event, ev.Progress):
                self._report(progress, workflow, event.node or current, event.value,
                             event.max, len(done), nodes_total)
            elif isinstance(event, ev.Executed):
                if event.node:
                    seen.executed.append(event.node)
            elif isinstance(event, ev.ExecutionError):
                seen.error = event
            elif isinstance(event, ev.ExecutionInterrupted):
                seen.interrupted = True

    @staticmethod
    def _report(progress: ProgressFn | None, workflow: Mapping[str, Any], node: str | None,
                step: float | None, max_steps: float | None, nodes_done: int,
                nodes_total: int) -> None:
        if progress is None:
            return
        class_type = (workflow.get(node) or {}).get("class_type") if node else None
        payload = progress_payload(node=node, class_type=class_type, step=step,
                                   max_steps=max_steps, nodes_done=nodes_done,
                                   nodes_total=nodes_total)
        try:
            progress(payload)
        except Exception:  # a progress sink must never fail the job
            log.exception("progress callback failed")

    def _lost(self, client: ComfyClient, stream: EventStream, gen: int) -> bool:
        """The websocket broke: True if ComfyUI is gone, else reconnect and go on."""
        for _ in range(20):
            if self.comfy.generation != gen or not self.comfy.alive():
                return True
            try:
                stream.connect(timeout=2)
                return False
            except ComfyError:
                time.sleep(0.1)
        return True

    def _abort(self, client: ComfyClient, stream: EventStream, prompt_id: str,
               gen: int) -> None:
        """Stop our prompt and anything queued, so nothing runs into the next job; if it
        will not stop within ABORT_GRACE_S, restart ComfyUI."""
        try:
            client.clear_queue()
            client.interrupt()
            deadline = time.monotonic() + ABORT_GRACE_S
            next_poll = 0.0
            while time.monotonic() < deadline:
                if self.comfy.generation != gen or not self.comfy.alive():
                    return
                try:
                    event = stream.next(WS_POLL_S)
                except ComfyError:
                    event = None
                    if self._lost(client, stream, gen):
                        return
                # ComfyUI sends executing(node=None) once the prompt left its queue
                # (execution_interrupted comes a moment earlier, while it still runs).
                if isinstance(event, ev.Executing) and event.node is None \
                        and event.prompt_id == prompt_id:
                    return
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + 1.0
                    if not _in_queue(client.queue(), prompt_id):
                        return
        except ComfyError as exc:
            log.warning("interrupting ComfyUI failed: %s", exc.message)
        log.error("prompt %s did not stop within %.0f s of /interrupt; restarting ComfyUI",
                  prompt_id, ABORT_GRACE_S)
        self.comfy.kill()

    def _deliver(self, client: ComfyClient, job_id: str,
                 files: list[OutputFile]) -> dict[str, Any]:
        wanted = [f for f in files if f.kind != "temp"]
        blobs = [client.view(f.filename, f.subfolder, f.kind) for f in wanted]
        use_s3 = bool(self.settings.bucket_endpoint_url)
        if not use_s3:
            check_inline_size((len(b) for b in blobs), self.settings.max_output_bytes)
        elif self._s3 is None:
            self._s3 = S3Uploader(self.settings)
        result: dict[str, Any] = {"images": [], "videos": []}
        for f, blob in zip(wanted, blobs, strict=True):
            if use_s3 and self._s3 is not None:
                item = {"filename": f.filename, "type": "s3_url",
                        "data": self._s3.upload(job_id, f.filename, blob)}
            else:
                item = {"filename": f.filename, "type": "base64",
                        "data": base64.b64encode(blob).decode("ascii")}
            item["node_id"] = f.node_id
            result["videos" if f.video else "images"].append(item)
        return result

    def _cleanup(self, client: ComfyClient, prompt_id: str | None, uploaded: list[str],
                 outputs: list[OutputFile]) -> None:
        """Remove this job's uploaded inputs, its output/temp files and its history."""
        cfg = self.comfy.cfg
        roots = {"input": cfg.input_dir, "output": cfg.output_dir, "temp": cfg.temp_dir}
        targets = [("input", name) for name in uploaded]
        targets += [(f.kind, str(PurePosixPath(f.subfolder) / f.filename) if f.subfolder
                     else f.filename) for f in outputs]
        for kind, rel in targets:
            root = roots.get(kind)
            if root is None:
                continue
            path = (root / rel).resolve()
            if path.is_relative_to(root.resolve()):
                path.unlink(missing_ok=True)
        if prompt_id is not None:
            try:
                client.delete_history(prompt_id)
            except ComfyError as exc:
                log.debug("could not delete history of %s: %s", prompt_id, exc.message)


def _in_queue(queue: Mapping[str, Any], prompt_id: str) -> bool:
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return True
    return False

