"""The RunPod Hub listing: .runpod/hub.json and .runpod/tests.json.

The schemas below are written from RunPod's Hub publishing guide ("hub.json reference",
"tests.json reference") and the shape of the official runpod-workers/worker-comfyui
listing; they are strict (no unknown keys) so a typo fails here rather than in the Hub's
build. Beyond the schema: every setting in README's "Settings" table is offered on the
Hub or excluded below with a reason, the CUDA versions match the torch wheels in the GPU
lock, and the test job's timeout covers a cold download of the default models.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
HUB = REPO / ".runpod" / "hub.json"
TESTS = REPO / ".runpod" / "tests.json"

# README "Settings" variables the Hub does not offer, and why. A README variable that is
# neither here nor in hub.json fails test_every_readme_setting_is_on_the_hub_or_excluded.
EXCLUDED = {
    # Set by the image to where ComfyUI lives; changing them breaks the image.
    "COMFYUI_DIR": "image layout",
    "COMFYUI_PYTHON": "image layout",
    # Auto-detection is right on a GPU endpoint; forcing CPU there only wastes money.
    "COMFYUI_CPU": "auto-detected",
    # start.sh picks runpod from RUNPOD_ENDPOINT_ID; any other MODE breaks the endpoint.
    "MODE": "autodetected",
    # Set by RunPod itself for each worker.
    "RUNPOD_WEBHOOK_GET_JOB": "set by RunPod",
    # The local HTTP API (`serve`, local and Vast modes): not used on RunPod serverless,
    # where RunPod's own endpoint takes the requests and checks the API key.
    "COMFY_WORKER_HOST": "local HTTP API only",
    "COMFY_WORKER_PORT": "local HTTP API only",
    "COMFY_WORKER_MAX_REQUEST_BYTES": "local HTTP API only",
    # The Comfy API v2's asset store lives in `serve` (the RunPod handler has no assets).
    "COMFY_WORKER_ASSETS_MAX_BYTES": "local HTTP API only (Comfy API v2)",
    "COMFY_WORKER_ASSET_TTL": "local HTTP API only (Comfy API v2)",
    "COMFY_WORKER_API_TOKEN": "local HTTP API only",
    # The Vast.ai PyWorker.
    "COMFY_WORKER_VAST_BENCHMARK": "Vast.ai only",
    "COMFY_WORKER_VAST_BENCHMARK_RUNS": "Vast.ai only",
    "COMFY_WORKER_VAST_MAX_QUEUE_TIME": "Vast.ai only",
    "COMFY_WORKER_VAST_MODEL_LOG": "Vast.ai only",
    "COMFY_WORKER_VAST_PYTHON": "Vast.ai only",
}
SECRETS = ("HF_TOKEN", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
# A conservative sustained download rate for a cold worker (200 Mbit/s); RunPod's data
# centers usually reach Hugging Face's CDN several times faster.
COLD_SYNC_BYTES_PER_S = 25e6
JOB_ALLOWANCE_S = 120  # SDXL-Turbo, 1 step at 512², x4 upscale: seconds on any 24 GB GPU
IMAGE_DISK_GB = 12  # the GPU image unpacked (docs/deploy.md: ~8.6 GB) plus headroom

CUDA_VERSION = {"type": "string", "pattern": r"^[0-9]+\.[0-9]+$"}
STATIC_ENV = {
    "type": "object",
    "required": ["key", "value"],
    "additionalProperties": False,
    "properties": {"key": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
                   "value": {"type": "string"}},
}
INPUT_COMMON = {
    "name": {"type": "string", "minLength": 1},
    "description": {"type": "string", "minLength": 1},
    "advanced": {"type": "boolean"},
}
INPUT_ENV = {
    "type": "object",
    "required": ["key", "input"],
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
        "input": {
            "type": "object",
            "required": ["name", "type", "description", "default"],
            "properties": {"type": {"enum": ["string", "number", "boolean", "huggingface"]}},
            "oneOf": [
                {"additionalProperties": False, "properties": {
                    **INPUT_COMMON, "type": {"const": "string"}, "default": {"type": "string"},
                    "options": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["label", "value"],
                        "additionalProperties": False,
                        "properties": {"label": {"type": "string"},
                                       "value": {"type": "string"}}}}}},
                {"additionalProperties": False, "properties": {
                    **INPUT_COMMON, "type": {"const": "number"}, "default": {"type": "number"},
                    "min": {"type": "number"}, "max": {"type": "number"}}},
                {"additionalProperties": False, "properties": {
                    **INPUT_COMMON, "type": {"const": "boolean"}, "default": {"type": "boolean"},
                    "trueValue": {"type": "string"}, "falseValue": {"type": "string"}}},
                {"additionalProperties": False, "properties": {
                    **INPUT_COMMON, "type": {"const": "huggingface"},
                    "default": {"type": "string"}}},
            ],
        },
    },
}
HUB_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["title", "description", "type", "category", "config"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "type": {"const": "serverless"},
        "category": {"enum": ["audio", "embedding", "language", "video", "image"]},
        "iconUrl": {"type": "string", "pattern": "^https://"},
        "config": {
            "type": "object",
            "required": ["runsOn", "containerDiskInGb"],
            "additionalProperties": False,
            "properties": {
                "runsOn": {"enum": ["GPU", "CPU"]},
                "containerDiskInGb": {"type": "integer", "minimum": 1},
                "cpuFlavor": {"type": "string"},
                "gpuCount": {"type": "integer", "minimum": 1},
                "gpuIds": {"type": "string", "pattern": r"^-?[^,]+(,-?[^,]+)*$"},
                "allowedCudaVersions": {"type": "array", "minItems": 1, "uniqueItems": True,
                                        "items": CUDA_VERSION},
                "env": {"type": "array", "items": {"oneOf": [STATIC_ENV, INPUT_ENV]}},
                "presets": {"type": "array", "items": {
                    "type": "object", "required": ["name", "defaults"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1},
                                   "defaults": {"type": "object", "additionalProperties": {
                                       "type": ["string", "number", "boolean"]}}}}},
            },
            "allOf": [
                {"if": {"properties": {"runsOn": {"const": "GPU"}}},
                 "then": {"required": ["gpuCount", "gpuIds"]}},
                {"if": {"properties": {"runsOn": {"const": "CPU"}}},
                 "then": {"required": ["cpuFlavor"]}},
            ],
        },
    },
}
TESTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["tests", "config"],
    "additionalProperties": False,
    "properties": {
        "tests": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "input"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "minLength": 1},
                           "input": {"type": "object"},
                           # milliseconds
                           "timeout": {"type": "integer", "minimum": 1000}}}},
        "config": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "gpuTypeId": {"type": "string", "minLength": 1},
                "gpuCount": {"type": "integer", "minimum": 1},
                "cpuFlavor": {"type": "string"},
                "env": {"type": "array", "items": STATIC_ENV},
                "allowedCudaVersions": {"type": "array", "minItems": 1, "items": CUDA_VERSION},
            },
            "oneOf": [{"required": ["gpuTypeId", "gpuCount"]}, {"required": ["cpuFlavor"]}],
        },
    },
}


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _errors(schema: dict[str, Any], doc: Any) -> list[str]:
    Draft202012Validator.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in Draft202012Validator(schema).iter_errors(doc)]


def _hub_env() -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in _load(HUB)["config"]["env"]}


def readme_settings() -> dict[str, str]:
    """variable -> its "default" cell, from README.md's "## Settings" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    settings: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
            settings[name] = cells[2].strip("`")
    return settings


