"""The editor's two text features applied when it builds a prompt (pure).

- Dynamic prompts: a STRING widget whose input has ``dynamicPrompts: true`` (CLIPTextEncode's
  ``text``) loses ``//`` and ``/* */`` comments and has every ``{a|b|c}`` replaced by one
  random choice (``\\{`` escapes a brace).
- Text replacements: ``filename_prefix`` of the save nodes (and a PrimitiveNode with "Run
  widget replace on values") has ``%date:yyyy-MM-dd%`` replaced by the local date and
  ``%Node title.widget%`` (or ``%Node name for S&R.widget%``) by that widget's value.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from comfy_worker.workflow.jsvalue import UNDEFINED, to_string

_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//[^\n\r\u2028\u2029]*")
_UNESCAPE = re.compile(r"\\([{}|])")


def process_dynamic_prompt(text: str, rng: random.Random | None = None) -> str:
    """The editor's ``processDynamicPrompt``: comments out, one choice per ``{...|...}``."""
    pick = (rng or random).random
    text = _COMMENTS.sub("", text)
    pos = 0

    def escape() -> str:
        nonlocal pos
        char = text[pos] if pos < len(text) else "undefined"
        pos += 1
        return "\\" + char

    def choice_block() -> str:
        nonlocal pos
        options: list[str] = []
        current = ""
        depth = 0
        while pos < len(text):
            char = text[pos]
            pos += 1
            if char == "\\":
                current += escape()
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += char
        options.append(current)
        return process_dynamic_prompt(options[int(pick() * len(options))], rng)

    out = ""
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            out += escape()
        elif char == "{":
            out += choice_block()
        else:
            out += char
    return _UNESCAPE.sub(r"\1", out)


_DATE_TOKEN = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")
_DATE_PARTS: dict[str, Callable[[datetime], int]] = {
    "d": lambda d: d.day, "M": lambda d: d.month, "h": lambda d: d.hour,
    "m": lambda d: d.minute, "s": lambda d: d.second,
}


def format_date(fmt: str, now: datetime) -> str:
    """The editor's ``formatDate`` (``yyyy``, ``yy``, ``MM``, ``dd``, ``hh``, ``mm``, ``ss``)."""
    def token(match: re.Match[str]) -> str:
        tok = match.group(0)
        if tok == "yy":
            return str(now.year)[2:]
        if tok == "yyyy":
            return str(now.year)
        part = _DATE_PARTS.get(tok[0])
        return str(part(now)).rjust(len(tok), "0") if part else tok
    return _DATE_TOKEN.sub(token, fmt)


_REPLACEMENT = re.compile(r"%([^%]+)%")
_UNSAFE_IN_NAME = re.compile(r'[/?<>\\:*|"\x00-\x1f\x7f]')


class ReplaceableNode:
    """What a ``%Node.widget%`` replacement needs from a node."""

    title: Any
    properties: dict[str, Any]

    def widget_value(self, name: str) -> tuple[bool, Any]:  # pragma: no cover - protocol
        raise NotImplementedError


def apply_text_replacements(text: str, nodes: Iterable[ReplaceableNode], now: datetime) -> str:
    """The editor's ``applyTextReplacements`` over every node of the workflow (subgraphs'
    inner nodes included, listed before their subgraph node)."""
    all_nodes = list(nodes)

    def replace(match: re.Match[str]) -> str:
        whole, inner = match.group(0), match.group(1)
        parts = inner.split(".")
        if len(parts) != 2:
            return format_date(parts[0][5:], now) if parts[0].startswith("date:") else whole
        found = [n for n in all_nodes
                 if isinstance(n.properties, dict)
                 and n.properties.get("Node name for S&R", UNDEFINED) == parts[0]]
        if not found:
            found = [n for n in all_nodes if n.title == parts[0]]
        if not found:
            return whole
        ok, value = found[0].widget_value(parts[1])
        if not ok:
            return whole
        shown = "" if value is None or value is UNDEFINED else to_string(value)
        return _UNSAFE_IN_NAME.sub("_", shown)

    return _REPLACEMENT.sub(replace, text)
