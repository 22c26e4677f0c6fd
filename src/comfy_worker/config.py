"""Every setting the worker reads, in one place: one table.

Nothing else in the package calls ``os.environ``: entrypoints build one frozen
:class:`Settings` with :func:`load_settings` (environment first, command-line flags over
it) and pass it down. :data:`SETTINGS` lists each setting once: its environment
variable, the :class:`Settings` field it fills, the parser that reads it (naming the
variable or flag and the value it could not read) and its command-line flag, if any.
CLI flags go through the same parsers as the environment. README.md's settings table
lists every variable (a test checks it).
"""

from __future__ import annotations

import dataclasses
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

SETTINGS: tuple[Setting, ...] = (
    # models: lock -> plan -> fetch -> verify -> place
    Setting(P + "LOCK", "lock_path", path, "--lock"),
    Setting(P + "MODELS_DIR", "models_dir", path, "--models-dir"),
    Setting(P + "VOLUME", "volume", path, "--volume"),
    Setting(P + "JOBS", "jobs", integer(1), "--jobs"),
    Setting(P + "CONNECTIONS", "connections", integer(1)),
    Setting(P + "RETRIES", "retries", integer(0)),
    Setting(P + "STALL_TIMEOUT", "stall_timeout", number(1.0)),
    Setting(P + "FAST_VERIFY", "fast_verify", boolean),
    Setting(P + "SYNC_MODE", "sync_mode", choice("on-demand", "all"), "--sync-mode"),
    Setting(P + "PREFETCH", "prefetch", boolean),
    Setting(P + "MODEL_WAIT_TIMEOUT", "model_wait_timeout", number(1.0)),
    Setting(P + "MODEL_CACHE_BYTES", "model_cache_bytes", byte_size),
    Setting(P + "READAHEAD", "readahead", boolean),
    Setting(P + "READAHEAD_MEMORY", "readahead_memory", fraction),
    Setting("HF_ENDPOINT", "hf_endpoint", endpoint),
    Setting("HF_TOKEN", "hf_token", secret),
    # ComfyUI: launch -> ready
    Setting("COMFYUI_DIR", "comfyui_dir", path, "--comfyui-dir"),
    Setting("COMFYUI_PYTHON", "comfyui_python", text),
    Setting("COMFYUI_CPU", "comfyui_cpu", boolean, "--cpu"),
    Setting("COMFYUI_EXTRA_ARGS", "comfyui_extra_args", words),
    Setting(P + "WORK_DIR", "work_dir", path),
    Setting("COMFYUI_BOOT_TIMEOUT", "boot_timeout", number(1.0)),
    Setting(P + "WARMUP", "warmup", path),
    # jobs: job -> validate -> run -> collect
    Setting(P + "JOB_TIMEOUT", "job_timeout", number(0.1)),
    Setting(P + "MAX_OUTPUT_BYTES", "max_output_bytes", integer(1)),
    Setting(P + "INPUT_URL_MAX_BYTES", "input_url_max_bytes", byte_size),
    Setting(P + "INPUT_URL_TIMEOUT", "input_url_timeout", number(0.1)),
    Setting("BUCKET_ENDPOINT_URL", "bucket_endpoint_url", text),
    Setting("BUCKET_ACCESS_KEY_ID", "bucket_access_key_id", secret),
    Setting("BUCKET_SECRET_ACCESS_KEY", "bucket_secret_access_key", secret),
    Setting("BUCKET_NAME", "bucket_name", text),
    # serving
    Setting(P + "HOST", "host", text, "--host"),
    Setting(P + "PORT", "port", integer(0), "--port"),
    Setting(P + "MAX_REQUEST_BYTES", "max_request_bytes", integer(1)),
    Setting(P + "API_TOKEN", "api_token", secret),
    Setting(P + "RESTART_AFTER_JOBS", "restart_after_jobs", integer(0)),
    Setting(P + "MAX_COMFY_RSS", "max_comfy_rss", byte_size),
    # Vast.ai PyWorker
    Setting(P + "VAST_PYTHON", "vast_python", text),
    Setting(P + "VAST_MODEL_LOG", "vast_model_log", path),
    Setting(P + "VAST_BENCHMARK", "vast_benchmark", path),
    Setting(P + "VAST_BENCHMARK_RUNS", "vast_benchmark_runs", integer(1)),
    Setting(P + "VAST_MAX_QUEUE_TIME", "vast_max_queue_time", number(0.1)),
    # RunPod
    Setting("RUNPOD_WEBHOOK_GET_JOB", "runpod_platform", present),
)