def _gpu_lock_cuda() -> tuple[int, int]:
    lock = (REPO / "requirements" / "comfyui-gpu.lock").read_text()
    match = re.search(r"^nvidia-cuda-runtime-cu12==(\d+)\.(\d+)\.", lock, flags=re.M)
    assert match, "the GPU lock has no nvidia-cuda-runtime-cu12 pin"
    return int(match.group(1)), int(match.group(2))


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def test_hub_json_follows_the_hub_schema() -> None:
    assert _errors(HUB_SCHEMA, _load(HUB)) == []


def test_tests_json_follows_the_hub_schema() -> None:
    assert _errors(TESTS_SCHEMA, _load(TESTS)) == []


@pytest.mark.parametrize("mutation", [
    "no title", "pod type", "unknown category", "unknown config key", "gpu without gpuIds",
    "secret input type", "number default as string", "boolean default as string",
    "option without label", "cuda version not x.y",
])
def test_the_hub_schema_rejects_broken_listings(mutation: str) -> None:
    hub = copy.deepcopy(_load(HUB))
    env = hub["config"]["env"]
    first_number = next(e for e in env if e.get("input", {}).get("type") == "number")
    if mutation == "no title":
        del hub["title"]
    elif mutation == "pod type":
        hub["type"] = "pod"
    elif mutation == "unknown category":
        hub["category"] = "images"
    elif mutation == "unknown config key":
        hub["config"]["containerDiskGb"] = 20
    elif mutation == "gpu without gpuIds":
        del hub["config"]["gpuIds"]
    elif mutation == "secret input type":
        env[0]["input"]["type"] = "secret"
    elif mutation == "number default as string":
        first_number["input"]["default"] = "4"
    elif mutation == "boolean default as string":
        env.append({"key": "X_FLAG", "input": {"name": "x", "type": "boolean",
                                               "description": "x", "default": "false"}})
    elif mutation == "option without label":
        env.append({"key": "X_OPT", "input": {"name": "x", "type": "string", "description": "x",
                                              "default": "a", "options": [{"value": "a"}]}})
    elif mutation == "cuda version not x.y":
        hub["config"]["allowedCudaVersions"] = ["12"]
    assert _errors(HUB_SCHEMA, hub), f"{mutation} was accepted"


