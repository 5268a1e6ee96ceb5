"""Reading JSON from outside the process (a registry's HTTP answer, a cache entry) into checked field values.

A registry's answer is hostile input to its client: a ``sha256`` that is a path would name a file to read or
delete, a size would be trusted for an allocation, a name would reach a terminal. ``Fields`` gives typed access to
one JSON object where every read checks type, range and pattern, and a failure is one ``InvalidInput`` naming the
field. Fields a reader does not ask for are ignored, so a newer server can add fields without breaking older
clients; the size and depth of the whole answer are bounded where it is parsed (``strict_json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from .errors import InvalidInput
from .strict_json import check_value

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_ID = 2**53
MAX_LINE_CHARS = 4096  # explanations, created_by and other display text
MAX_ITEMS = 10_000  # aliases, targets and other lists inside one record

T = TypeVar("T")
_MISSING = object()


def check_sha256(value: object, what: str = "sha256") -> str:
    """Exactly 64 lowercase hex digits: the only form a content address may take before it names a file."""
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise InvalidInput(f"{what} is not 64 lowercase hex digits")
    return value


def check_line(value: object, what: str, max_chars: int = MAX_LINE_CHARS) -> str:
    """Display text: a string of printable characters (no control characters, no escape sequences)."""
    if not isinstance(value, str) or len(value) > max_chars or not value.isprintable():
        raise InvalidInput(f"{what} must be at most {max_chars} printable characters")
    return value


class Fields:
    """Checked access to the fields of one JSON object that came from outside."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, dict):
            raise InvalidInput(f"{what} is not a JSON object")
        self.data, self.what = data, what

    def _value(self, key: str, optional: bool) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if optional:
                return None
            raise InvalidInput(f"{self.what}.{key} is missing")
        return value

    def name(self, key: str) -> str:
        return f"{self.what}.{key}"

    def integer(self, key: str, low: int, high: int, *, optional: bool = False) -> int | None:
        value = self._value(key, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(f"{self.name(key)} must be an integer in {low}..{high}")
        return value

    def number(self, key: str, *, positive: bool = False, optional: bool = False) -> float | None:
        value = self._value(key, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or (positive and value <= 0):
            raise InvalidInput(f"{self.name(key)} must be a finite{' positive' if positive else ''} number")
        return float(value)

    def boolean(self, key: str, *, optional: bool = False) -> bool | None:
        value = self._value(key, optional)
        if value is not None and not isinstance(value, bool):
            raise InvalidInput(f"{self.name(key)} must be true or false")
        return value

    def text(self, key: str, *, max_chars: int = MAX_LINE_CHARS, optional: bool = False) -> str | None:
        value = self._value(key, optional)
        return None if value is None else check_line(value, self.name(key), max_chars)

    def checked(self, key: str, check: Callable[[Any], T], *, optional: bool = False) -> T | None:
        """The field as ``check`` (one of the registry's own validators) accepts it."""
        value = self._value(key, optional)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidInput(f"{self.name(key)} must be a string")
        try:
            return check(value)
        except InvalidInput as exc:
            raise InvalidInput(f"{self.name(key)}: {exc}") from None

    def moment(self, key: str, *, optional: bool = False) -> datetime | None:
        value = self._value(key, optional)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 64:
            raise InvalidInput(f"{self.name(key)} must be an ISO 8601 time")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{self.name(key)} must be an ISO 8601 time") from None

    def mapping(self, key: str, *, optional: bool = False) -> dict[str, Any] | None:
        """A JSON object kept as data (metrics, training): depth, integers and strings bounded."""
        value = self._value(key, optional)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidInput(f"{self.name(key)} must be a JSON object")
        check_value(value, self.name(key))
        return value

    def items(self, key: str, *, max_items: int = MAX_ITEMS, optional: bool = False) -> list[Any]:
        value = self._value(key, optional)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > max_items:
            raise InvalidInput(f"{self.name(key)} must be a list of at most {max_items} items")
        return value

    def strings(self, key: str, check: Callable[[str], T], *, max_items: int = MAX_ITEMS) -> list[T]:
        """A list of strings, each as ``check`` accepts it."""
        values = self.items(key, max_items=max_items)
        if not all(isinstance(value, str) for value in values):
            raise InvalidInput(f"{self.name(key)} must be a list of strings")
        try:
            return [check(value) for value in values]
        except InvalidInput as exc:
            raise InvalidInput(f"{self.name(key)}: {exc}") from None

    def nested(self, key: str, *, optional: bool = False) -> Fields | None:
        value = self._value(key, optional)
        return None if value is None else Fields(value, self.name(key))