@dataclass(frozen=True)
class Settings:
    """The worker's configuration. Build it with :func:`load_settings`; each field's
    variable and flag are in :data:`SETTINGS`."""

    # --- models: lock → plan → fetch → verify → place -----------------------------
    lock_path: Path = Path("models.lock.json")
    """The lock file to sync."""
    models_dir: Path = Path("models")
    """Local ComfyUI models root (default ``$COMFYUI_DIR/models`` when COMFYUI_DIR is
    set, else ``./models``)."""
    volume: Path | None = None
    """Network volume root; models live in ``V/models``."""
    jobs: int = 4
    """Files downloaded at once."""
    connections: int = 8
    """Parallel byte ranges per file."""
    retries: int = 3
    """Attempts per file after the first (hash mismatch, 5xx, cut)."""
    stall_timeout: float = 60.0
    """Seconds a download may receive nothing before it is restarted."""
    fast_verify: bool = False
    """On the warm path, trust size + safetensors header instead of a full sha256 for
    files seen before (never for new downloads)."""
    sync_mode: str = "on-demand"
    """``on-demand``: ready when ComfyUI is up; a job waits only for the models it uses,
    fetched first; the rest of the lock downloads in the background. ``all``: ready only
    once every locked model is present and verified."""
    prefetch: bool = True
    """On demand: download the rest of the lock in the background (lowest priority);
    False downloads only what jobs ask for."""
    model_wait_timeout: float = 1800.0
    """Seconds a job may wait for its models (not counted in its execution timeout)."""
    model_cache_bytes: int = 10 * 2**30
    """Bytes of models that jobs bring (``input.models``) kept on disk; least recently
    used first out, never a locked file, never one a running job uses."""
    readahead: bool = True
    """Read a job's model files into the page cache with large parallel reads before its
    prompt is queued (and the volume's locked files while ComfyUI boots), so ComfyUI's
    small reads hit memory instead of a slow network volume."""
    readahead_memory: float = 0.5
    """At most this fraction of available memory is filled by read-ahead."""
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    """Hugging Face endpoint (a mirror, or a test server)."""
    hf_token: Secret | None = None
    """Token for gated/private repos. Never printed."""

    # --- ComfyUI: launch → ready --------------------------------------------------
    comfyui_dir: Path | None = None
    """The ComfyUI checkout holding ``main.py``."""
    comfyui_python: str = sys.executable
    """The interpreter that runs ComfyUI (default: this one)."""
    comfyui_cpu: bool | None = None
    """Force ``--cpu`` (True) or GPU (False); None: ``--cpu`` when no GPU is seen."""
    comfyui_extra_args: tuple[str, ...] = ()
    """Extra ``main.py`` arguments, split on whitespace."""
    work_dir: Path | None = None
    """ComfyUI's input/output/temp dirs (default: a temp dir)."""
    boot_timeout: float = 300.0
    """Seconds to wait for ComfyUI to answer /system_stats."""
    warmup: Path | None = None
    """A JSON job input run once after start-up, before the worker reports ready (its
    failure fails start-up)."""

    # --- jobs: job → validate → run → collect ---------------------------------------
    job_timeout: float = 600.0
    """Default seconds per job (``input.timeout`` overrides)."""
    max_output_bytes: int = 20 * 1024 * 1024
    """Total base64 output allowed inline."""
    input_url_max_bytes: int = 50 * 1024 * 1024
    """Largest input image fetched from a URL (``images[].url``)."""
    input_url_timeout: float = 30.0
    """Seconds to connect to, and between reads from, an input image URL."""
    bucket_endpoint_url: str | None = None
    """S3 endpoint (as worker-comfyui); outputs go there when set."""
    bucket_access_key_id: Secret | None = None
    """S3 key id. Never printed."""
    bucket_secret_access_key: Secret | None = None
    """S3 secret. Never printed."""
    bucket_name: str | None = None
    """S3 bucket for outputs (default: the month, ``%m-%y``, as runpod's ``rp_upload``
    names it)."""

    # --- serving ------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Local HTTP API bind address."""
    port: int = 8000
    """Local HTTP API port."""
    max_request_bytes: int = 64 * 1024 * 1024
    """Largest request body the HTTP API accepts."""
    api_token: Secret | None = None
    """When set, every HTTP API route but /health needs ``Authorization: Bearer TOKEN``.
    Never printed."""
    restart_after_jobs: int = 0
    """Restart ComfyUI after this many jobs (between jobs; 0 = never)."""
    max_comfy_rss: int = 0
    """Restart ComfyUI between jobs once its resident memory passes this many bytes
    (0 = never)."""

    # --- Vast.ai PyWorker (comfy-worker vast; docs/serving.md) ------------------------
    vast_python: str = "/opt/vast-pyworker/bin/python"
    """The PyWorker virtualenv's python (scripts/install_vast_pyworker.sh)."""
    vast_model_log: Path = Path("/var/log/comfy-worker/model.log")
    """The model log the PyWorker watches for ready/fatal lines."""
    vast_benchmark: Path | None = None
    """JSON job input the PyWorker benchmarks (default: a tiny EmptyImage -> SaveImage
    workflow)."""
    vast_benchmark_runs: int = 3
    """Timed benchmark runs after one warm-up."""
    vast_max_queue_time: float = 30.0
    """Estimated queue seconds after which the PyWorker answers 429."""

    runpod_platform: bool = False
    """Running on RunPod (RUNPOD_WEBHOOK_GET_JOB is set) rather than in the runpod SDK's
    local test modes; progress updates are sent only then."""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))
_BY_FLAG = {s.flag: s for s in SETTINGS if s.flag}


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
