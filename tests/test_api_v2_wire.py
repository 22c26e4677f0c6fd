"""The Comfy API v2's pure parts (entrypoints/api_v2/wire.py): every field a stranger
sends is checked, and every answer reads back through comfy-sdk 0.5.0's own models and
exception mapping (the SDK is the authority for what must come out right)."""

from __future__ import annotations

import pytest
from comfy_low.errors import error_from_envelope
from comfy_low.models import Progress
from comfy_sdk import exceptions as sdk
from comfy_sdk.router_exceptions import InternalError

from comfy_worker import errors
from comfy_worker.config import Secret
from comfy_worker.entrypoints.api_v2 import wire
from comfy_worker.job.events import NodeProgress, ReadaheadProgress, WaitProgress

# --- errors: what the SDK raises for each -------------------------------------------------


def sdk_error(err: errors.WorkerError) -> Exception:
    """The exception comfy-sdk raises for our answer to ``err``."""
    retry = wire.error_headers(err).get("Retry-After")
    return sdk.to_sdk_error(error_from_envelope(
        wire.error_status(err), wire.error_body(err),
        retry_after=int(retry) if retry else None))


@pytest.mark.parametrize(("error", "status", "code", "sdk_class"), [
    (errors.JobNotFound("x"), 404, "not_found", sdk.NotFound),
    (errors.AssetNotFound("x"), 404, "not_found", sdk.NotFound),
    (errors.Unauthorized("x"), 401, "unauthorized", sdk.Unauthorized),
    (errors.JobInputInvalid("x"), 422, "invalid_workflow", sdk.InvalidWorkflow),
    (errors.WorkflowFormatUi("x"), 422, "workflow_format_ui", sdk.WorkflowFormatUi),
    (errors.MissingAsset("x"), 422, "missing_asset", sdk.MissingAsset),
    (errors.HashMismatch("x"), 409, "hash_mismatch", sdk.HashMismatch),
    (errors.BlobNotFound("x"), 404, "blob_not_found", sdk.BlobNotFound),
    (errors.IdempotencyKeyReuse("x"), 422, "idempotency_key_reuse", sdk.IdempotencyKeyReuse),
    (errors.QueueFull("x"), 429, "queue_full", sdk.QueueFull),
    (errors.RequestInvalid("x"), 400, "invalid_request", sdk.ComfyError),
    (errors.MetadataInvalid("x"), 422, "metadata_invalid", sdk.ComfyError),
    (errors.InvalidCursor("x"), 400, "invalid_cursor", sdk.ComfyError),
    (errors.InvalidMetadataFilter("x"), 400, "invalid_metadata_filter", sdk.ComfyError),
    (errors.RequestTooLarge("x"), 413, "payload_too_large", sdk.ComfyError),
    (errors.WorkerStartFailed("x"), 422, "deployment_stopped", sdk.ComfyError),
    (errors.InternalError("x"), 500, "internal_error", InternalError),
])
def test_each_error_is_the_contracts_code_and_the_sdks_typed_exception(
        error: errors.WorkerError, status: int, code: str, sdk_class: type) -> None:
    assert wire.error_status(error) == status
    body = wire.error_body(error)
    assert body["error"]["code"] == code and body["error"]["message"] == "x"
    raised = sdk_error(error)
    assert type(raised) is sdk_class
    assert raised.code == code and raised.http_status == status  # type: ignore[attr-defined]


def test_queue_full_says_when_to_retry_in_whole_seconds() -> None:
    raised = sdk_error(errors.QueueFull("full"))
    assert isinstance(raised, sdk.QueueFull) and raised.retry_after == 10
    assert wire.error_headers(errors.JobInputInvalid("x")) == {}


def test_the_envelope_carries_our_reference_hint_and_details() -> None:
    body = wire.error_body(errors.WorkflowInvalid("bad node", hint="fix it",
                                                  details=[{"node_id": "3"}]))
    assert body == {"error": {"code": "invalid_workflow", "message": "bad node", "details": {
        "reference": "workflow-invalid", "hint": "fix it", "errors": [{"node_id": "3"}]}}}


# --- ids, hashes, keys --------------------------------------------------------------------


