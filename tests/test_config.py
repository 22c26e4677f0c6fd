"""Settings: env parsing, flag precedence, secrets that never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_worker.cli import build_parser, settings_from_args
from comfy_worker.config import Secret, load_settings
from comfy_worker.errors import ConfigError


def test_defaults_without_env() -> None:
    s = load_settings({})
    assert s.lock_path == Path("models.lock.json")
    assert s.models_dir == Path("models")
    assert s.volume is None and s.volume_models_dir is None
    assert s.hf_endpoint == "https://huggingface.co"
    assert s.hf_token is None
    assert s.comfyui_cpu is None


def test_env_values_are_parsed() -> None:
    s = load_settings(
        {
            "COMFYUI_DIR": "/opt/ComfyUI",
            "COMFY_WORKER_VOLUME": "/runpod-volume",
            "COMFY_WORKER_JOBS": "8",
            "COMFY_WORKER_FAST_VERIFY": "yes",
            "COMFYUI_CPU": "false",
            "COMFYUI_EXTRA_ARGS": "--lowvram  --preview-method auto",
            "HF_ENDPOINT": "http://127.0.0.1:9999/",
            "COMFY_WORKER_JOB_TIMEOUT": "12.5",
        }
    )
    assert s.comfyui_dir == Path("/opt/ComfyUI")
    assert s.models_dir == Path("/opt/ComfyUI/models"), "models default follows COMFYUI_DIR"
    assert s.volume_models_dir == Path("/runpod-volume/models")
    assert s.jobs == 8
    assert s.fast_verify is True
    assert s.comfyui_cpu is False, "the string 'false' must not read as True"
    assert s.comfyui_extra_args == ("--lowvram", "--preview-method", "auto")
    assert s.hf_endpoint == "http://127.0.0.1:9999"
    assert s.job_timeout == 12.5


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"COMFY_WORKER_JOBS": "many"}, "COMFY_WORKER_JOBS='many' is not an integer"),
        ({"COMFY_WORKER_JOBS": "0"}, "COMFY_WORKER_JOBS=0 is below 1"),
        ({"COMFYUI_CPU": "maybe"}, "COMFYUI_CPU='maybe' is not a boolean"),
        ({"COMFY_WORKER_JOB_TIMEOUT": "soon"}, "COMFY_WORKER_JOB_TIMEOUT='soon' is not a number"),
    ],
)
def test_bad_env_values_name_variable_and_value(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert expected in str(info.value)
    assert info.value.hint


def test_secrets_never_show_in_repr_or_str() -> None:
    s = load_settings({"HF_TOKEN": "hf_supersecret123", "BUCKET_SECRET_ACCESS_KEY": "s3cr3t"})
    assert isinstance(s.hf_token, Secret)
    assert s.hf_token.reveal() == "hf_supersecret123"
    for text in (repr(s), str(s), repr(s.hf_token), f"{s.hf_token}"):
        assert "hf_supersecret123" not in text
        assert "s3cr3t" not in text


def test_flags_override_env_and_unset_flags_fall_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMFY_WORKER_JOBS", "3")
    monkeypatch.setenv("COMFY_WORKER_VOLUME", "/env-volume")
    args = build_parser().parse_args(["sync", "--jobs", "6", "--lock", "other.lock.json"])
    s = settings_from_args(args)
    assert s.jobs == 6
    assert s.lock_path == Path("other.lock.json")
    assert s.volume == Path("/env-volume")


def test_comfyui_dir_flag_moves_default_models_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    monkeypatch.delenv("COMFY_WORKER_MODELS_DIR", raising=False)
    args = build_parser().parse_args(["run", "wf.json", "--out", "o", "--comfyui-dir", "/c"])
    assert settings_from_args(args).models_dir == Path("/c/models")
    args = build_parser().parse_args(
        ["run", "wf.json", "--out", "o", "--comfyui-dir", "/c", "--models-dir", "/m"]
    )
    assert settings_from_args(args).models_dir == Path("/m")


def test_jobs_flag_below_one_is_a_config_error() -> None:
    args = build_parser().parse_args(["sync", "--jobs", "0"])
    with pytest.raises(ConfigError, match="--jobs 0"):
        settings_from_args(args)
