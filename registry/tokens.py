"""API tokens for ``ctpreg serve``: what a token looks like, how its secret is kept, and which scope allows what.

A token reads ``ctp_<public id>_<secret>``. The public id finds its row; the row holds only the sha256 of the secret,
compared in constant time (``hmac.compare_digest``), so a copy of the DB gives no usable token and a timing probe
learns nothing about the secret. Scopes nest: ``read`` < ``publish`` < ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import Forbidden, InvalidInput, Unauthorized

READ, PUBLISH, ADMIN = "read", "publish", "admin"
SCOPES = (READ, PUBLISH, ADMIN)
MAX_TOKEN_DAYS = 3650
_TOKEN_RE = re.compile(r"ctp_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
TOKEN_NAME_PATTERN = f"^{_NAME_RE.pattern}$"
PUBLIC_ID_PATTERN = "^[0-9a-f]{12}$"
_DURATION_RE = re.compile(r"([0-9]{1,6})([hd])")


@dataclass(frozen=True)
class NewToken:
    """A token as created: ``secret_sha256`` is stored, ``value`` is shown to its owner once and never kept."""

    public_id: str
    value: str
    secret_sha256: str


@dataclass(frozen=True)
class TokenRecord:
    """A stored token, without its secret."""

    public_id: str
    name: str
    scope: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def state(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.public_id, "name": self.name, "scope": self.scope, "state": self.state(),
            "created_at": self.created_at.isoformat(), "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def new_token() -> NewToken:
    public_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(public_id=public_id, value=f"ctp_{public_id}_{secret}", secret_sha256=_digest(secret))


def split_token(value: str) -> tuple[str, str]:
    """(public id, secret) of a well-formed token; ``Unauthorized`` otherwise (the value itself is never echoed)."""
    match = _TOKEN_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise Unauthorized("malformed API token (expected ctp_<id>_<secret>)")
    return match.group(1), match.group(2)


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(_digest(secret), stored_sha256)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}")
    return scope


def check_token_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid token name {name!r}: 1..128 letters, digits and '._@+-', starting with one of the "
                           "first two")
    return name


def check_public_id(public_id: str) -> str:
    if not isinstance(public_id, str) or not re.fullmatch(PUBLIC_ID_PATTERN, public_id):
        raise InvalidInput(f"invalid token id {public_id!r}: 12 hex digits, as `ctpreg tokens list` shows")
    return public_id


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30d`` or ``12h`` from now (at most ten years), or None for a token that does not expire."""
    if text is None:
        return None
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"invalid expiry {text!r}: a number of days or hours, e.g. 30d or 12h")
    amount, unit = int(match.group(1)), match.group(2)
    delta = timedelta(days=amount) if unit == "d" else timedelta(hours=amount)
    if amount == 0 or delta > timedelta(days=MAX_TOKEN_DAYS):
        raise InvalidInput(f"expiry must be between 1h and {MAX_TOKEN_DAYS}d, got {text!r}")
    return (now or datetime.now(UTC)) + delta


def check_expiry(moment: datetime, now: datetime | None = None) -> datetime:
    """An expiry as an instant in UTC: with a time zone, later than ``now`` and at most ``MAX_TOKEN_DAYS`` after it
    (the cap ``parse_expiry`` puts on a duration). A moment near the ends of the calendar (year 1 or 9999) shifted
    by its offset lies outside what ``datetime`` holds: out of range too, never an ``OverflowError``."""
    if moment.tzinfo is None:
        raise InvalidInput("a token's expiry needs a time zone, e.g. 2027-01-01T00:00:00+00:00")
    now = now or datetime.now(UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not now < moment <= now + timedelta(days=MAX_TOKEN_DAYS):
        raise InvalidInput(f"a token's expiry must lie in the next {MAX_TOKEN_DAYS} days")
    return moment


def parse_expiry_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 expiry with a time zone (``check_expiry``), in UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"expiry {text[:64]!r} is not an ISO 8601 time") from None
    return check_expiry(moment, now)


def authorize(record: TokenRecord | None, secret_ok: bool, needed: str, now: datetime | None = None) -> TokenRecord:
    """The token if it may do what needs ``needed``: ``Unauthorized`` (401) when it is no valid token at all,
    ``Forbidden`` (403) when it is valid but its scope is too narrow."""
    if record is None or not secret_ok:
        raise Unauthorized("unknown API token")
    state = record.state(now)
    if state != "active":
        raise Unauthorized(f"API token {record.public_id} is {state}")
    if SCOPES.index(record.scope) < SCOPES.index(needed):
        raise Forbidden(f"API token {record.public_id} has scope {record.scope!r}; this needs {needed!r}")
    return record


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
