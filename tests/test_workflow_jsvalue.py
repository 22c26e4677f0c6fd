"""The JavaScript semantics and text features the converter reproduces, in isolation."""

from __future__ import annotations

import math
import random
from datetime import datetime

import pytest

from comfy_worker.workflow.jsvalue import (
    UNDEFINED,
    from_json,
    math_round,
    number_to_string,
    textarea_value,
    to_fixed,
    to_json,
    to_string,
)
from comfy_worker.workflow.prompt_text import (
    apply_text_replacements,
    format_date,
    process_dynamic_prompt,
)


@pytest.mark.parametrize(("value", "text"), [
    (1, "1"), (1.0, "1"), (-0.0, "0"), (0.1, "0.1"), (1e21, "1e+21"), (1e-7, "1e-7"),
    (123456789012345680000.0, "123456789012345680000"), (1.5e-6, "0.0000015"),
    (2**64, "18446744073709552000"), (math.nan, "NaN"), (-math.inf, "-Infinity"),
    (0.30000000000000004, "0.30000000000000004"),
])
def test_numbers_print_like_javascript(value: float, text: str) -> None:
    assert number_to_string(value) == text


def test_string_conversion_of_other_values() -> None:
    assert to_string(None) == "null"
    assert to_string(UNDEFINED) == "undefined"
    assert to_string(True) == "true"
    assert to_string([1, None, "a"]) == "1,,a"
    assert to_string({"a": 1}) == "[object Object]"


def test_math_round_sends_halves_up_and_to_fixed_rounds_the_binary_value() -> None:
    assert math_round(2.5) == 3 and math_round(-2.5) == -2 and math_round("4.4") == 4
    assert to_fixed(1.005, 2) == "1.00"        # 1.005 is 1.00499999... as a double
    assert to_fixed(0.125, 2) == "0.13"
    assert to_fixed(-0.0001, 2) == "0.00"


def test_json_round_trip_follows_doubles_and_drops_undefined() -> None:
    assert from_json({"seed": 2**60 + 1})["seed"] == 2**60
    assert to_json({"a": UNDEFINED, "b": [UNDEFINED], "c": 8.0, "d": math.nan}) \
        == {"b": [None], "c": 8, "d": None}


def test_textarea_values_are_strings_with_unix_newlines() -> None:
    assert textarea_value(None) == ""
    assert textarea_value(5) == "5"
    assert textarea_value("a\r\nb\rc") == "a\nb\nc"


class Pinned(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_dynamic_prompt_choices_comments_and_escapes() -> None:
    assert process_dynamic_prompt("{a|b|c}", Pinned(0.0)) == "a"
    assert process_dynamic_prompt("{a|b|c}", Pinned(0.99)) == "c"
    assert process_dynamic_prompt("{{x|y}|z}", Pinned(0.0)) == "x"
    assert process_dynamic_prompt("keep // gone\nnext /* gone */", Pinned(0)) == "keep \nnext "
    assert process_dynamic_prompt("see https://x.y/z", Pinned(0)) == "see https:"
    assert process_dynamic_prompt(r"\{literal\} \| {one}", Pinned(0)) == "{literal} | one"
    assert process_dynamic_prompt("no choices", Pinned(0)) == "no choices"


def test_date_formats() -> None:
    now = datetime(2026, 3, 4, 5, 6, 7)
    assert format_date("yyyy-MM-dd hh:mm:ss", now) == "2026-03-04 05:06:07"
    assert format_date("yy/M/d h.m.s", now) == "26/3/4 5.6.7"
    assert format_date("yyy", now) == "yyy"


class FakeNode:
    def __init__(self, title: str, props: dict[str, object], widgets: dict[str, object]) -> None:
        self.title = title
        self.properties = props
        self.widgets = widgets

    def widget_value(self, name: str) -> tuple[bool, object]:
        return (name in self.widgets, self.widgets.get(name))


def test_text_replacements_match_search_name_then_title() -> None:
    nodes = [FakeNode("My Sampler", {"Node name for S&R": "KSampler"}, {"seed": 5, "cfg": 7.0}),
             FakeNode("Prompt", {}, {"text": 'a/b:c"d'})]
    now = datetime(2026, 1, 2)
    text = "%KSampler.seed%-%My Sampler.cfg%-%Prompt.text%-%nope.x%-%date:yyyy%-%width%"
    assert apply_text_replacements(text, nodes, now) == "5-7-a_b_c_d-%nope.x%-2026-%width%"
