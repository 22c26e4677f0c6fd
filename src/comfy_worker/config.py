"""Every setting the worker reads, in one place: one table.

Nothing else in the package calls ``os.environ``: entrypoints build one frozen
:class:`Settings` with :func:`load_settings` (environment first, command-line flags over
it) and pass it down. Each setting is declared once, on its :class:`Settings` field
(:func:`setting`): its environment variable, the parser that reads it (naming the
variable or flag and the value it could not read) and its command-line flag, if any;
:data:`SETTINGS` is the table built from the fields, and :func:`env_name` gives a
field's variable for messages.
CLI flags go through the same parsers as the environment. README.md's settings table
lists every variable (a test checks it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.errors import ConfigError

DEFAULT_HF_ENDPOINT = "https://huggingface.co"


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --- parsers: (name, raw text) -> value; each names the variable/flag and the value ----

Parser = Callable[[str, str], Any]


def boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean", hint=f"set {name} to 1/true or 0/false")


def integer(minimum: int = 0) -> Parser:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer",
                              hint=f"set {name} to a whole number") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} is below {minimum}",
                              hint=f"set {name} >= {minimum}")
        return value
    return parse


def number(minimum: float = 0.0) -> Parser:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number",
                              hint=f"set {name} to a number of seconds") from None
        if value != value or value < minimum:  # NaN, or too small
            raise ConfigError(f"{name}={raw.strip()} is below {minimum:g}",
                              hint=f"set {name} >= {minimum:g}")
        return value
    return parse


def fraction(name: str, raw: str) -> float:
    value = number(0.0)(name, raw)
    if value > 1.0:
        raise ConfigError(f"{name}={raw.strip()} is above 1",
                          hint=f"set {name} to a fraction between 0 and 1, e.g. 0.5")
    return value


def choice(*options: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ConfigError(f"{name}={raw!r} is not one of {', '.join(options)}",
                              hint=f"set {name} to {' or '.join(options)}")
        return value
    return parse


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def byte_size(name: str, raw: str) -> int:
    """Bytes: a whole number, optionally with a unit (``500M``, ``20GiB``, ``1.5T``)."""
    text = raw.strip().lower().replace(" ", "")
    number_part = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number_part):]
    try:
        value = float(number_part)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0 or value != value:
        raise ConfigError(f"{name}={raw!r} is not a size in bytes",
                          hint=f"set {name} to a number of bytes, e.g. 500000000, 500M or "
                          "20GiB")
    return int(value * _UNITS[unit])


AllowItem = ipaddress.IPv4Network | ipaddress.IPv6Network | str


def allow_item(item: str) -> AllowItem:
    """One item of an allow list: a network (CIDR; an address is a /32 or /128) or a host
    name, lower-case (``*.suffix``: every name under ``suffix``). ValueError otherwise."""
    text = item.strip().lower()
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    name = text.removeprefix("*.").rstrip(".")
    labels = name.split(".")
    if not name or not all(0 < len(label) <= 63 and label.isascii()
                            and label.replace("-", "").isalnum()
                            and not label.startswith("-") for label in labels):
        raise ValueError(f"{item.strip()!r} is neither a network (CIDR) nor a host name")
    return text.rstrip(".")


def allow_list(name: str, raw: str) -> tuple[AllowItem, ...]:
    """Comma-separated networks and host names (:func:`allow_item`)."""
    items: list[AllowItem] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            items.append(allow_item(part))
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}",
                              hint=f"set {name} to comma-separated CIDRs or host names, "
                              "e.g. 10.1.0.0/16,models.internal,*.corp.example") from None
    return tuple(items)


def path(name: str, raw: str) -> Path:
    return Path(raw).expanduser()


def text(name: str, raw: str) -> str:
    return raw


def words(name: str, raw: str) -> tuple[str, ...]:
    return tuple(raw.split())


def endpoint(name: str, raw: str) -> str:
    return raw.rstrip("/")


def secret(name: str, raw: str) -> Secret:
    return Secret(raw.strip())


def present(name: str, raw: str) -> bool:
    return True


@dataclass(frozen=True)
class Setting:
    """One row of the table: where a value comes from and how it is read."""

    env: str
    field: str
    parse: Parser
    flag: str | None = None
    """The command-line flag that overrides the variable (``--jobs``), if any."""


P = "COMFY_WORKER_"


def setting(env: str, default: Any, parse: Parser, *, flag: str | None = None) -> Any:
    """A :class:`Settings` field read from ``env`` (and ``flag``) by ``parse``: each
    setting is declared once, on its field; :data:`SETTINGS` is built from the fields."""
    return dataclasses.field(default=default,
                             metadata={"env": env, "parse": parse, "flag": flag})


@dataclass(frozen=True)
class Settings:
    """The worker's configuration. Build it with :func:`load_settings`; each field's
    variable and flag are in :data:`SETTINGS`."""

    # --- models: lock → plan → fetch → verify → place -----------------------------
    lock_path: Path = setting(P + "LOCK", Path("models.lock.json"), path, flag="--lock")
    """The lock file to sync."""
    models_dir: Path = setting(P + "MODELS_DIR", Path("models"), path, flag="--models-dir")
    """Local ComfyUI models root (default ``$COMFYUI_DIR/models`` when COMFYUI_DIR is
    set, else ``./models``)."""
    volume: Path | None = setting(P + "VOLUME", None, path, flag="--volume")
    """Network volume root; models live in ``V/models``."""
    jobs: int = setting(P + "JOBS", 4, integer(1), flag="--jobs")
    """Files downloaded at once."""
    connections: int = setting(P + "CONNECTIONS", 8, integer(1))
    """Parallel byte ranges per file."""
    retries: int = setting(P + "RETRIES", 3, integer(0))
    """Attempts per file after the first (hash mismatch, 5xx, cut)."""
    stall_timeout: float = setting(P + "STALL_TIMEOUT", 60.0, number(1.0))
    """Seconds a download may receive nothing before it is restarted."""
    fast_verify: bool = setting(P + "FAST_VERIFY", False, boolean)
    """On the warm path, trust size + safetensors header instead of a full sha256 for
    files seen before (never for new downloads)."""
    sync_mode: str = setting(
        P + "SYNC_MODE", "on-demand", choice("on-demand", "all"), flag="--sync-mode")
    """``on-demand``: ready when ComfyUI is up; a job waits only for the models it uses,
    fetched first; the rest of the lock downloads in the background. ``all``: ready only
    once every locked model is present and verified."""
    prefetch: bool = setting(P + "PREFETCH", True, boolean)
    """On demand: download the rest of the lock in the background (lowest priority);
    False downloads only what jobs ask for."""
    model_wait_timeout: float = setting(P + "MODEL_WAIT_TIMEOUT", 1800.0, number(1.0))
    """Seconds a job may wait for its models (not counted in its execution timeout)."""
    model_cache_bytes: int = setting(P + "MODEL_CACHE_BYTES", 10 * 2**30, byte_size)
    """Bytes of models that jobs bring (``input.models``) kept on disk; least recently
    used first out, never a locked file, never one a running job uses."""
    readahead: bool = setting(P + "READAHEAD", True, boolean)
    """Read a job's model files into the page cache with large parallel reads before its
    prompt is queued (and the volume's locked files while ComfyUI boots), so ComfyUI's
    small reads hit memory instead of a slow network volume."""
    readahead_memory: float = setting(P + "READAHEAD_MEMORY", 0.5, fraction)
    """At most this fraction of available memory is filled by read-ahead."""
    hf_endpoint: str = setting("HF_ENDPOINT", DEFAULT_HF_ENDPOINT, endpoint)
    """Hugging Face endpoint (a mirror, or a test server)."""
    hf_token: Secret | None = setting("HF_TOKEN", None, secret)
    """Token for gated/private repos. Never printed."""

    # --- ComfyUI: launch → ready --------------------------------------------------
    comfyui_dir: Path | None = setting("COMFYUI_DIR", None, path, flag="--comfyui-dir")
    """The ComfyUI checkout holding ``main.py``."""
    comfyui_python: str = setting("COMFYUI_PYTHON", sys.executable, text)
    """The interpreter that runs ComfyUI (default: this one)."""
    comfyui_cpu: bool | None = setting("COMFYUI_CPU", None, boolean, flag="--cpu")
    """Force ``--cpu`` (True) or GPU (False); None: ``--cpu`` when no GPU is seen."""
    comfyui_extra_args: tuple[str, ...] = setting("COMFYUI_EXTRA_ARGS", (), words)
    """Extra ``main.py`` arguments, split on whitespace."""
    work_dir: Path | None = setting(P + "WORK_DIR", None, path)
    """ComfyUI's input/output/temp dirs (default: a temp dir)."""
    boot_timeout: float = setting("COMFYUI_BOOT_TIMEOUT", 300.0, number(1.0))
    """Seconds to wait for ComfyUI to answer /system_stats."""
    warmup: Path | None = setting(P + "WARMUP", None, path)
    """A JSON job input run once after start-up, before the worker reports ready (its
    failure fails start-up)."""

    # --- jobs: job → validate → run → collect ---------------------------------------
    job_timeout: float = setting(P + "JOB_TIMEOUT", 600.0, number(0.1))
    """Default seconds per job (``input.timeout`` overrides)."""
    max_job_timeout: float = setting(P + "MAX_JOB_TIMEOUT", 3600.0, number(1.0))
    """Most seconds a job's ``input.timeout`` may ask for (at least ``job_timeout``)."""
    max_output_bytes: int = setting(P + "MAX_OUTPUT_BYTES", 20 * 1024 * 1024, integer(1))
    """Total base64 output allowed inline."""
    input_url_max_bytes: int = setting(P + "INPUT_URL_MAX_BYTES", 50 * 1024 * 1024, byte_size)
    """Largest input image fetched from a URL (``images[].url``)."""
    input_url_timeout: float = setting(P + "INPUT_URL_TIMEOUT", 60.0, number(0.1))
    """Seconds one input image given by URL may take in all (connect, redirects, body);
    every image of a job is also fetched within the job's own ``timeout``."""
    max_job_images: int = setting(P + "MAX_JOB_IMAGES", 64, integer(0))
    """Most entries a job's ``images`` may have."""
    max_job_models: int = setting(P + "MAX_JOB_MODELS", 32, integer(0))
    """Most entries a job's ``models`` may have."""
    url_allow: tuple[AllowItem, ...] = setting(P + "URL_ALLOW", (), allow_list)
    """Exceptions to the URL policy for job-supplied URLs (``images[].url``,
    ``models[].source.url``): networks and host names a job may fetch from although they
    are not public (by default only public unicast addresses)."""
    bucket_endpoint_url: str | None = setting("BUCKET_ENDPOINT_URL", None, text)
    """S3 endpoint (as worker-comfyui); outputs go there when set."""
    bucket_access_key_id: Secret | None = setting("BUCKET_ACCESS_KEY_ID", None, secret)
    """S3 key id. Never printed."""
    bucket_secret_access_key: Secret | None = setting("BUCKET_SECRET_ACCESS_KEY", None, secret)
    """S3 secret. Never printed."""
    bucket_name: str | None = setting("BUCKET_NAME", None, text)
    """S3 bucket for outputs (default: the month, ``%m-%y``, as runpod's ``rp_upload``
    names it)."""
    comfy_org_api_key: Secret | None = setting("COMFY_ORG_API_KEY", None, secret)
    """The Comfy API key partner (API) nodes authenticate with, for jobs that bring none
    (``comfy_org_api_key`` in a job input, ``extra_data.api_key_comfy_org`` on v2); passed
    to ComfyUI's prompt as ``extra_data.api_key_comfy_org``. Never printed."""

    # --- serving ------------------------------------------------------------------
    host: str = setting(P + "HOST", "0.0.0.0", text, flag="--host")
    """Local HTTP API bind address."""
    port: int = setting(P + "PORT", 8000, integer(0), flag="--port")
    """Local HTTP API port."""
    max_request_bytes: int = setting(P + "MAX_REQUEST_BYTES", 64 * 1024 * 1024, integer(1))
    """Largest request body the HTTP API accepts."""
    api_token: Secret | None = setting(P + "API_TOKEN", None, secret)
    """When set, every HTTP API route but /health needs ``Authorization: Bearer TOKEN``.
    Never printed."""
    assets_max_bytes: int = setting(P + "ASSETS_MAX_BYTES", 10 * 2**30, byte_size)
    """Bytes the Comfy API v2's assets (uploads and job outputs) may hold on disk under the
    work dir; least recently used go first, never one a queued or running job uses."""
    asset_ttl: float = setting(P + "ASSET_TTL", 86400.0, number(60.0))
    """Seconds a v2 asset (from its last upload or reference) and a v2 job record are
    kept."""
    restart_after_jobs: int = setting(P + "RESTART_AFTER_JOBS", 0, integer(0))
    """Restart ComfyUI after this many jobs (between jobs; 0 = never)."""
    max_comfy_rss: int = setting(P + "MAX_COMFY_RSS", 0, byte_size)
    """Restart ComfyUI between jobs once its resident memory passes this many bytes
    (0 = never)."""

    # --- Vast.ai PyWorker (comfy-worker vast; docs/serving.md) ------------------------
    vast_python: str = setting(P + "VAST_PYTHON", "/opt/vast-pyworker/bin/python", text)
    """The PyWorker virtualenv's python (scripts/install_vast_pyworker.sh)."""
    vast_model_log: Path = setting(
        P + "VAST_MODEL_LOG", Path("/var/log/comfy-worker/model.log"), path)
    """The model log the PyWorker watches for ready/fatal lines."""
    vast_benchmark: Path | None = setting(P + "VAST_BENCHMARK", None, path)
    """JSON job input the PyWorker benchmarks (default: a tiny EmptyImage -> SaveImage
    workflow)."""
    vast_benchmark_runs: int = setting(P + "VAST_BENCHMARK_RUNS", 3, integer(1))
    """Timed benchmark runs after one warm-up."""
    vast_max_queue_time: float = setting(P + "VAST_MAX_QUEUE_TIME", 30.0, number(0.1))
    """Estimated queue seconds after which the PyWorker answers 429."""

    refresh_worker: bool = setting("REFRESH_WORKER", False, boolean)
    """RunPod: ask for a fresh worker after each job (the handler's ``refresh_worker``, as
    runpod-workers/worker-comfyui does)."""

    runpod_platform: bool = setting("RUNPOD_WEBHOOK_GET_JOB", False, present)
    """Running on RunPod (RUNPOD_WEBHOOK_GET_JOB is set) rather than in the runpod SDK's
    local test modes; progress updates are sent only then."""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.metadata["env"], f.name, f.metadata["parse"], f.metadata["flag"])
    for f in dataclasses.fields(Settings))
