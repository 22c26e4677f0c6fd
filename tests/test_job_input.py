"""Job input validation: worker-comfyui's input format, every mistake named."""

from __future__ import annotations

import base64
import json

import pytest

from comfy_worker.config import load_settings
from comfy_worker.errors import JobInputInvalid
from comfy_worker.job import parse_job_input
from comfy_worker.job.request import JobLimits
from comfy_worker.jsontypes import loads

WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
PNG = b"\x89PNG\r\n\x1a\nrest"


def parse(raw: object, default_timeout: float = 600.0):
    return parse_job_input(raw, default_timeout=default_timeout)


def test_workflow_object_is_taken_as_is_with_the_default_timeout() -> None:
    req = parse({"workflow": WF})
    assert req.workflow == WF and req.images == () and req.timeout == 600.0


def test_workflow_as_json_string_is_decoded() -> None:
    assert parse({"workflow": json.dumps(WF)}).workflow == WF


def test_workflow_string_that_is_not_json_names_the_field() -> None:
    with pytest.raises(JobInputInvalid, match='"workflow" is a string but not valid JSON'):
        parse({"workflow": "{nope"})


def test_a_ui_format_workflow_is_kept_for_conversion_with_the_node_definitions() -> None:
    ui = {"nodes": [{"id": 1, "type": "EmptyImage", "widgets_values": [8, 8, 1, 0]}],
          "links": [], "version": 0.4}
    assert parse({"workflow": ui}).workflow == ui
    assert parse({"workflow": json.dumps(ui)}).workflow == ui


@pytest.mark.parametrize("raw, fragment", [
    ({}, '"workflow" is missing'),
    ({"workflow": []}, "expected an object"),
    ({"workflow": {}}, "is an empty object"),
    ({"workflow": {"1": {"inputs": {}}}}, 'field "class_type" is missing'),
    ({"workflow": {"1": {"class_type": "X", "inputs": [1]}}}, '"inputs" is array'),
])
def test_malformed_workflow_is_named(raw: dict, fragment: str) -> None:
    with pytest.raises(JobInputInvalid, match=fragment.replace("(", r"\(")):
        parse(raw)


def test_input_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(JobInputInvalid, match='job "input" is a JSON array, not an object'):
        parse([WF])


def test_images_plain_and_data_uri_base64_are_decoded() -> None:
    b = base64.b64encode(PNG).decode()
    req = parse({"workflow": WF, "images": [
        {"name": "a.png", "image": b},
        {"name": "b.png", "image": "data:image/png;base64," + b},
        {"name": "c.png", "image": b.rstrip("=")},  # padding left out
    ]})
    assert [(i.name, i.data) for i in req.images] == [("a.png", PNG), ("b.png", PNG),
                                                       ("c.png", PNG)]


@pytest.mark.parametrize("name", ["../x.png", "sub/x.png", "sub\\x.png", ".hidden.png", "",
                                  "..", None, 3, "a\nb.png", "a\x00.png", "a\x1b[2J.png",
                                  "x" * 201 + ".png"])
def test_image_names_must_be_plain_file_names(name: object) -> None:
    with pytest.raises(JobInputInvalid, match=r'images\[0\]: field "name"'):
        parse({"workflow": WF, "images": [{"name": name, "image": "aGVsbG8="}]})


def test_image_that_is_not_base64_names_its_index() -> None:
    with pytest.raises(JobInputInvalid, match=r'images\[1\]: field "image" is not valid base64'):
        parse({"workflow": WF, "images": [{"name": "a.png", "image": "aGVsbG8="},
                                          {"name": "b.png", "image": "***"}]})


def test_duplicate_image_names_are_refused() -> None:
    with pytest.raises(JobInputInvalid, match=r'"a\.png" is used twice'):
        parse({"workflow": WF, "images": [{"name": "a.png", "image": "aGVsbG8="}] * 2})


def test_images_must_be_a_list_of_objects() -> None:
    with pytest.raises(JobInputInvalid, match='"images" is object'):
        parse({"workflow": WF, "images": {"name": "a.png"}})
    with pytest.raises(JobInputInvalid, match=r"images\[0\] is string"):
        parse({"workflow": WF, "images": ["a.png"]})


