"""Models a workflow declares (``properties.models``) and Hugging Face URL parsing."""

from __future__ import annotations

from typing import Any

import pytest
from support.workflow_cases import legacy_names, legacy_template, template, template_names

from comfy_worker.errors import LockfileError
from comfy_worker.lockfile import HfSource, LockEntry, Lockfile
from comfy_worker.workflow.declared import DeclaredModel, HfUrl, declared_models, hf_resolve_parts
from comfy_worker.workflow.lock_plan import plan_lock


def test_default_template_declares_its_checkpoint() -> None:
    assert declared_models(template("default")) == [DeclaredModel(
        name="v1-5-pruned-emaonly-fp16.safetensors",
        url="https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
        "v1-5-pruned-emaonly-fp16.safetensors?download=true",
        directory="checkpoints", node_id="4")]


def test_models_declared_inside_subgraph_definitions_are_found() -> None:
    wf = template("01_qwen_t2i_subgraphed")
    sub_id = wf["definitions"]["subgraphs"][0]["id"]
    found = declared_models(wf)
    assert len(found) == 4
    assert all(m.node_id.startswith(f"{sub_id}:") for m in found)
    assert {m.directory for m in found} == {"diffusion_models", "text_encoders", "vae", "loras"}


def test_every_template_declaration_is_well_formed_and_nearly_all_are_hugging_face() -> None:
    total = hf = 0
    docs = [template(n) for n in template_names()] + [legacy_template(n)
                                                     for n in legacy_names()]
    for doc in docs:
        for model in declared_models(doc):
            total += 1
            assert model.name and model.directory and model.url.startswith("https://")
            parts = hf_resolve_parts(model.url)
            if parts is not None:
                hf += 1
                assert parts.path and parts.repo
            else:
                assert "civitai.com" in model.url, model.url
    assert total > 1000 and hf > 0.95 * total


def test_same_model_on_two_nodes_is_listed_twice_and_bad_entries_skipped() -> None:
    entry = {"name": "a.safetensors", "url": "https://huggingface.co/o/r/resolve/main/a.safetensors",
             "directory": "loras"}
    doc = {"nodes": [
        {"id": 1, "properties": {"models": [entry, {"name": 5}, "junk"]}},
        {"id": 2.0, "properties": {"models": [entry]}},
        {"id": 3, "properties": {"models": "not a list"}},
        {"id": 4},
    ], "models": [entry]}
    assert [m.node_id for m in declared_models(doc)] == ["1", "2", ""]
    assert declared_models("nope") == []   # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "parts"), [
    ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev-fp8.safetensors",
     HfUrl("Comfy-Org/flux1-dev", "main", "flux1-dev-fp8.safetensors", "model")),
    ("https://huggingface.co/o/r/resolve/main/split_files/vae/ae.safetensors?download=true",
     HfUrl("o/r", "main", "split_files/vae/ae.safetensors", "model")),
    ("https://huggingface.co/datasets/o/d/resolve/v1.0/data/x.bin",
     HfUrl("o/d", "v1.0", "data/x.bin", "dataset")),
    ("https://huggingface.co/o/r/resolve/refs%2Fpr%2F3/a%20b/c%2B.safetensors",
     HfUrl("o/r", "refs/pr/3", "a b/c+.safetensors", "model")),
    ("https://huggingface.co/o/r/blob/0123abc/m.gguf", HfUrl("o/r", "0123abc", "m.gguf", "model")),
    ("https://huggingface.co/gpt2/resolve/main/model.safetensors",
     HfUrl("gpt2", "main", "model.safetensors", "model")),
])
def test_hf_urls_are_split(url: str, parts: HfUrl) -> None:
    assert hf_resolve_parts(url) == parts


@pytest.mark.parametrize("url", [
    "https://civitai.com/api/download/models/1", "https://huggingface.co/o/r",
    "https://huggingface.co/o/r/tree/main", "https://huggingface.co/o/r/resolve/main/",
    "https://huggingface.co/o/r/resolve/main/../x", "ftp://huggingface.co/o/r/resolve/main/x",
    "not a url", "",
])
def test_other_urls_are_not_hugging_face_files(url: str) -> None:
    assert hf_resolve_parts(url) is None