def test_ids_are_uuids_and_anything_else_names_nothing() -> None:
    minted = wire.new_id()
    assert wire.canonical_id(minted) == minted
    assert wire.canonical_id(minted.upper()) == minted
    for bad in ("", "../../etc", "x" * 100, "1234", minted + "?x=1", "{" + minted + "}x"):
        assert wire.canonical_id(bad) is None


def test_hashes_are_blake3_with_64_hex_digits_lowercased() -> None:
    good = "blake3:" + "AB" * 32
    assert wire.parse_hash(good, where="h") == good.lower()
    for bad in ("sha256:" + "a" * 64, "blake3:" + "a" * 63, "blake3:" + "g" * 64, 7, None,
                "blake3:" + "a" * 64 + "/../x"):
        with pytest.raises(errors.RequestInvalid, match="not a blake3 hash"):
            wire.parse_hash(bad, where="h")


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "a\r\nX-Evil: 1", "tab\there"])
def test_an_idempotency_key_must_be_1_to_255_printable_ascii(key: str) -> None:
    with pytest.raises(errors.RequestInvalid, match="Idempotency-Key"):
        wire.parse_idempotency_key(key)


def test_a_good_idempotency_key_is_kept_and_none_means_none() -> None:
    assert wire.parse_idempotency_key("2f0c-abc_1") == "2f0c-abc_1"
    assert wire.parse_idempotency_key(None) is None


# --- labels -------------------------------------------------------------------------------


def test_labels_follow_the_contracts_rules() -> None:
    assert wire.parse_labels({"client": "acme", "run.id-7_x": "\u00e9t\u00e9"}) == {
        "client": "acme", "run.id-7_x": "\u00e9t\u00e9"}
    assert wire.parse_labels(None) == {}


@pytest.mark.parametrize(("raw", "fragment"), [
    ("a string", "expected an object"), ({"k" * 41: "v"}, "is not 1 to 40"),
    ({"bad key": "v"}, "is not 1 to 40"), ({"k": 7}, "not a string"),
    ({"k": "\u00e9" * 129}, "over 256 bytes"), ({"k": "a\nb"}, "control"),
    ({"k": "a\u202eb"}, "bidirectional"), ({f"k{i}": "v" for i in range(17)}, "17 labels")])
def test_labels_that_break_a_rule_are_metadata_invalid(raw: object, fragment: str) -> None:
    with pytest.raises(errors.MetadataInvalid, match=fragment):
        wire.parse_labels(raw)


# --- submissions --------------------------------------------------------------------------