def test_the_tests_schema_rejects_a_seconds_timeout_and_a_missing_gpu() -> None:
    tests = _load(TESTS)
    bad = copy.deepcopy(tests)
    bad["tests"][0]["timeout"] = 300  # seconds: the Hub reads milliseconds
    assert _errors(TESTS_SCHEMA, bad)
    bad = copy.deepcopy(tests)
    del bad["config"]["gpuTypeId"]
    assert _errors(TESTS_SCHEMA, bad)


def test_every_readme_setting_is_on_the_hub_or_excluded() -> None:
    settings = readme_settings()
    assert len(settings) > 20, "README's Settings table was not found or not parsed"
    env = _hub_env()
    missing = sorted(set(settings) - set(env) - set(EXCLUDED))
    assert missing == [], (f"README Settings lists {missing}: add each to .runpod/hub.json "
                           "config.env, or to EXCLUDED in this test with the reason")
    both = sorted(set(env) & set(EXCLUDED))
    assert both == [], f"{both} are offered on the Hub and excluded at once"


def test_the_hub_offers_no_setting_that_readme_does_not_document() -> None:
    unknown = sorted(set(_hub_env()) - set(readme_settings()))
    assert unknown == [], f"hub.json offers {unknown}, which README's Settings does not list"


def test_hub_defaults_match_readme_defaults() -> None:
    settings = readme_settings()
    for key, entry in _hub_env().items():
        default = entry["input"]["default"]
        if entry["input"]["type"] == "number":
            assert float(settings[key]) == default, f"{key}: README {settings[key]}, hub {default}"
        elif settings[key] == "none":
            assert default == "", f"{key}: README says none, hub defaults to {default!r}"


def test_secrets_are_empty_by_default_and_point_at_runpod_secrets() -> None:
    env = _hub_env()
    for key in SECRETS:
        entry = env[key]["input"]
        assert entry["type"] == "string" and entry["default"] == ""
        assert "RUNPOD_SECRET_" in entry["description"], key
    for key in (k for k in env if k.startswith("BUCKET_")):
        assert env[key]["input"]["advanced"] is True, f"{key} should be advanced"


def test_presets_only_set_offered_settings() -> None:
    env = _hub_env()
    for preset in _load(HUB)["config"]["presets"]:
        assert set(preset["defaults"]) <= set(env), preset


def test_cuda_versions_fit_the_torch_wheels_in_the_gpu_lock() -> None:
    """torch 2.9.1 from PyPI is built for CUDA 12.8: hosts need a driver for CUDA >= 12.8."""
    wheels = _gpu_lock_cuda()
    assert wheels == (12, 8)
    for path in (HUB, TESTS):
        versions = [_version(v) for v in _load(path)["config"]["allowedCudaVersions"]]
        assert min(versions) == wheels, (path.name, versions)
        assert all(v >= wheels for v in versions)
    assert (_load(HUB)["config"]["allowedCudaVersions"]
            == _load(TESTS)["config"]["allowedCudaVersions"])


def test_the_hub_test_job_is_the_shipped_default_workflow() -> None:
    job = _load(TESTS)["tests"][0]["input"]
    assert job == {"workflow": json.loads((REPO / "workflows" / "default.json").read_text())}
    # Every model file the workflow loads is pinned in the default lock.
    lock = json.loads((REPO / "models.lock.json").read_text())
    locked = {Path(m["path"]).name for m in lock["models"]}
    names = {v for node in job["workflow"].values() for k, v in node["inputs"].items()
             if k in ("ckpt_name", "model_name", "lora_name", "vae_name", "unet_name")}
    assert names and names <= locked


def test_the_hub_test_timeout_covers_a_cold_sync_of_the_default_lock() -> None:
    lock = json.loads((REPO / "models.lock.json").read_text())
    total = sum(m["size"] for m in lock["models"])
    boot = _hub_env()["COMFYUI_BOOT_TIMEOUT"]["input"]["default"]
    # Sync and boot overlap in the worker; counted one after the other to be safe.
    needed_s = total / COLD_SYNC_BYTES_PER_S + boot + JOB_ALLOWANCE_S
    timeout_ms = _load(TESTS)["tests"][0]["timeout"]
    assert timeout_ms >= needed_s * 1000, (timeout_ms, needed_s)
    assert timeout_ms <= 2 * needed_s * 1000, "far above what a cold start needs"


def test_container_disk_holds_the_image_and_the_default_models() -> None:
    lock = json.loads((REPO / "models.lock.json").read_text())
    models_gb = sum(m["size"] for m in lock["models"]) / 1e9
    assert _load(HUB)["config"]["containerDiskInGb"] >= IMAGE_DISK_GB + models_gb


def test_the_hub_finds_a_handler_dockerfile_and_readme() -> None:
    for name in ("handler.py", "Dockerfile", "README.md"):
        assert (REPO / ".runpod" / name).is_file() or (REPO / name).is_file(), name
    handler = (REPO / ".runpod" / "handler.py").read_text()
    assert 'main(["runpod"' in handler
