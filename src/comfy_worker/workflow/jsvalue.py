"""JavaScript value semantics the editor applies to workflow values (pure).

The editor is JavaScript: a JSON number is an IEEE double (a seed above 2**53 loses its
low digits), ``String(x)`` formats numbers its own way, ``Math.round`` rounds halves up,
``toFixed`` rounds the exact binary value, a ``<textarea>`` turns whatever it is given into
a string with ``\\n`` line ends, and ``JSON.stringify`` drops ``undefined``. To produce the
prompt the editor would produce, the converter does the same.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from comfy_worker.jsontypes import json_type_name

MAX_SAFE_INTEGER: Final = 2**53


class _Undefined:
    """JavaScript's ``undefined``: a value that ``JSON.stringify`` leaves out."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = _Undefined()


def from_json(value: Any) -> Any:
    """A deep copy of parsed JSON with numbers as a JavaScript parser reads them."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INTEGER else int(float(value))
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        return {str(k): from_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [from_json(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """What ``JSON.parse(JSON.stringify(value))`` gives: ``undefined`` members dropped
    (``null`` in arrays), NaN/Infinity as ``null``, whole doubles as integers."""
    if value is UNDEFINED:
        return None
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    if isinstance(value, int | float):
        x = float(value)
        if math.isnan(x) or math.isinf(x):
            return None
        if x.is_integer() and abs(x) < 1e21:
            return int(number_to_string(x))    # what JSON.stringify writes for it
        return x
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages (JavaScript's undefined is null)."""
    return "null" if value is UNDEFINED else json_type_name(value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number_to_string(x: float) -> str:
    """ECMAScript ``Number::toString`` (radix 10)."""
    if isinstance(x, int) and abs(x) <= MAX_SAFE_INTEGER:
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    digits_tuple = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    k = len(digits)
    n = k + int(digits_tuple.exponent)  # position of the decimal point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exp = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp)}"
    return sign + text


def to_string(value: Any) -> str:
    """ECMAScript ``String(value)``."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if is_number(value):
        return number_to_string(value)
    if isinstance(value, list | tuple):
        return ",".join("" if v is None or v is UNDEFINED else to_string(v) for v in value)
    return "[object Object]"


_NUMERIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def to_number(value: Any) -> float:
    """ECMAScript ``Number(value)`` for the values a widget can hold."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if is_number(value):
        return float(value)
    if value is None:
        return 0.0
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        if _NUMERIC.match(text):
            return float(text)
        if text in ("Infinity", "+Infinity"):
            return math.inf
        if text == "-Infinity":
            return -math.inf
        try:
            if text.lower().startswith(("0x", "0o", "0b")):
                return float(int(text, 0))
        except ValueError:
            pass
        return math.nan
    if isinstance(value, list) and len(value) <= 1:
        return to_number(to_string(value))
    return math.nan


def number_value(x: float) -> int | float:
    """A double as the tidiest Python number: whole values as ``int``."""
    if isinstance(x, int):
        return x
    if math.isfinite(x) and x.is_integer():
        return int(x)
    return x


def math_round(value: Any) -> int | float:
    """``Math.round``: halves go up (towards +Infinity)."""
    x = to_number(value)
    if not math.isfinite(x):
        return x
    floor = math.floor(x)
    return floor + 1 if x - floor >= 0.5 else floor


def to_fixed(x: float, digits: int) -> str:
    """``Number.prototype.toFixed``: the exact binary value, halves away from zero."""
    if not math.isfinite(x) or abs(x) >= 1e21:
        return number_to_string(x)
    quantum = Decimal(1).scaleb(-digits)
    text = str(Decimal(x).quantize(quantum, rounding=ROUND_HALF_UP))
    if text.startswith("-") and Decimal(text) == 0:
        text = text[1:]
    return text


def textarea_value(value: Any) -> str:
    """What a ``<textarea>`` holds after ``textarea.value = value``."""
    text = "" if value is None else to_string(value)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def truthy(value: Any) -> bool:
    """JavaScript truthiness (objects and arrays are truthy even when empty)."""
    if value is None or value is UNDEFINED or value is False:
        return False
    if is_number(value):
        return not (value == 0 or (isinstance(value, float) and math.isnan(value)))
    if isinstance(value, str):
        return value != ""
    return True


def element_at(items: list[Any], index: Any, *, wrap: bool) -> Any:
    """``items[index]`` (``wrap``: ``items.at(index)``) for a JSON index value, None where
    JavaScript gives undefined."""
    if isinstance(index, str):
        if not re.fullmatch(r"\d+", index):
            return None
        index = int(index)
        wrap = False
    if not is_number(index):
        return None
    x = float(index)
    if not math.isfinite(x) or (not wrap and not x.is_integer()):
        return None
    i = math.trunc(x)
    if i < 0:
        if not wrap:
            return None
        i += len(items)
    return items[i] if 0 <= i < len(items) else None


def loose_equals(a: Any, b: Any) -> bool:
    """``a == b`` for the primitive values slot types are made of."""
    if a is b:
        return True
    if (a is None or a is UNDEFINED) or (b is None or b is UNDEFINED):
        return (a is None or a is UNDEFINED) and (b is None or b is UNDEFINED)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    scalar_a = isinstance(a, str | bool) or is_number(a)
    scalar_b = isinstance(b, str | bool) or is_number(b)
    return scalar_a and scalar_b and to_number(a) == to_number(b)


def parse_int(value: Any) -> int | float:
    """``parseInt(value)`` (radix 10) for slot indexes."""
    text = to_string(value).strip()
    match = re.match(r"^[+-]?\d+", text)
    if not match:
        return math.nan
    return int(match.group(0))


def property_key(value: Any) -> str:
    """The key a JavaScript object stores ``value`` under (``obj[value]``)."""
    return to_string(value)


def _is_array_index(key: str) -> bool:
    return key.isdigit() and (key == "0" or not key.startswith("0")) and int(key) < 2**32 - 1


def js_key_order(keys: list[str]) -> list[str]:
    """The order JavaScript enumerates an object's keys: array indexes ascending first,
    then the other keys in insertion order."""
    indexes = sorted((k for k in keys if _is_array_index(k)), key=int)
    return indexes + [k for k in keys if not _is_array_index(k)]