# --- declared hashes -------------------------------------------------------------------


def test_newer_templates_declare_hash_and_hash_type_which_are_carried() -> None:
    found = declared_models(template("hidream_e1_full"))
    assert found and all(m.hash_type == "SHA256" and len(m.hash or "") == 64 for m in found)
    plan = plan_lock(template("hidream_e1_full"), Lockfile())
    assert {w.path: w.sha256 for w in plan.to_resolve} == {
        f"{m.directory}/{m.name}": m.hash for m in found}


def _doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": [{"id": i + 1, "properties": {"models": [e]}}
                      for i, e in enumerate(entries)]}


ENTRY = {"name": "a.safetensors", "directory": "loras",
         "url": "https://huggingface.co/o/r/resolve/main/a.safetensors"}


def test_a_declared_sha256_is_normalised_and_travels_with_its_entry() -> None:
    digest = "AB" * 32
    wanted = plan_lock(_doc({**ENTRY, "hash": digest, "hash_type": "sha-256"}),
                       Lockfile()).to_resolve
    assert [(w.sha256, w.sha256_node) for w in wanted] == [("ab" * 32, "1")]
    # the same file declared again without a hash keeps the declared one
    wanted = plan_lock(_doc(ENTRY, {**ENTRY, "hash": digest, "hash_type": "SHA256"}),
                       Lockfile()).to_resolve
    assert [(w.sha256, w.sha256_node, w.nodes) for w in wanted] == [
        ("ab" * 32, "2", ("1", "2"))]


def test_hashes_of_other_kinds_or_not_strings_are_not_used() -> None:
    for extra in ({"hash": "d41d8cd98f00b204e9800998ecf8427e", "hash_type": "MD5"},
                  {"hash": 5, "hash_type": "SHA256"}, {"hash": "ab" * 32}):
        [wanted] = plan_lock(_doc({**ENTRY, **extra}), Lockfile()).to_resolve
        assert wanted.sha256 is None, extra
    assert declared_models(_doc({**ENTRY, "hash": 5}))[0].hash is None


def test_a_malformed_sha256_is_refused_naming_node_and_value() -> None:
    with pytest.raises(LockfileError, match=r'node 1: declared model "a.safetensors" has '
                       r'hash_type SHA256 but hash "nothex" is not 64 hex digits'):
        plan_lock(_doc({**ENTRY, "hash": "nothex", "hash_type": "SHA256"}), Lockfile())


def test_one_file_declared_with_two_hashes_is_refused_naming_both() -> None:
    with pytest.raises(LockfileError) as err:
        plan_lock(_doc({**ENTRY, "hash": "a" * 64, "hash_type": "SHA256"},
                       {**ENTRY, "hash": "b" * 64, "hash_type": "SHA256"}), Lockfile())
    assert f"{'a' * 64} (node 1) and {'b' * 64} (node 2)" in err.value.message


def test_a_declared_sha256_the_lock_contradicts_is_refused_naming_both() -> None:
    source = HfSource(repo="o/r", revision="0" * 40, file="a.safetensors")
    lock = Lockfile(models=(LockEntry(path="loras/a.safetensors", source=source,
                                      sha256="c" * 64, size=10),))
    with pytest.raises(LockfileError) as err:
        plan_lock(_doc({**ENTRY, "hash": "D" * 64, "hash_type": "SHA256"}), lock)
    assert err.value.message == (f'"loras/a.safetensors" is locked with sha256 {"c" * 64}, '
                                 f'but the workflow declares {"d" * 64} (node 1)')
    agreeing = plan_lock(_doc({**ENTRY, "hash": "C" * 64, "hash_type": "SHA256"}), lock)
    assert (agreeing.to_resolve, agreeing.already_locked) == ((), ("loras/a.safetensors",))
