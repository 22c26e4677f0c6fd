"""Every setting the worker reads, in one place.

Nothing else in the package calls ``os.environ``: entrypoints build one frozen
:class:`Settings` with :func:`load_settings` (environment first, command-line flags
over it) and pass it down. Each env var sits beside its default below, and README.md
lists them all.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.errors import ConfigError

ENV_PREFIX = "COMFY_WORKER_"
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


# --- tiny parsers: each names the variable and the value it could not read ---------


def _is_true(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean", hint=f"set {name} to 1/true or 0/false")


def _as_int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer", hint=f"set {name} to a whole number"
        ) from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below {minimum}", hint=f"set {name} >= {minimum}")
    return value


def _as_float(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a number", hint=f"set {name} to a number of seconds"
        ) from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below {minimum}", hint=f"set {name} >= {minimum}")
    return value


def _as_path(raw: str) -> Path:
    return Path(raw).expanduser()


@dataclass(frozen=True)
class Settings:
    """The worker's configuration. Build it with :func:`load_settings`."""

    # --- models: lock → plan → fetch → verify → place -----------------------------
    lock_path: Path = Path("models.lock.json")
    """COMFY_WORKER_LOCK / --lock: the lock file to sync."""
    models_dir: Path = Path("models")
    """COMFY_WORKER_MODELS_DIR / --models-dir: local ComfyUI models root (default
    ``$COMFYUI_DIR/models`` when COMFYUI_DIR is set, else ``./models``)."""
    volume: Path | None = None
    """COMFY_WORKER_VOLUME / --volume: network volume root; models live in ``V/models``."""
    jobs: int = 4
    """COMFY_WORKER_JOBS / --jobs: files downloaded at once."""
    connections: int = 8
    """COMFY_WORKER_CONNECTIONS: parallel byte ranges per file."""
    retries: int = 3
    """COMFY_WORKER_RETRIES: attempts per file after the first (hash mismatch, 5xx, cut)."""
    stall_timeout: float = 60.0
    """COMFY_WORKER_STALL_TIMEOUT: seconds a download may receive nothing before it is
    restarted (hf_transfer itself waits forever on a stalled connection)."""
    fast_verify: bool = False
    """COMFY_WORKER_FAST_VERIFY: on the warm path, trust size + safetensors header
    instead of a full sha256 for files seen before (never for new downloads)."""
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    """HF_ENDPOINT: Hugging Face endpoint (a mirror, or a test server)."""
    hf_token: Secret | None = None
    """HF_TOKEN: token for gated/private repos. Never printed."""

    # --- ComfyUI: launch → ready --------------------------------------------------
    comfyui_dir: Path | None = None
    """COMFYUI_DIR: the ComfyUI checkout holding ``main.py``."""
    comfyui_python: str = sys.executable
    """COMFYUI_PYTHON: the interpreter that runs ComfyUI (default: this one)."""
    comfyui_cpu: bool | None = None
    """COMFYUI_CPU: force ``--cpu`` (1) or GPU (0); unset: ``--cpu`` when no GPU is seen."""
    comfyui_extra_args: tuple[str, ...] = ()
    """COMFYUI_EXTRA_ARGS: extra ``main.py`` arguments, split on whitespace."""
    work_dir: Path | None = None
    """COMFY_WORKER_WORK_DIR: ComfyUI's input/output/temp dirs (default: a temp dir)."""
    boot_timeout: float = 300.0
    """COMFYUI_BOOT_TIMEOUT: seconds to wait for ComfyUI to answer /system_stats."""

    # --- jobs: job → validate → run → collect ---------------------------------------
    job_timeout: float = 600.0
    """COMFY_WORKER_JOB_TIMEOUT: default seconds per job (``input.timeout`` overrides)."""
    max_output_bytes: int = 20 * 1024 * 1024
    """COMFY_WORKER_MAX_OUTPUT_BYTES: total base64 output allowed inline."""
    bucket_endpoint_url: str | None = None
    """BUCKET_ENDPOINT_URL: S3 endpoint (as worker-comfyui); outputs go there when set."""
    bucket_access_key_id: Secret | None = None
    """BUCKET_ACCESS_KEY_ID: S3 key id. Never printed."""
    bucket_secret_access_key: Secret | None = None
    """BUCKET_SECRET_ACCESS_KEY: S3 secret. Never printed."""
    bucket_name: str | None = None
    """BUCKET_NAME: S3 bucket for outputs (default: the month, ``%m-%y``, as runpod's
    ``rp_upload`` names it)."""

    # --- serving ------------------------------------------------------------------
    host: str = "0.0.0.0"
    """COMFY_WORKER_HOST / --host: local HTTP API bind address."""
    port: int = 8000
    """COMFY_WORKER_PORT / --port: local HTTP API port."""
    max_request_bytes: int = 64 * 1024 * 1024
    """COMFY_WORKER_MAX_REQUEST_BYTES: largest request body the HTTP API accepts."""

    # --- Vast.ai PyWorker (comfy-worker vast; docs/serving.md) ------------------------
    vast_python: str = "/opt/vast-pyworker/bin/python"
    """COMFY_WORKER_VAST_PYTHON: the PyWorker virtualenv's python
    (scripts/install_vast_pyworker.sh)."""
    vast_model_log: Path = Path("/var/log/comfy-worker/model.log")
    """COMFY_WORKER_VAST_MODEL_LOG: the model log the PyWorker watches for ready/fatal lines."""
    vast_benchmark: Path | None = None
    """COMFY_WORKER_VAST_BENCHMARK: JSON job input the PyWorker benchmarks (default: a tiny
    EmptyImage -> SaveImage workflow)."""
    vast_benchmark_runs: int = 3
    """COMFY_WORKER_VAST_BENCHMARK_RUNS: timed benchmark runs after one warm-up."""
    vast_max_queue_time: float = 30.0
    """COMFY_WORKER_VAST_MAX_QUEUE_TIME: estimated queue seconds after which the PyWorker
    answers 429 (the autoscaler then routes elsewhere)."""

    runpod_platform: bool = False
    """RUNPOD_WEBHOOK_GET_JOB (set by RunPod): running on RunPod rather than in the runpod
    SDK's local test modes; progress updates are sent only then."""

    extra: Mapping[str, Any] = field(default_factory=dict)
    """Reserved for adapters; not read from the environment."""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def volume_models_dir(self) -> Path | None:
        return self.volume / "models" if self.volume is not None else None


