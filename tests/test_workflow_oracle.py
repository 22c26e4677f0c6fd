"""Live: ComfyUI's own editor (headless Chromium) and the converter, side by side.

Starts a real ComfyUI (v0.33.0, API nodes on, as the fixtures were recorded) serving its
frontend (1.48.7), drives ``app.loadGraphData`` + ``app.graphToPrompt`` through
``scripts/frontend_oracle.py`` and compares with
:func:`~comfy_worker.workflow.convert.ui_to_api` on a sample of templates, recorded cases
and fresh random variants (subgraphs, primitives, reroutes, muted/bypassed nodes). Needs
Playwright (pip) and Debian's chromium; skips without them, fails under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from support.comfyui import REPO_ROOT, comfyui_or_skip, skip_or_fail
from support.workflow_cases import (
    CASES,
    index,
    legacy_template,
    object_info,
    random_variant,
    template,
    template_names,
)

from comfy_worker.errors import WorkflowConversionError
from comfy_worker.workflow.convert import ui_to_api

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

SAMPLE_TEMPLATES = ["image_z_image", "image_flux2_klein_image_edit_4b_base",
                    "templates-1_click_multiple_character_angles-v1.0", "video_ltx2_3_ia2v",
                    "api_anthropic_claude", "audio_ace_step_1_5_split_llm",
                    "3d_triposplat_image_to_gaussian_splat", "image_qwen_Image_2512_controlnet"]
SAMPLE_LEGACY = ["default", "01_qwen_t2i_subgraphed", "image2image", "hidream_e1_1"]
SAMPLE_CASES = ["subgraph_nested_three_levels", "subgraph_two_instances",
                "primitive_two_targets_ranges_disagree", "bypass_behind_reroute_uses_wildcard",
                "duplicate_node_id", "filename_prefix_replacements",
                "dynamic_prompt_middle_choice", "link_from_missing_node",
                "dynamic_combo_nested", "autogrow_connected_inputs", "matchtype_switch",
                "subgraph_unfed_input_keeps_inner_widget_value",
                "subgraph_inner_id_clashes_with_top_level", "proxy_widgets_new_subgraph_input",
                "proxy_widgets_primitive_inside", "custom_combo_options",
                "matchtype_retyped_by_a_second_reroute"]
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
    if any(e.get("class_type") == "__undefined__" for e in expected.values()):
        with pytest.raises(WorkflowConversionError):   # nodes without a type
            ui_to_api(workflow, info)
        return
    got = ui_to_api(workflow, info, rng=Pinned(fixed) if fixed is not None else None, now=now)
    assert got == expected, name
    assert list(got) == list(expected), name


def test_live_editor_matches_on_templates_cases_and_random_variants(oracle: Any) -> None:
    assert oracle.version() == index()["frontend_version"], "the fixtures were recorded " \
        "with the editor ComfyUI v0.33.0 serves: point COMFYUI_DIR/COMFYUI_PYTHON at one"
    live_info = oracle.object_info()
    recorded = object_info()
    assert set(live_info) == set(recorded), "the test ComfyUI's nodes changed: regenerate " \
        "the fixtures with scripts/frontend_oracle.py"
    for name in SAMPLE_TEMPLATES:
        compare(oracle, name, template(name), 0.0, live_info)
    for name in SAMPLE_LEGACY:
        compare(oracle, name, legacy_template(name), 0.0, live_info)
    for name in SAMPLE_CASES:
        case = CASES[name]()
        compare(oracle, name, case.workflow, case.fixed_random, live_info)
    names = template_names()
    for seed in RANDOM_SEEDS:
        name = names[seed % len(names)]
        compare(oracle, f"{name}#{seed}", random_variant(name, seed, recorded), None,
                live_info)


def test_live_editor_with_other_node_definitions(oracle: Any) -> None:
    """A workflow saved with node definitions the server does not have: the editor
    (given those definitions) and the converter assign the saved values alike."""
    for name in ("older_server_lacks_a_widget", "older_server_widget_in_another_place"):
        case = CASES[name]()
        info = {**object_info(), **(case.object_info or {})}
        with oracle.with_object_info(info) as other:
            compare(other, name, case.workflow, case.fixed_random, info)
