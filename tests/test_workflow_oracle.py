"""Live: ComfyUI's own editor (headless Chromium) and the converter, side by side.

Starts a real ComfyUI serving its frontend, drives ``app.loadGraphData`` +
``app.graphToPrompt`` through ``scripts/frontend_oracle.py`` and compares with
:func:`~comfy_worker.workflow.convert.ui_to_api` on a sample of templates, recorded cases
and fresh random variants (subgraphs, primitives, reroutes, muted/bypassed nodes). Needs
Playwright (pip) and Debian's chromium; skips without them, fails under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from support.comfyui import REPO_ROOT, comfyui_or_skip, skip_or_fail
from support.workflow_cases import CASES, FIXTURES, object_info, random_variant, template

from comfy_worker.errors import WorkflowConversionError
from comfy_worker.workflow.convert import ui_to_api

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

SAMPLE_TEMPLATES = ["default", "01_qwen_t2i_subgraphed", "sdxl_simple_example",
                    "flux_redux_model_example", "image_qwen_image_instantx_inpainting_controlnet",
                    "hidream_e1_1", "video_wan_vace_14B_ref2v", "image2image"]
SAMPLE_CASES = ["subgraph_nested_three_levels", "subgraph_two_instances",
                "primitive_two_targets_ranges_disagree", "bypass_behind_reroute_uses_wildcard",
                "primitive_through_reroute_takes_target_default", "duplicate_node_id",
                "filename_prefix_replacements", "dynamic_prompt_middle_choice",
                "subgraph_promoted_input_fed_by_primitive", "link_from_missing_node"]
RANDOM_SEEDS = range(5000, 5012)


def _oracle_module() -> ModuleType:
    path = REPO_ROOT / "scripts" / "frontend_oracle.py"
    spec = importlib.util.spec_from_file_location("frontend_oracle", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["frontend_oracle"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def oracle() -> Iterator[Any]:
    fo = _oracle_module()
    why = fo.browser_available()
    if why:
        skip_or_fail(why)
    install = comfyui_or_skip()
    with fo.running_comfyui(install.comfyui_dir, install.python) as url, \
            fo.FrontendOracle(url) as browser:
        yield browser


class Pinned(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def compare(oracle: Any, name: str, workflow: dict[str, Any], fixed: float | None,
            info: dict[str, Any]) -> None:
    try:
        expected, now = oracle.convert_timed(workflow, fixed_random=fixed)
    except Exception as exc:    # the editor cannot queue it: the converter must refuse
        with pytest.raises(WorkflowConversionError):
            ui_to_api(workflow, info, rng=Pinned(fixed or 0.0))
        print(f"{name}: both refuse ({str(exc).splitlines()[0][:80]})")
        return
    got = ui_to_api(workflow, info, rng=Pinned(fixed) if fixed is not None else None, now=now)
    assert got == expected, name
    assert list(got) == list(expected), name


def test_live_editor_matches_on_templates_cases_and_random_variants(oracle: Any) -> None:
    live_info = oracle.object_info()
    recorded = object_info()
    assert set(live_info) == set(recorded), "the test ComfyUI's nodes changed: regenerate " \
        "the fixtures with scripts/frontend_oracle.py"
    assert oracle.version() in ("", json.loads(
        (FIXTURES / "index.json").read_text())["frontend_version"])
    for name in SAMPLE_TEMPLATES:
        compare(oracle, name, template(name), None, live_info)
    for name in SAMPLE_CASES:
        workflow, fixed = CASES[name]()
        compare(oracle, name, workflow, fixed, live_info)
    names = sorted(json.loads((FIXTURES / "index.json").read_text())["templates"])
    for seed in RANDOM_SEEDS:
        name = names[seed % len(names)]
        compare(oracle, f"{name}#{seed}", random_variant(name, seed, recorded), None,
                live_info)