def load_settings(
    env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from ``env`` (default: the process environment), then ``overrides``.

    ``overrides`` with the value ``None`` are ignored, so CLI flags that were not
    given fall through to the environment and defaults.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}

    def get(name: str) -> str | None:
        raw = env.get(name)
        return raw if raw not in (None, "") else None

    if (raw := get(ENV_PREFIX + "LOCK")) is not None:
        values["lock_path"] = _as_path(raw)
    if (raw := get("COMFYUI_DIR")) is not None:
        values["comfyui_dir"] = _as_path(raw)
        values["models_dir"] = _as_path(raw) / "models"
    if (raw := get(ENV_PREFIX + "MODELS_DIR")) is not None:
        values["models_dir"] = _as_path(raw)
    if (raw := get(ENV_PREFIX + "VOLUME")) is not None:
        values["volume"] = _as_path(raw)
    if (raw := get(ENV_PREFIX + "JOBS")) is not None:
        values["jobs"] = _as_int(ENV_PREFIX + "JOBS", raw, minimum=1)
    if (raw := get(ENV_PREFIX + "CONNECTIONS")) is not None:
        values["connections"] = _as_int(ENV_PREFIX + "CONNECTIONS", raw, minimum=1)
    if (raw := get(ENV_PREFIX + "RETRIES")) is not None:
        values["retries"] = _as_int(ENV_PREFIX + "RETRIES", raw, minimum=0)
    if (raw := get(ENV_PREFIX + "STALL_TIMEOUT")) is not None:
        values["stall_timeout"] = _as_float(ENV_PREFIX + "STALL_TIMEOUT", raw, minimum=1.0)
    if (raw := get(ENV_PREFIX + "FAST_VERIFY")) is not None:
        values["fast_verify"] = _is_true(ENV_PREFIX + "FAST_VERIFY", raw)
    if (raw := get("HF_ENDPOINT")) is not None:
        values["hf_endpoint"] = raw.rstrip("/")
    if (raw := get("HF_TOKEN")) is not None:
        values["hf_token"] = Secret(raw.strip())

    if (raw := get("COMFYUI_PYTHON")) is not None:
        values["comfyui_python"] = raw
    if (raw := get("COMFYUI_CPU")) is not None:
        values["comfyui_cpu"] = _is_true("COMFYUI_CPU", raw)
    if (raw := get("COMFYUI_EXTRA_ARGS")) is not None:
        values["comfyui_extra_args"] = tuple(raw.split())
    if (raw := get(ENV_PREFIX + "WORK_DIR")) is not None:
        values["work_dir"] = _as_path(raw)
    if (raw := get("COMFYUI_BOOT_TIMEOUT")) is not None:
        values["boot_timeout"] = _as_float("COMFYUI_BOOT_TIMEOUT", raw, minimum=1.0)

    if (raw := get(ENV_PREFIX + "JOB_TIMEOUT")) is not None:
        values["job_timeout"] = _as_float(ENV_PREFIX + "JOB_TIMEOUT", raw, minimum=0.1)
    if (raw := get(ENV_PREFIX + "MAX_OUTPUT_BYTES")) is not None:
        values["max_output_bytes"] = _as_int(ENV_PREFIX + "MAX_OUTPUT_BYTES", raw, minimum=1)
    if (raw := get("BUCKET_ENDPOINT_URL")) is not None:
        values["bucket_endpoint_url"] = raw
    if (raw := get("BUCKET_ACCESS_KEY_ID")) is not None:
        values["bucket_access_key_id"] = Secret(raw)
    if (raw := get("BUCKET_SECRET_ACCESS_KEY")) is not None:
        values["bucket_secret_access_key"] = Secret(raw)
    if (raw := get("BUCKET_NAME")) is not None:
        values["bucket_name"] = raw

    if (raw := get(ENV_PREFIX + "HOST")) is not None:
        values["host"] = raw
    if (raw := get(ENV_PREFIX + "PORT")) is not None:
        values["port"] = _as_int(ENV_PREFIX + "PORT", raw, minimum=0)
    if (raw := get(ENV_PREFIX + "MAX_REQUEST_BYTES")) is not None:
        values["max_request_bytes"] = _as_int(ENV_PREFIX + "MAX_REQUEST_BYTES", raw, minimum=1)
    if (raw := get(ENV_PREFIX + "VAST_PYTHON")) is not None:
        values["vast_python"] = raw
    if (raw := get(ENV_PREFIX + "VAST_MODEL_LOG")) is not None:
        values["vast_model_log"] = _as_path(raw)
    if (raw := get(ENV_PREFIX + "VAST_BENCHMARK")) is not None:
        values["vast_benchmark"] = _as_path(raw)
    if (raw := get(ENV_PREFIX + "VAST_BENCHMARK_RUNS")) is not None:
        values["vast_benchmark_runs"] = _as_int(ENV_PREFIX + "VAST_BENCHMARK_RUNS", raw,
                                                minimum=1)
    if (raw := get(ENV_PREFIX + "VAST_MAX_QUEUE_TIME")) is not None:
        values["vast_max_queue_time"] = _as_float(ENV_PREFIX + "VAST_MAX_QUEUE_TIME", raw,
                                                  minimum=0.1)

    if get("RUNPOD_WEBHOOK_GET_JOB") is not None:
        values["runpod_platform"] = True

    for key, value in overrides.items():
        if value is None:
            continue
        if key not in Settings.__dataclass_fields__:
            raise TypeError(f"unknown setting {key!r}")
        values[key] = value
    if "comfyui_dir" in overrides and overrides["comfyui_dir"] is not None and (
        "models_dir" not in overrides or overrides["models_dir"] is None
    ) and get(ENV_PREFIX + "MODELS_DIR") is None:
        values["models_dir"] = Path(overrides["comfyui_dir"]) / "models"
    return Settings(**values)
