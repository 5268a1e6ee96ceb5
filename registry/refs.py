"""Prompt names and references.

A name is ``/``-separated segments of letters, digits and ``._+-`` (each starting with a letter or digit), so it can
never climb out of a folder or collide with reference syntax. A reference is one of:
``name`` (its ``latest`` alias), ``name:VERSION``, ``name@ALIAS``, or a sha256 prefix of at least 8 hex characters.
Every check is a full match (``$`` would accept a trailing newline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"
_NAME_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")
_ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_SHA_PREFIX_RE = re.compile(r"[0-9a-f]{8,64}")
_FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_VERSION_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits, and a version that fits every integer column
LATEST = "latest"
#: What a reference looks like, as one regular expression (for API schemas; ``parse_ref`` checks more).
REF_PATTERN = (rf"^(?:{_SHA_PREFIX_RE.pattern}|{_NAME_RE.pattern}(?::{_VERSION_RE.pattern}|@{_ALIAS_RE.pattern})?)$")
NAME_PATTERN, ALIAS_PATTERN = f"^{_NAME_RE.pattern}$", f"^{_ALIAS_RE.pattern}$"
MODEL_PATTERN, FINGERPRINT_PATTERN = f"^{_MODEL_RE.pattern}$", f"^{_FINGERPRINT_RE.pattern}$"
MAX_NAME_CHARS = 512  # the prompt name column
MAX_TEXT_CHARS = 256  # the dataset and task columns


def _string(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}")


def check_text(value: object, what: str) -> str:
    """A free-text field (dataset, task, a model filter): 1..256 printable characters, so every DB column takes it
    and no terminal or log interprets it."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT_CHARS or not value.isprintable():
        raise InvalidInput(f"{what} must be 1..{MAX_TEXT_CHARS} printable characters (no control characters)")
    return value


def check_name(name: str) -> str:
    _string(name, "a prompt name")
    if _SHA_PREFIX_RE.fullmatch(name):
        raise InvalidInput(f"invalid prompt name {name!r}: 8 or more hex digits read as a sha256 prefix; add a letter")
    if not _NAME_RE.fullmatch(name) or ".." in name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(
            f"invalid prompt name {name!r}: use '/'-separated segments of letters, digits and '._+-', "
            f"each starting with a letter or digit, at most {MAX_NAME_CHARS} in all "
            "(e.g. smollm2-135m/gptq-w3-g128/wiki)"
        )
    return name


def check_model_name(name: str) -> str:
    _string(name, "a model name")
    if not _MODEL_RE.fullmatch(name):
        raise InvalidInput(f"invalid model name {name!r}: letters, digits and '._+-', starting with a letter or digit")
    return name


def check_fingerprint(fingerprint: str) -> str:
    _string(fingerprint, "a fingerprint")
    if not _FINGERPRINT_RE.fullmatch(fingerprint):
        raise InvalidInput(f"invalid fingerprint {fingerprint!r}: expected 'sha256:' and 64 lowercase hex digits")
    return fingerprint


def check_alias(alias: str) -> str:
    _string(alias, "an alias")
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidInput(f"invalid alias {alias!r}: a letter, then letters, digits or '._-' (e.g. prod)")
    return alias


@dataclass(frozen=True)
class PromptRef:
    """A parsed reference: exactly one of ``version``, ``alias`` or ``sha_prefix`` says which prompt of ``name``."""

    name: str | None = None
    version: int | None = None
    alias: str | None = None
    sha_prefix: str | None = None

    def __str__(self) -> str:
        if self.sha_prefix:
            return self.sha_prefix
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}"


def parse_ref(text: str) -> PromptRef:
    _string(text, "a prompt reference")
    if _SHA_PREFIX_RE.fullmatch(text):
        return PromptRef(sha_prefix=text)
    if "@" in text:
        name, _, alias = text.rpartition("@")
        return PromptRef(name=check_name(name), alias=check_alias(alias))
    if ":" in text:
        name, _, version = text.rpartition(":")
        if not _VERSION_RE.fullmatch(version) or int(version) < 1:
            raise InvalidInput(f"malformed reference {text!r}: the version after ':' must be a positive integer "
                               "(at most 9 digits)")
        return PromptRef(name=check_name(name), version=int(version))
    try:
        return PromptRef(name=check_name(text), alias=LATEST)
    except InvalidInput:
        raise InvalidInput(
            f"malformed reference {text!r}: use NAME, NAME:VERSION, NAME@ALIAS or a sha256 prefix (>= 8 hex chars)"
        ) from None
