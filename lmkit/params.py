"""Typed parameters: one conversion from text used by the CLI (dataclass fields) and by papermill
runs (a notebook's ``parameters`` cell), so ``--n-layer 4`` and ``-p n_layer 4`` mean the same; and
``is_int``, the one test behind every "a positive int (not a bool)" check in lmkit."""

from __future__ import annotations

import numbers
import re

_OPTIONAL = re.compile(r"^(?:Optional\[(.+)\]|(.+?)\s*\|\s*None|None\s*\|\s*(.+))$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def is_int(value, low: int | None = None, high: int | None = None) -> bool:
    """``value`` is an integer (Python or numpy; ``True``/``False`` are not), and ``low <= value <= high``
    where given. The callers raise their own message: it names the parameter and what it is for."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def split_type(type_name: str) -> tuple[str, bool]:
    """``"int | None"`` / ``"Optional[int]"`` → ``("int", True)``; ``"float"`` → ``("float", False)``."""
    m = _OPTIONAL.match(type_name.strip())
    if m:
        return next(g for g in m.groups() if g).strip(), True
    return type_name.strip(), type_name.strip() == "None"


def convert(name: str, value, type_name: str):
    """``value`` (a string from a command line, or a YAML/JSON value) as ``type_name`` says.

    Raises ValueError naming the parameter, the value and the expected type. Types other than
    bool/int/float/str (lists, dicts, unannotated) pass through unchanged.
    """
    kind, optional = split_type(type_name)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or kind == "None":
            return None
        raise ValueError(f"{name}: None is not allowed here; give a {kind}")
    if kind in ("bool", "int", "float", "str") and isinstance(value, (list, tuple, dict, set)):
        raise ValueError(f"{name}={value!r} is a {type(value).__name__}; give a single {kind}")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            return str(value)
    except (ValueError, TypeError, OverflowError):  # int(float("inf")) overflows
        raise ValueError(f"{name}={value!r} is not a valid {kind}") from None
    return value