"""The table: every setting's variable, field, parser and flag, in declaration order."""

_FIELDS = frozenset(s.field for s in SETTINGS)
_BY_FLAG = {s.flag: s for s in SETTINGS if s.flag}
_BY_FIELD = {s.field: s for s in SETTINGS}


def env_name(field: str) -> str:
    """The environment variable of the :class:`Settings` field ``field`` (for messages
    and hints: ``env_name("job_timeout")`` is ``COMFY_WORKER_JOB_TIMEOUT``)."""
    return _BY_FIELD[field].env


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if raw not in (None, ""):
            values[setting.field] = setting.parse(setting.env, raw)
    return values


def _from_flags(flags: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for flag, raw in flags.items():
        setting = _BY_FLAG.get(flag)
        if setting is None:
            raise TypeError(f"no setting has the flag {flag!r}")
        values[setting.field] = setting.parse(flag, raw)
    return values


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from ``env`` (default: the process environment), then command-line
    ``flags`` (raw text keyed by flag, e.g. ``{"--jobs": "6"}``, read by the same
    parsers), then typed ``overrides`` (programmatic callers and tests).

    ``overrides`` with the value ``None`` are ignored. The models dir defaults to
    ``COMFYUI_DIR/models`` whenever a ComfyUI dir is given and no models dir is.
    """
    env = os.environ if env is None else env
    values = _from_env(env)
    values.update(_from_flags(flags or {}))
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise TypeError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value
    if "models_dir" not in values and values.get("comfyui_dir") is not None:
        values["models_dir"] = Path(values["comfyui_dir"]) / "models"
    return Settings(**values)
