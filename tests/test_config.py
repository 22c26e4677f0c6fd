"""Settings: env parsing, flag precedence, secrets that never print."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path

import pytest

from comfy_worker.cli import build_parser, settings_from_args
from comfy_worker.config import SETTINGS, Secret, Settings, load_settings
from comfy_worker.errors import ConfigError


def test_defaults_without_env() -> None:
    s = load_settings({})
    assert s.lock_path == Path("models.lock.json")
    assert s.models_dir == Path("models")
    assert s.volume is None
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
    assert s.volume == Path("/runpod-volume")
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
    with pytest.raises(ConfigError, match="--jobs=0 is below 1"):
        settings_from_args(args)


@pytest.mark.parametrize(("argv", "expected"), [
    (["sync", "--jobs", "many"], "--jobs='many' is not an integer"),
    (["serve", "--port", "-1"], "--port=-1 is below 0"),
    (["serve", "--port", "http"], "--port='http' is not an integer"),
])
def test_flags_are_read_by_the_same_parsers_as_the_environment(
        argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_args(build_parser().parse_args(argv))
    assert expected in str(info.value)
    assert info.value.hint


def test_every_setting_row_fills_a_field_and_every_field_has_a_row() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    rows = [s.field for s in SETTINGS]
    assert len(rows) == len(set(rows)), "a field is filled by two rows"
    assert set(rows) == fields


def test_every_flag_of_every_command_maps_to_a_setting_row() -> None:
    parser = build_parser()
    flags = {s.flag for s in SETTINGS if s.flag}
    seen: set[str] = set()
    for sub in _subcommands(parser):
        for action in sub._actions:
            if action.dest.startswith("setting:"):
                seen.update(action.option_strings)
    assert seen == flags


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.append(sub)
                found.extend(_subcommands(sub))
    return found


def test_readme_settings_table_lists_every_variable() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    missing = sorted(s.env for s in SETTINGS if s.env not in listed)
    assert not missing, f"README.md's settings table misses {missing}"


def test_verbose_flag_turns_on_debug_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    from comfy_worker import cli

    levels: list[int] = []
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    cli._setup_logging(0)
    cli._setup_logging(1)
    assert levels == [logging.INFO, logging.DEBUG]


@pytest.mark.parametrize(("raw", "expected"), [
    ("1234", 1234), ("500M", 500_000_000), ("20GiB", 20 * 2**30), ("1.5 T", 1_500_000_000_000),
    ("64kib", 65536), ("0", 0)])
def test_byte_sizes_accept_units(raw: str, expected: int) -> None:
    assert load_settings({"COMFY_WORKER_MAX_COMFY_RSS": raw}).max_comfy_rss == expected


@pytest.mark.parametrize("raw", ["lots", "-5G", "12X", "G"])
def test_bad_byte_sizes_name_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"COMFY_WORKER_MAX_COMFY_RSS=.* is not a size"):
        load_settings({"COMFY_WORKER_MAX_COMFY_RSS": raw})
