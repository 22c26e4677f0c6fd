"""JSON words for decoded JSON values, for user-facing messages (a leaf module).

Users write JSON, so messages about their input speak JSON: ``null``, not ``None``;
``object``, not ``dict``.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_SHOWN = 60
MAX_DEPTH = 128
"""Deepest nesting of arrays and objects accepted from a caller: a ComfyUI workflow nests
about ten levels; a stranger's ``[[[[...]]]]`` would exhaust every recursive walk."""


class JsonRefused(ValueError):
    """Valid JSON that no workflow needs and every walk of it would choke on."""


def loads(text: str | bytes) -> Any:
    """``json.loads``, with every way a stranger's text can fail it as a ``ValueError``
    that says why: not JSON, numbers of thousands of digits, nesting deeper than
    :data:`MAX_DEPTH` (which would otherwise be a ``RecursionError``)."""
    too_deep = f"arrays or objects nested deeper than {MAX_DEPTH} levels"
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonRefused(too_deep) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # int(), past its digit limit
            raise JsonRefused("a number of thousands of digits") from None
        raise
    if nested_deeper_than(value, MAX_DEPTH):
        raise JsonRefused(too_deep)
    return value


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest deeper than ``limit`` (iterative: any
    depth is measured without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list | tuple))
    return False


def json_type_name(value: object) -> str:
    """The JSON type of a decoded value: null, boolean, number, string, array, object.

    Anything else (not produced by ``json.loads``) is named by its Python type.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def json_text(value: object, limit: int = _MAX_SHOWN) -> str:
    """A decoded value as its JSON text, shortened to about ``limit`` characters:
    ``null``, ``true``, ``"main"``, ``[1, 2]``."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
