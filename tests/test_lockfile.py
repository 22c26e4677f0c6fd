"""models.lock.json: every invalid entry is rejected naming the entry, field and fix."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.errors import LockfileError
from comfy_worker.lockfile import (
    HfSource,
    LockEntry,
    Lockfile,
    UrlSource,
    dump_lock,
    load_lock,
    parse_lock,
    write_lock,
)

COMMIT = "462165984030d82259a11f4367a4eed129e94a7b"
SHA = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"

VALID: dict[str, Any] = {
    "version": 1,
    "models": [
        {
            "path": "checkpoints/sd_xl_base_1.0.safetensors",
            "source": {
                "type": "huggingface",
                "repo": "stabilityai/stable-diffusion-xl-base-1.0",
                "revision": COMMIT,
                "file": "sd_xl_base_1.0.safetensors",
            },
            "sha256": SHA,
            "size": 6938078334,
        },
        {
            "path": "loras/style.safetensors",
            "source": {"type": "url", "url": "https://example.org/style.safetensors"},
            "sha256": "A" * 64,
            "size": 1234,
        },
    ],
}


def with_change(change: dict[str, Any], index: int = 0) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    entry = data["models"][index]
    for key, value in change.items():
        target = entry
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return data


_DELETE = object()


def test_valid_lock_parses_into_typed_entries() -> None:
    lock = parse_lock(VALID)
    assert lock.version == 1
    first, second = lock.models
    assert first.path == "checkpoints/sd_xl_base_1.0.safetensors"
    assert first.folder == "checkpoints"
    assert first.source == HfSource(
        repo="stabilityai/stable-diffusion-xl-base-1.0",
        revision=COMMIT,
        file="sd_xl_base_1.0.safetensors",
    )
    assert second.source == UrlSource(url="https://example.org/style.safetensors")
    assert second.sha256 == "a" * 64, "sha256 is normalised to lower case"


@pytest.mark.parametrize(
    ("change", "index", "expected"),
    [
        ({"path": "nonsense/x.safetensors"}, 0, 'unknown models folder "nonsense"'),
        ({"path": "/abs/checkpoints/x.safetensors"}, 0, "is absolute"),
        ({"path": "checkpoints/../../etc/passwd"}, 0, 'contains ".."'),
        ({"path": "checkpoints//x.safetensors"}, 0, "empty"),
        ({"path": "x.safetensors"}, 0, "names no models folder"),
        ({"path": "checkpoints\\x.safetensors"}, 0, "backslash"),
        ({"path": "checkpoints/.x.incomplete"}, 0, "reserved name"),
        ({"path": _DELETE}, 0, 'field "path"'),
        (
            {"source.revision": "main"},
            0,
            'field "source.revision" is "main", not a 40-hex commit',
        ),
        ({"source.revision": "v1.0"}, 0, "not a 40-hex commit"),
        ({"source.revision": COMMIT[:12]}, 0, "not a 40-hex commit"),
        ({"source.repo": "no spaces allowed"}, 0, 'field "source.repo"'),
        ({"source.file": "../x"}, 0, 'field "source.file"'),
        ({"source.type": "s3"}, 0, 'field "source.type"'),
        ({"source.url": "ftp://example.org/x"}, 1, 'field "source.url"'),
        ({"sha256": "abc"}, 0, 'field "sha256" is "abc", not 64 hex characters'),
        ({"sha256": 12}, 0, 'field "sha256" is 12 (a number), not 64 hex characters'),
        ({"sha256": "g" * 64}, 0, 'field "sha256"'),
        ({"sha256": _DELETE}, 0, 'field "sha256" is missing'),
        ({"sha256": None}, 0, 'field "sha256" is null'),
        ({"size": _DELETE}, 0, 'field "size" is missing'),
        ({"size": None}, 0, 'field "size" is null'),
        ({"size": -1}, 0, 'field "size" is -1'),
        ({"size": "12"}, 0, 'field "size" is "12" (a string)'),
        ({"size": True}, 0, 'field "size" is true (a boolean)'),
        ({"path": None}, 0, 'field "path" is null'),
        ({"path": ["a"]}, 0, 'field "path" is ["a"] (an array)'),
        ({"source": None}, 0, 'field "source" is null, expected an object'),
        ({"source.repo": _DELETE}, 0, 'field "source.repo" is missing'),
        ({"colour": "blue"}, 0, 'unknown field(s) ["colour"]'),
    ],
)
def test_invalid_entry_is_rejected_naming_entry_and_field(
    change: dict[str, Any], index: int, expected: str
) -> None:
    with pytest.raises(LockfileError) as info:
        parse_lock(with_change(change, index), origin="lock.json")
    message = str(info.value)
    assert expected in message
    assert f"models[{index}]" in message
    assert info.value.hint, "every lock error names a fix"


def test_branch_revision_error_suggests_lock_add() -> None:
    with pytest.raises(LockfileError) as info:
        parse_lock(with_change({"source.revision": "main"}))
    assert "comfy-worker lock add hf://stabilityai/stable-diffusion-xl-base-1.0@main/" in str(
        info.value
    )


def test_duplicate_paths_are_rejected_naming_both_entries() -> None:
    data = copy.deepcopy(VALID)
    dup = copy.deepcopy(data["models"][0])
    dup["path"] = "checkpoints/SD_XL_BASE_1.0.safetensors"  # same file on case-insensitive FS
    data["models"].append(dup)
    with pytest.raises(LockfileError, match=r"models\[2\].*duplicate path.*also models\[0\]"):
        parse_lock(data)


def test_extra_folders_admit_custom_node_folders() -> None:
    data = with_change({"path": "ipadapter_custom/x.safetensors"})
    with pytest.raises(LockfileError, match="extra_folders"):
        parse_lock(data)
    data["extra_folders"] = ["ipadapter_custom"]
    assert parse_lock(data).models[0].folder == "ipadapter_custom"
    data["extra_folders"] = ["../escape"]
    with pytest.raises(LockfileError, match='field "extra_folders"'):
        parse_lock(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "top level is [] (an array), expected an object"),
        ({"models": []}, 'field "version" is missing'),
        ({"version": None, "models": []}, 'field "version" is null'),
        ({"version": True, "models": []}, 'field "version" is true (a boolean)'),
        ({"version": 2, "models": []}, 'field "version" is 2'),
        ({"version": 1}, 'field "models" is missing'),
        ({"version": 1, "models": {}}, 'field "models" is {} (an object), expected an array'),
        ({"version": 1, "models": [], "extra": 1}, 'unknown top-level field(s) ["extra"]'),
        ({"version": 1, "models": ["x"]}, 'models[0] is "x" (a string), expected an object'),
    ],
)
def test_malformed_top_level_is_rejected(data: object, expected: str) -> None:
    with pytest.raises(LockfileError) as info:
        parse_lock(data)
    assert expected in str(info.value)
    assert not re.search(r"None|NoneType|dict|list|\bstr\b|True|False", str(info.value)), \
        "messages use JSON type names"


def test_load_lock_reports_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(LockfileError, match="does not exist") as info:
        load_lock(tmp_path / "missing.json")
    assert "--lock" in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,,}')
    with pytest.raises(LockfileError, match=r"not valid JSON: .*line 1 column"):
        load_lock(bad)


def test_write_then_load_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    lock = parse_lock(VALID)
    target = tmp_path / "sub" / "models.lock.json"
    write_lock(lock, target)
    assert load_lock(target) == lock
    assert sorted(p.name for p in target.parent.iterdir()) == ["models.lock.json"]
    assert json.loads(dump_lock(lock)) == parse_lock(VALID).to_json()


def test_with_entry_adds_sorted_and_refuses_silent_overwrite() -> None:
    lock = parse_lock(VALID)
    entry = LockEntry(
        path="vae/sdxl_vae.safetensors",
        source=UrlSource("https://example.org/vae.safetensors"),
        sha256="b" * 64,
        size=10,
    )
    grown = lock.with_entry(entry)
    assert [m.path for m in grown.models] == sorted(m.path for m in grown.models)
    assert grown.entry("vae/sdxl_vae.safetensors") == entry
    with pytest.raises(LockfileError, match="already locked") as info:
        grown.with_entry(entry)
    assert "--replace" in str(info.value)
    replaced = grown.with_entry(
        LockEntry(entry.path, entry.source, "c" * 64, 11), replace=True
    )
    assert replaced.entry(entry.path) == LockEntry(entry.path, entry.source, "c" * 64, 11)
    assert len(replaced.models) == len(grown.models)


def test_with_entry_validates_the_new_entry() -> None:
    bad = LockEntry(
        path="../x.safetensors", source=UrlSource("https://e.org/x"), sha256="a" * 64, size=1
    )
    with pytest.raises(LockfileError, match=re.escape('contains ".."')):
        Lockfile().with_entry(bad)


def test_shipped_default_lock_is_valid() -> None:
    shipped = Path(__file__).resolve().parent.parent / "models.lock.json"
    if not shipped.exists():
        pytest.fail("models.lock.json is missing from the repository root")
    lock = load_lock(shipped)
    assert lock.models, "the default lock pins at least one model"
    for entry in lock.models:
        assert entry.size > 0


# --- paths and URLs a stranger may send (a job's models use these rules too) ------------


@pytest.mark.parametrize(("path", "says"), [
    ("loras/a\nb.safetensors", "control character"),
    ("loras/a\x00.safetensors", "control character"),
    ("loras/a\x1b[31m.safetensors", "control character"),
    ("loras/" + "x" * 201 + ".safetensors", "over the 200-byte limit"),
    ("loras/" + "é" * 101, "over the 200-byte limit"),  # 202 bytes in UTF-8
    ("loras/" + "/".join(["d" * 100] * 11) + "/x.safetensors", "over the 1024-byte limit"),
])
def test_a_path_with_a_control_character_or_a_name_too_long_is_refused(
        path: str, says: str) -> None:
    with pytest.raises(LockfileError, match=re.escape(says)) as err:
        parse_lock(with_change({"path": path}))
    assert "\n" not in err.value.message and "\x1b" not in err.value.message


def test_names_up_to_the_limit_are_accepted() -> None:
    lock = parse_lock(with_change({"path": "loras/" + "x" * 188 + ".safetensors"}))
    assert len(lock.models[0].path.split("/")[1]) == 200


@pytest.mark.parametrize("url", ["http://[::1", "https://h:notaport/x", "https://h/a b",
                                 "https://h/a\nb", "https://" + "a" * 9000, "https:///x"])
def test_a_url_that_cannot_be_used_is_refused_without_echoing_its_secrets(url: str) -> None:
    with pytest.raises(LockfileError, match=r'field "source\.url"'):
        parse_lock(with_change({"source.url": url + "?sig=SECRET"}, 1))


def test_a_url_source_describes_itself_redacted() -> None:
    source = UrlSource("https://u:pw@bucket.example/m.safetensors?X-Amz-Signature=SECRET")
    assert source.describe() == "https://bucket.example/m.safetensors"
    assert source.to_json()["url"].endswith("SECRET")  # the lock keeps what it pins


def test_a_token_belongs_to_a_jobs_entry_never_to_a_lock() -> None:
    from comfy_worker.lockfile import KNOWN_FOLDERS, parse_entry

    raw = copy.deepcopy(VALID["models"][0])
    raw["source"]["token"] = "hf_SECRETtoken"
    with pytest.raises(LockfileError, match=r'"source\.token" is not allowed in a lock'):
        parse_lock({"version": 1, "models": [raw]})
    entry = parse_entry(raw, where="models[0]", folders=KNOWN_FOLDERS, job=True)
    assert isinstance(entry.source, HfSource) and entry.source.token is not None
    assert entry.source.token.reveal() == "hf_SECRETtoken"
    shown = repr(entry) + str(entry.to_json()) + entry.source.describe()
    assert "SECRET" not in shown
    plain = copy.deepcopy(VALID["models"][0])
    assert parse_entry(plain, where="m", folders=KNOWN_FOLDERS, job=True) == entry
    for bad in (5, "", "tok\nen"):
        raw["source"]["token"] = bad
        with pytest.raises(LockfileError, match=r'"source\.token" is not a token'):
            parse_entry(raw, where="models[0]", folders=KNOWN_FOLDERS, job=True)