def test_timeout_from_input_overrides_the_default() -> None:
    assert parse({"workflow": WF, "timeout": 2.5}, default_timeout=9).timeout == 2.5


@pytest.mark.parametrize("timeout", [0, -1, "10", True, float("nan")])
def test_bad_timeout_is_refused(timeout: object) -> None:
    with pytest.raises(JobInputInvalid, match='"timeout"'):
        parse({"workflow": WF, "timeout": timeout})


@pytest.mark.parametrize("timeout", ["Infinity", "1e308", "3601"])
def test_a_timeout_over_the_workers_cap_is_refused_naming_the_setting(timeout: str) -> None:
    """A stranger's timeout would hold the one-job queue (and overflow every wait)."""
    with pytest.raises(JobInputInvalid) as caught:
        parse(f'{{"workflow": {json.dumps(WF)}, "timeout": {timeout}}}')
    assert 'field "timeout"' in caught.value.message
    assert "3600" in caught.value.message
    assert "COMFY_WORKER_MAX_JOB_TIMEOUT" in (caught.value.hint or "")


def test_the_operator_sets_the_timeout_cap_and_the_default_is_always_allowed() -> None:
    settings = load_settings(env={"COMFY_WORKER_MAX_JOB_TIMEOUT": "30",
                                  "COMFY_WORKER_JOB_TIMEOUT": "60"})
    limits = JobLimits.of(settings)
    assert limits.max_timeout == 60
    req = parse_job_input({"workflow": WF, "timeout": 60}, default_timeout=60, limits=limits)
    assert req.timeout == 60
    with pytest.raises(JobInputInvalid, match="over the most this worker allows, 60 s"):
        parse_job_input({"workflow": WF, "timeout": 61}, default_timeout=60, limits=limits)


def test_the_whole_input_as_a_json_string_is_decoded() -> None:
    req = parse(json.dumps({"workflow": WF, "timeout": 5}))
    assert req.workflow == WF and req.timeout == 5.0
    with pytest.raises(JobInputInvalid, match='job "input" is a string but not valid JSON'):
        parse("{nope")
    with pytest.raises(JobInputInvalid, match='job "input" is a JSON array, not an object'):
        parse(json.dumps([WF]))


def test_images_by_url_are_kept_for_fetching_and_checked() -> None:
    req = parse({"workflow": WF, "images": [
        {"name": "a.png", "url": "https://cdn.example/a.png?X-Amz-Signature=s3cret"}]})
    (image,) = req.images
    assert image.url == "https://cdn.example/a.png?X-Amz-Signature=s3cret" and image.data == b""


@pytest.mark.parametrize(("item", "fragment"), [
    ({"name": "a.png", "url": "ftp://host/a.png"}, "is not an http(s) URL"),
    ({"name": "a.png", "url": "file:///etc/passwd"}, "is not an http(s) URL"),
    ({"name": "a.png", "url": ""}, 'field "url" is an empty string'),
    ({"name": "a.png", "url": 5}, 'field "url" is number'),
    ({"name": "a.png", "url": "https:///nohost"}, "is not an http(s) URL"),
    ({"name": "a.png", "url": "https://h/a.png", "image": "eA=="}, 'both "image" and "url"'),
])
def test_bad_image_urls_name_the_image_and_field(item: dict, fragment: str) -> None:
    with pytest.raises(JobInputInvalid) as err:
        parse({"workflow": WF, "images": [item]})
    assert fragment in err.value.message
    assert err.value.message.startswith("images[0]")


def test_url_messages_never_show_the_query_or_credentials() -> None:
    from comfy_worker.net.redact import redact_url

    assert redact_url("https://u:pw@h.example:8443/p/a.png?sig=x#f") == \
        "https://h.example:8443/p/a.png"
    with pytest.raises(JobInputInvalid) as err:
        parse({"workflow": WF, "images": [{"name": "a", "url": "gopher://h/x?token=abc"}]})
    assert "token" not in str(err.value) and "abc" not in str(err.value)


def test_a_body_nested_past_the_limit_is_refused_without_recursing() -> None:
    """A stranger's [[[[...]]]] (decoded by RunPod's own JSON) never reaches a walk."""
    deep: object = WF
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(JobInputInvalid, match="nested deeper than 128 levels"):
        parse({"workflow": WF, "extra": deep})
    with pytest.raises(JobInputInvalid, match="nested deeper than 128 levels"):
        parse(json.dumps({"workflow": "[" * 200 + "]" * 200}))


