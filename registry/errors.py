"""One error tree for ctpreg: each class carries the process exit code the CLI returns for it.

Third-party errors are converted where they enter (SQLAlchemy in ``db``, botocore in ``stores.s3``), so callers only
ever catch ``CtpregError``.
"""

from __future__ import annotations


class CtpregError(Exception):
    """Base of every error ctpreg raises on purpose."""

    exit_code = 1


class InvalidInput(CtpregError):
    """Bad user input: a malformed reference, name, spec or option."""

    exit_code = 2


class InvalidArtifact(CtpregError):
    """A prompt artifact that is not a valid ``ctpreg-prompt/1`` safetensors file."""

    exit_code = 2


class NoCompatiblePrompt(CtpregError):
    """No prompt in the registry shares the target's embedding space."""

    exit_code = 3


class NoHelpfulPrompt(CtpregError):
    """Compatible prompts exist but none improved the target enough when validated on it."""

    exit_code = 4


class NotFound(CtpregError):
    """A referenced prompt, version, alias or model does not exist."""

    exit_code = 5


class Conflict(CtpregError):
    """The request contradicts what the registry already holds (e.g. a model's fingerprint)."""

    exit_code = 6


class IntegrityError(CtpregError):
    """Stored bytes do not match their recorded sha256."""

    exit_code = 7


class StoreError(CtpregError):
    """The object store failed (I/O, permissions, network)."""

    exit_code = 8


class DatabaseError(CtpregError):
    """The metadata DB failed or is unreachable."""

    exit_code = 9


class SchemaOutOfDate(DatabaseError):
    """The metadata DB's schema is behind the code: ``ctpreg db upgrade`` fixes it."""

    exit_code = 10


class OfflineMiss(CtpregError):
    """Offline mode was asked for something the local cache has never seen."""

    exit_code = 11


class MissingExtra(CtpregError):
    """A command needs an optional dependency group that is not installed."""

    exit_code = 12


class Unauthorized(CtpregError):
    """No API token, or one that is unknown, expired or revoked (HTTP 401)."""

    exit_code = 13


class Forbidden(CtpregError):
    """A valid API token whose scope does not cover the request (HTTP 403)."""

    exit_code = 14


class AddressInUse(CtpregError):
    """A server could not bind its address: another process listens on that port."""

    exit_code = 15


class MalformedAnswer(CtpregError):
    """A registry's answer was refused before use: malformed, over its size limit, or not for what was asked."""

    exit_code = 16


def error_class(name: str) -> type[CtpregError]:
    """The error class a server named on the wire (``CtpregError`` for a name this version does not know)."""
    found = {cls.__name__: cls for cls in _subclasses(CtpregError)}.get(name)
    return found or CtpregError


def _subclasses(cls: type[CtpregError]) -> list[type[CtpregError]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]