WF = {"9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0]}}}


def test_a_submission_reads_workflow_labels_key_and_our_extensions() -> None:
    sub = wire.parse_submission({"workflow": WF, "metadata": {"a": "b"}, "timeout": 5,
                                 "extra_data": {"api_key_comfy_org": "comfyui-k"},
                                 "priority": 3})
    assert sub.workflow == WF and sub.labels == {"a": "b"}
    assert sub.api_key == Secret("comfyui-k") and sub.extensions == {"timeout": 5}
    assert "comfyui-k" not in repr(sub)


@pytest.mark.parametrize(("body", "error", "fragment"), [
    ([WF], errors.RequestInvalid, "not an object"),
    ({}, errors.JobInputInvalid, '"workflow" is missing'),
    ({"workflow": [1]}, errors.JobInputInvalid, "expected an object"),
    ({"workflow": {"nodes": [], "links": []}}, errors.WorkflowFormatUi, "UI format"),
    ({"workflow": WF, "webhook_url": "https://x"}, errors.RequestInvalid, "reserved"),
    ({"workflow": WF, "extra_data": {"api_key_comfy_org": "k", "x": 1}},
     errors.RequestInvalid, "accepts only"),
    ({"workflow": WF, "extra_data": "k"}, errors.RequestInvalid, "expected an object"),
    ({"workflow": WF, "extra_data": {"api_key_comfy_org": 7}}, errors.RequestInvalid,
     "not a key"),
    ({"workflow": WF, "metadata": "label"}, errors.MetadataInvalid, "expected an object"),
])
def test_submissions_that_break_the_contract_are_refused(body: object, error: type,
                                                         fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        wire.parse_submission(body)


def test_a_bad_key_is_named_by_its_length_never_shown() -> None:
    with pytest.raises(errors.RequestInvalid) as info:
        wire.parse_submission({"workflow": WF, "extra_data": {
            "api_key_comfy_org": "comfyui-SECRET\x00x"}})
    assert "SECRET" not in str(info.value)


# --- core/ASSET -----------------------------------------------------------------------------

A1, A2 = wire.new_id(), wire.new_id()


def ref(asset_id: object, **info: object) -> dict[str, object]:
    return {"__type": "core/ASSET", "info": {"id": asset_id, **info}}


def test_asset_references_are_found_anywhere_in_inputs_and_replaced_by_file_names() -> None:
    wf = {"10": {"class_type": "LoadImage", "inputs": {"image": ref(A1.upper(), hash="x")}},
          "11": {"class_type": "Batch", "inputs": {"images": [ref(A2), {"x": ref(A1)}]}},
          "9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0]}}}
    refs = wire.find_asset_refs(wf)
    assert [(r.node_id, r.input_name, r.asset_id) for r in refs] == [
        ("10", "image", A1), ("11", "images", A2), ("11", "images", A1)]
    out = wire.with_assets(wf, {A1: "a.png", A2: "b.png"})
    assert out["10"]["inputs"]["image"] == "a.png"
    assert out["11"]["inputs"]["images"] == ["b.png", {"x": "a.png"}]
    assert wf["10"]["inputs"]["image"]["__type"] == "core/ASSET"  # the caller's is untouched


@pytest.mark.parametrize("bad", [
    {"__type": "core/ASSET"}, {"__type": "core/ASSET", "info": "x"}, ref(None), ref(7),
    ref("../../etc/passwd"), ref("x" * 1000)])
def test_a_malformed_reference_is_missing_asset_naming_node_and_input(bad: object) -> None:
    with pytest.raises(errors.MissingAsset, match="node 10 input 'image'") as info:
        wire.find_asset_refs({"10": {"class_type": "LoadImage", "inputs": {"image": bad}}})
    assert len(str(info.value)) < 1000


def test_one_job_references_at_most_64_assets() -> None:
    wf = {"1": {"class_type": "X", "inputs": {"i": [ref(wire.new_id()) for _ in range(65)]}}}
    with pytest.raises(errors.MissingAsset, match="65 assets"):
        wire.find_asset_refs(wf)


@pytest.mark.parametrize(("file_path", "content_type", "tail"), [
    ("photo.png", "image/png", "-photo.png"), ("in/sub/cat dog.jpg", "image/jpeg",
                                              "-cat_dog.jpg"),
    ("..hidden", "image/png", "-hidden.png"), (None, "video/mp4", "-asset.mp4"),
    ("x" * 300 + ".png", "image/png", "x" * 64 + ".png"), ("a.tar.gz", "application/gzip",
                                                          "-a.tar.gz")])
def test_an_assets_comfyui_name_is_a_plain_unique_file_name(
        file_path: str | None, content_type: str, tail: str) -> None:
    name = wire.input_name(A1, file_path, content_type)
    assert name.startswith(f"asset-{A1}-") and name.endswith(tail)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert len(name) < 140


# --- uploads' fields ----------------------------------------------------------------------


@pytest.mark.parametrize("good", ["photo.png", "inputs/photo.png", "a b.PNG", "\u00e9t\u00e9.jpg"])
def test_file_paths_are_relative_names(good: str) -> None:
    assert wire.parse_file_path(good) == good


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x.png", "a/../../x", "a//b", "C:x.png",
                                 "\\\\server\\x", "a\x00b", "x\n.png", "./x", "x" * 600, 7])
def test_file_paths_that_could_leave_a_folder_are_refused(bad: object) -> None:
    with pytest.raises(errors.RequestInvalid, match="file_path"):
        wire.parse_file_path(bad)


def test_content_types_are_mime_types_else_guessed_from_the_name() -> None:
    assert wire.parse_content_type("image/png", "x.bin") == "image/png"
    assert wire.parse_content_type(None, "x.webp") == "image/webp"
    assert wire.parse_content_type("", "x") == "application/octet-stream"
    for bad in ("png", "image/png\r\nX: y", "a/b/c", 5):
        with pytest.raises(errors.RequestInvalid, match="content_type"):
            wire.parse_content_type(bad, None)


# --- the job list ---------------------------------------------------------------------------


def test_list_queries_read_statuses_limit_cursor_and_label_filters() -> None:
    q = wire.parse_list_query([("status", "queued,running"), ("status", "failed"),
                               ("limit", "7"), ("cursor", wire.encode_cursor(41)),
                               ("metadata[client]", "acme")])
    assert q == wire.ListQuery(frozenset({"queued", "running", "failed"}), 7, 41,
                               (("client", "acme"),))
    assert wire.parse_list_query([]) == wire.ListQuery()


@pytest.mark.parametrize(("params", "error", "fragment"), [
    ([("limit", "0")], errors.RequestInvalid, "1 to 100"),
    ([("limit", "101")], errors.RequestInvalid, "1 to 100"),
    ([("limit", "ten")], errors.RequestInvalid, "1 to 100"),
    ([("status", "done")], errors.RequestInvalid, "not a job status"),
    ([("cursor", "bm9wZQ")], errors.InvalidCursor, "not issued"),
    ([("cursor", "!" * 500)], errors.InvalidCursor, "not issued"),
    ([(f"metadata[k{i}]", "v") for i in range(4)], errors.InvalidMetadataFilter, "4 metadata"),
    ([("metadata[bad key]", "v")], errors.InvalidMetadataFilter, "1 to 40"),
    ([("metadata[k]", "a\nb")], errors.InvalidMetadataFilter, "control")])
def test_bad_list_queries_are_refused(params: list[tuple[str, str]], error: type,
                                      fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        wire.parse_list_query(params)


# --- answers --------------------------------------------------------------------------------


def test_times_are_iso_8601_with_their_time_zone() -> None:
    assert wire.iso(0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize("event", [
    NodeProgress("3", "KSampler", 21.0, 50.0, 42.0, 11, 31),
    NodeProgress(None, None, None, None, 0.0, 0, 2),
    WaitProgress(1, 3, 5_000_000, 9_000_000, 2e6, ("checkpoints/x.safetensors",)),
    ReadaheadProgress(10_000_000, 20_000_000, 1.0)])
def test_every_progress_event_is_a_valid_progress_snapshot(event: object) -> None:
    snapshot = wire.progress_json(event)  # type: ignore[arg-type]
    assert snapshot is not None
    Progress.model_validate(snapshot)


def test_sampler_steps_read_as_the_contract_shows_them() -> None:
    out = wire.progress_json(NodeProgress("3", "KSampler", 21.0, 50.0, 42.0, 11, 31))
    assert out == {"value": 0.42, "nodes_done": 11, "nodes_total": 31, "current_node": "3",
                   "current_node_class": "KSampler", "step": 21, "steps": 50,
                   "message": "KSampler 21/50"}


@pytest.mark.parametrize(("name", "content_type", "video", "kind"), [
    ("a.png", "image/png", False, "image"), ("a.mp4", "video/mp4", False, "video"),
    ("a.webp", "image/webp", True, "video"), ("a.flac", "audio/flac", False, "audio"),
    ("a.txt", "text/plain", False, "text"), ("a.latent", "application/octet-stream", False,
                                             "latent"),
    ("a.glb", "model/gltf-binary", False, "file")])
def test_output_kinds(name: str, content_type: str, video: bool, kind: str) -> None:
    assert wire.output_kind(name, content_type, video=video) == kind


def test_a_node_error_becomes_the_jobs_error_with_the_node() -> None:
    err = errors.WorkflowExecutionError("KSampler failed: boom", hint="check the input",
                                        details=[{"node_id": "3", "node_type": "KSampler",
                                                  "traceback": ["a\n", "b\n"]}])
    out = wire.job_error_json(err)
    assert out["code"] == "node_execution_error" and out["node_id"] == "3"
    assert out["class_type"] == "KSampler" and out["traceback"] == "a\nb\n"
    assert out["hint"] == "check the input"