@pytest.mark.parametrize(("text", "says"), [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 128 levels"),
    ('{"w": ' + "9" * 5000 + "}", "a number of thousands of digits"),
    (b"\xff{}", "not UTF-8 text"),
])
def test_json_a_stranger_sends_fails_as_a_value_error_that_says_why(text: str | bytes,
                                                                    says: str) -> None:
    with pytest.raises(ValueError, match=says):
        loads(text)
    assert loads("[" * 128 + "]" * 128) is not None  # the limit itself is fine


# --- the partner (API) nodes' key: worker-comfyui's comfy_org_api_key ----------------------


def test_a_comfy_org_api_key_is_read_as_a_secret_that_never_shows() -> None:
    from comfy_worker.config import Secret

    req = parse({"workflow": WF, "comfy_org_api_key": " comfyui-abc123 "})
    assert req.comfy_org_api_key == Secret("comfyui-abc123")
    assert "comfyui-abc123" not in repr(req) and "comfyui-abc123" not in str(req)


def test_the_default_key_applies_only_to_a_job_that_brings_none() -> None:
    from comfy_worker.config import Secret

    default = Secret("comfyui-operator")
    assert parse_job_input({"workflow": WF}, default_timeout=1,
                           default_api_key=default).comfy_org_api_key == default
    assert parse_job_input({"workflow": WF, "comfy_org_api_key": ""}, default_timeout=1,
                           default_api_key=default).comfy_org_api_key == default
    own = parse_job_input({"workflow": WF, "comfy_org_api_key": "comfyui-own"},
                          default_timeout=1, default_api_key=default)
    assert own.comfy_org_api_key == Secret("comfyui-own")
    assert parse({"workflow": WF}).comfy_org_api_key is None


@pytest.mark.parametrize(("raw", "fragment"), [
    (123, "is number"), (["SECRETKEY"], "is array"),
    ("SECRETKEY\nx", "unprintable"), ("SECRETKEY" * 500, "4500 characters")])
def test_a_key_that_is_not_a_key_is_refused_without_echoing_it(raw: object,
                                                                fragment: str) -> None:
    with pytest.raises(JobInputInvalid, match='"comfy_org_api_key"') as info:
        parse({"workflow": WF, "comfy_org_api_key": raw})
    assert fragment in info.value.message
    assert "SECRETKEY" not in str(info.value)


def test_both_edges_read_a_key_by_one_rule_up_to_its_length_limit() -> None:
    from comfy_worker.config import Secret
    from comfy_worker.entrypoints.api_v2 import wire
    from comfy_worker.errors import RequestInvalid
    from comfy_worker.job.request import MAX_API_KEY_CHARS

    longest, over = "k" * MAX_API_KEY_CHARS, "k" * (MAX_API_KEY_CHARS + 1)
    assert parse({"workflow": WF, "comfy_org_api_key": longest}
                 ).comfy_org_api_key == Secret(longest)
    assert wire.parse_extra_data({"api_key_comfy_org": longest}) == Secret(longest)
    with pytest.raises(JobInputInvalid, match=f"{MAX_API_KEY_CHARS + 1} characters"):
        parse({"workflow": WF, "comfy_org_api_key": over})
    with pytest.raises(RequestInvalid, match=f"{MAX_API_KEY_CHARS + 1} characters"):
        wire.parse_extra_data({"api_key_comfy_org": over})
    # the limit counts what was sent, blanks around the key included, on both edges
    padded = longest + " "
    with pytest.raises(JobInputInvalid):
        parse({"workflow": WF, "comfy_org_api_key": padded})
    with pytest.raises(RequestInvalid):
        wire.parse_extra_data({"api_key_comfy_org": padded})
    for blank in ("", "  "):  # the job input falls back to the default; v2 refuses
        assert parse({"workflow": WF, "comfy_org_api_key": blank}).comfy_org_api_key is None
        with pytest.raises(RequestInvalid, match="not a key"):
            wire.parse_extra_data({"api_key_comfy_org": blank})
