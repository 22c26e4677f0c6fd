"""JSON type names for messages: users send JSON, so they think in ``null`` and
``object``, not in ``NoneType`` and ``dict``."""

from __future__ import annotations


def json_type_name(value: object) -> str:
    """``null``, ``boolean``, ``number``, ``string``, ``array`` or ``object`` (pure)."""
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
