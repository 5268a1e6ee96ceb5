"""JSON from untrusted places (artifact headers and metadata, cache entries): bounded, finite, unambiguous.

Python's ``json`` accepts ``NaN``/``Infinity``, duplicate keys (the last wins), integers of thousands of digits and
nesting until the interpreter's recursion limit; PostgreSQL's JSON columns reject some of these after the upload,
SQLite stores them. Everything ctpreg reads from outside goes through ``loads`` here, so each backend sees the same
values and every violation is one ``InvalidInput`` line before anything is written.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidInput

MAX_DEPTH = 16
MAX_INT = 2**53  # what every JSON reader (JavaScript, PostgreSQL's jsonb numeric output) keeps exactly
MAX_INT_DIGITS = 16


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise InvalidInput(f"duplicate JSON keys {duplicated[:3]}")
    return dict(pairs)


def _constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not a JSON number")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(f"integer with {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"number {text[:20]} overflows a double")
    return value


def check_value(value: Any, what: str, depth: int = 0, *, max_depth: int = MAX_DEPTH) -> None:
    """Depth, integer range and string content (no NUL) of an already-parsed or user-built JSON value."""
    if depth > max_depth:
        raise InvalidInput(f"{what} is nested deeper than {max_depth} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise InvalidInput(f"{what} has a key that is not a string without NUL")
            check_value(item, what, depth + 1, max_depth=max_depth)
    elif isinstance(value, list):
        for item in value:
            check_value(item, what, depth + 1, max_depth=max_depth)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise InvalidInput(f"{what} holds an integer beyond ±2**53")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{what} holds NaN or Infinity")
    elif isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"{what} holds a NUL character")
    else:
        raise InvalidInput(f"{what} holds a {type(value).__name__}, not a JSON value")


def loads(text: str | bytes, what: str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` (at most ``max_bytes``) refusing NaN/Infinity, huge integers, duplicate keys and deep nesting."""
    if len(text) > max_bytes:
        raise InvalidInput(f"{what} is larger than {max_bytes} bytes")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant, parse_int=_integer,
                           parse_float=_float)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON ({type(exc).__name__})") from None
    check_value(value, what, max_depth=max_depth)
    return value


def dumps(value: Any, what: str, *, max_bytes: int) -> str:
    """Canonical JSON of a value built in code, held to the same rules as ``loads``."""
    check_value(value, what)
    text = json.dumps(value, sort_keys=True, allow_nan=False)
    if len(text) > max_bytes:
        raise InvalidInput(f"{what} is larger than {max_bytes} bytes")
    return text
