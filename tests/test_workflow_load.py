"""Any workflow a user sends → API prompt, and ``comfy-worker workflow convert``."""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.workflow_cases import expected, object_info, template

from comfy_worker.commands.workflow import convert, object_info_from, read_workflow_file
from comfy_worker.config import load_settings
from comfy_worker.errors import ComfyStartError, JobInputInvalid, WorkflowConversionError
from comfy_worker.workflow.load import api_prompt_from, validate_api_prompt

INFO = object_info()
EXPECTED = expected("default")[0]
API = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


def test_api_prompt_passes_through_as_object_or_string() -> None:
    assert api_prompt_from(API) == API
    assert api_prompt_from(json.dumps(API)) == API


def test_ui_workflow_is_converted_as_object_or_string() -> None:
    assert api_prompt_from(template("default"), INFO) == EXPECTED
    assert api_prompt_from(json.dumps(template("default")), INFO) == EXPECTED


def test_object_info_provider_is_called_only_for_ui_format() -> None:
    calls: list[int] = []

    def provider() -> dict[str, Any]:
        calls.append(1)
        return INFO

    api_prompt_from(API, provider)
    assert calls == []
    assert api_prompt_from(template("default"), provider) == EXPECTED
    assert calls == [1]


def test_ui_workflow_without_node_definitions_is_refused_with_a_hint() -> None:
    with pytest.raises(WorkflowConversionError, match="UI format") as err:
        api_prompt_from(template("default"), None)
    assert "Export (API)" in (err.value.hint or "")


@pytest.mark.parametrize(("raw", "message"), [
    (None, 'field "workflow" is missing'),
    ("{not json", "not valid JSON"),
    ([1], "is array, expected an object"),
    ({}, "empty object"),
    ({"1": 5}, 'workflow["1"] is number, expected an object'),
    ({"1": {"inputs": {}}}, 'field "class_type" is missing'),
    ({"1": {"class_type": None}}, 'field "class_type" is null, expected a string'),
    ({"1": {"class_type": 3}}, 'field "class_type" is number 3, expected a string'),
    ({"1": {"class_type": "X", "inputs": []}}, 'field "inputs" is array, expected an object'),
])
def test_malformed_api_prompts_name_the_field_and_the_json_type(raw: Any, message: str) -> None:
    with pytest.raises(JobInputInvalid) as err:
        api_prompt_from(raw)
    assert message in err.value.message
    assert "NoneType" not in str(err.value) and "dict" not in str(err.value)


def test_validate_accepts_a_node_without_inputs() -> None:
    assert validate_api_prompt({"5": {"class_type": "X"}}) == {"5": {"class_type": "X"}}


# --- the command ----------------------------------------------------------------------------------


def args(file: Path, object_info: str | None = None, out: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(file=file, object_info=object_info, out=out)


@pytest.fixture
def ui_file(tmp_path: Path) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(template("default")))
    return path


@pytest.fixture
def info_file(tmp_path: Path) -> Path:
    path = tmp_path / "object_info.json.gz"
    path.write_bytes(gzip.compress(json.dumps(INFO).encode()))
    return path


def test_convert_prints_the_prompt(ui_file: Path, info_file: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert convert(args(ui_file, str(info_file)), load_settings({})) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_convert_writes_out_atomically(ui_file: Path, info_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "prompt.json"
    assert convert(args(ui_file, str(info_file), out), load_settings({})) == 0
    assert json.loads(out.read_text()) == EXPECTED
    assert [p.name for p in out.parent.iterdir()] == ["prompt.json"]


def test_convert_uses_the_provider_when_no_object_info_is_given(
        ui_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert convert(args(ui_file, None, out), load_settings({}),
                   object_info_provider=lambda: INFO) == 0
    assert json.loads(out.read_text()) == EXPECTED
    # without either, ComfyUI is started as `run` does: here none is configured
    with pytest.raises(ComfyStartError, match="COMFYUI_DIR is not set"):
        convert(args(ui_file, None, out), load_settings({}))


class _ObjectInfoHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(INFO).encode() if self.path == "/object_info" else b"{}"
        self.send_response(200 if self.path == "/object_info" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def comfy_like_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ObjectInfoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_object_info_from_a_running_comfyui_url(comfy_like_server: str) -> None:
    assert object_info_from(comfy_like_server) == INFO
    assert object_info_from(comfy_like_server + "/object_info") == INFO


def test_object_info_errors_name_the_source(tmp_path: Path, comfy_like_server: str) -> None:
    with pytest.raises(JobInputInvalid, match=r"missing\.json"):
        object_info_from(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(JobInputInvalid, match="got array"):
        object_info_from(str(tmp_path / "bad.json"))
    with pytest.raises(JobInputInvalid, match="404"):
        object_info_from(comfy_like_server + "/nope/object_info")


def test_read_workflow_file_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(JobInputInvalid, match="not JSON, PNG or WEBP"):
        read_workflow_file(tmp_path / "x.txt")
    with pytest.raises(JobInputInvalid, match=r"nope\.json"):
        read_workflow_file(tmp_path / "nope.json")
