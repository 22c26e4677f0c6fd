"""JSON words for decoded JSON values, for user-facing messages (a leaf module).

Users write JSON, so messages about their input speak JSON: ``null``, not ``None``;
``object``, not ``dict``.
"""

from __future__ import annotations

import json

_MAX_SHOWN = 60


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
