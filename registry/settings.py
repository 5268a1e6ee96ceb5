"""Configuration, read once (CLI callback or ``Client.from_env()``) and passed down.

Precedence: environment variables, then ``ctpreg.toml`` (``$CTPREG_CONFIG`` or ``$CTPREG_HOME/ctpreg.toml``),
then defaults. Nothing reads the environment at import time, so tests pass their own mapping instead of patching
modules.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from pathlib import Path

from .errors import InvalidInput

_TOML_KEYS = {
    "db_url": "CTPREG_DB_URL",
    "store_url": "CTPREG_STORE_URL",
    "s3_endpoint_url": "CTPREG_S3_ENDPOINT_URL",
    "cache_dir": "CTPREG_CACHE_DIR",
    "offline": "CTPREG_OFFLINE",
    "url": "CTPREG_URL",
}
_TRUE = {"1", "true", "yes", "on"}
DEFAULT_MAX_ANSWER_BYTES = 8 << 20  # a page of 1,000 prompt records is about 2 MB
MAX_ANSWER_BYTES_RANGE = (64 << 10, 1 << 30)


@dataclass(frozen=True)
class Settings:
    """Where the registry keeps its metadata, objects and local cache."""

    home: Path
    db_url: str
    store_url: str
    cache_dir: Path
    s3_endpoint_url: str | None = None
    offline: bool = False
    user: str = "unknown"
    # A ``ctpreg serve`` registry: reads and writes go through its HTTP API. Not in repr: it may hold credentials.
    url: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # its API token (environment only, never in a file)
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES  # the largest JSON answer the HTTP client reads
    allow_insecure_token: bool = False  # send the token over plain http to a non-loopback host (warned every time)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("CTPREG_HOME") or Path.home() / ".ctpreg").expanduser()
        named = env.get("CTPREG_CONFIG")
        if named and not Path(named).expanduser().is_file():
            raise InvalidInput(f"CTPREG_CONFIG names {named}, which is not a file")
        values = _read_toml(Path(named).expanduser() if named else home / "ctpreg.toml")
        for toml_key, env_key in _TOML_KEYS.items():
            if env_key not in env and toml_key in values:
                env[env_key] = str(values[toml_key])
        return cls(
            home=home,
            db_url=env.get("CTPREG_DB_URL") or f"sqlite:///{home / 'registry.db'}",
            store_url=env.get("CTPREG_STORE_URL") or (home / "objects").as_uri(),
            cache_dir=Path(env.get("CTPREG_CACHE_DIR") or home / "cache").expanduser(),
            s3_endpoint_url=env.get("CTPREG_S3_ENDPOINT_URL") or None,
            offline=env.get("CTPREG_OFFLINE", "").strip().lower() in _TRUE,
            user=env.get("USER") or env.get("USERNAME") or "unknown",
            url=_check_url(env.get("CTPREG_URL") or None),
            token=env.get("CTPREG_TOKEN") or None,
            max_answer_bytes=_answer_limit(env.get("CTPREG_MAX_ANSWER_BYTES")),
            allow_insecure_token=env.get("CTPREG_ALLOW_INSECURE_TOKEN", "").strip().lower() in _TRUE,
        )


def _read_toml(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not valid UTF-8 TOML ({exc})") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})") from None
    section = data.get("ctpreg", data)
    if not isinstance(section, dict):
        raise InvalidInput(f"{path}: [ctpreg] must be a table")
    unknown = set(section) - set(_TOML_KEYS)
    if unknown:
        raise InvalidInput(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(_TOML_KEYS)}")
    for key, value in section.items():
        if not isinstance(value, str | bool) or (isinstance(value, str) and "\x00" in value):
            raise InvalidInput(f"{path}: {key} must be a string (or true/false for offline)")
    return section


def _answer_limit(text: str | None) -> int:
    if not text:
        return DEFAULT_MAX_ANSWER_BYTES
    low, high = MAX_ANSWER_BYTES_RANGE
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise InvalidInput(f"CTPREG_MAX_ANSWER_BYTES must be a whole number of bytes in {low}..{high}")
    return int(text)


def _check_url(url: str | None) -> str | None:
    """A registry server's base URL: http(s) with a host, kept without a trailing slash."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and not (parts.query or parts.fragment)
        parts.port  # noqa: B018 - a malformed port raises here rather than at the first request
    except ValueError:
        valid = False
    if not valid:
        raise InvalidInput("CTPREG_URL must be an http:// or https:// URL of a `ctpreg serve` registry, got "
                           f"{masked_url(url)!r}")
    return url.rstrip("/")


def masked_url(url: str) -> str:
    """``url`` with any user name and password replaced by ``***``: what messages and logs may show."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"
