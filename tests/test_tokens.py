"""Scoped API tokens: format, storage (hash only), states and scopes, on SQLite and PostgreSQL; the CLI around them
and ``ctpreg serve``'s refusals before it binds anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from ctpreg.cli.commands.serve import _check_bind
from ctpreg.cli.main import main
from ctpreg.registry.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from ctpreg.registry.service import Registry
from ctpreg.registry.settings import Settings
from ctpreg.registry.tokens import (
    ADMIN, PUBLISH, READ, TokenRecord, authorize, new_token, parse_expiry, secret_matches, split_token,
)

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def record(scope: str = READ, **fields) -> TokenRecord:
    return TokenRecord(public_id="0" * 12, name="t", scope=scope, created_at=NOW, created_by="me", **fields)


def test_a_new_token_splits_back_and_only_its_secret_matches_the_stored_hash() -> None:
    token = new_token()
    public_id, secret = split_token(token.value)
    assert public_id == token.public_id and secret not in token.secret_sha256
    assert secret_matches(secret, token.secret_sha256)
    assert not secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), token.secret_sha256)
    assert new_token().value != token.value


@pytest.mark.parametrize("value", ["", "ctp_", "Bearer x", "ctp_0123456789ab_short", "ctp_0123456789ab_" + "A" * 44,
                                   "ctp_0123456789a_" + "A" * 43, "ctp_0123456789ab_" + "A" * 42 + "\n"])
def test_malformed_tokens_are_unauthorized_without_echoing_them(value: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        split_token(value)
    assert str(caught.value) == "malformed API token (expected ctp_<id>_<secret>)"


def test_scopes_nest_and_states_are_checked() -> None:
    assert authorize(record(ADMIN), True, READ).scope == ADMIN
    assert authorize(record(PUBLISH), True, PUBLISH).scope == PUBLISH
    with pytest.raises(Forbidden):
        authorize(record(READ), True, PUBLISH)
    with pytest.raises(Forbidden):
        authorize(record(PUBLISH), True, ADMIN)
    with pytest.raises(Unauthorized):
        authorize(record(ADMIN), False, READ)
    with pytest.raises(Unauthorized):
        authorize(None, True, READ)
    with pytest.raises(Unauthorized, match="expired"):
        authorize(record(ADMIN, expires_at=NOW - timedelta(seconds=1)), True, READ, now=NOW)
    with pytest.raises(Unauthorized, match="revoked"):
        authorize(record(ADMIN, revoked_at=NOW), True, READ, now=NOW)


@pytest.mark.parametrize("text", ["0d", "0h", "3651d", "1y", "-1d", "1.5d", "d", "1 d", "9" * 20 + "d"])
def test_bad_expiries_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_expiry(text)


def test_expiries_count_from_now() -> None:
    assert parse_expiry("30d", now=NOW) == NOW + timedelta(days=30)
    assert parse_expiry("12h", now=NOW) == NOW + timedelta(hours=12)
    assert parse_expiry(None) is None


def test_tokens_in_the_db_hold_no_secret_and_follow_their_state(registry: Registry) -> None:
    created, value = registry.create_token(scope=PUBLISH, name="ci-publisher")
    assert registry.authenticate(value, READ) == created
    assert registry.authenticate(value, PUBLISH).name == "ci-publisher"
    with pytest.raises(Forbidden):
        registry.authenticate(value, ADMIN)
    with registry.db.engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(text("SELECT * FROM api_token"))]
    _, secret = split_token(value)
    assert stored and not any(secret in str(cell) or value in str(cell) for row in stored for cell in row)
    expired, old = registry.create_token(scope=ADMIN, name="old", expires_at=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(Unauthorized, match="expired"):
        registry.authenticate(old, READ)
    assert registry.revoke_token(created.public_id).revoked_at is not None
    with pytest.raises(Unauthorized, match="revoked"):
        registry.authenticate(value, READ)
    assert [t.state() for t in registry.list_tokens()] == ["revoked", "expired"]
    with pytest.raises(NotFound):
        registry.revoke_token("f" * 12)
    with pytest.raises(InvalidInput):
        registry.revoke_token("../etc")
    with pytest.raises(InvalidInput):
        registry.create_token(scope="root", name="x")
    with pytest.raises(InvalidInput):
        registry.create_token(scope=READ, name="<script>")


def test_cli_prints_a_token_once_and_never_lists_it(cli_env, capsys) -> None:
    assert main(["tokens", "create", "--scope", "read", "--name", "fleet", "--expires", "30d"]) == 0
    value = capsys.readouterr().out.strip()
    assert value.startswith("ctp_")
    assert main(["tokens", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["scope"], t["state"]) for t in listed] == [("fleet", "read", "active")]
    assert value not in json.dumps(listed)
    assert main(["tokens", "revoke", listed[0]["id"]]) == 0
    assert main(["tokens", "revoke", "0" * 12]) == NotFound.exit_code
    for bad in (["--scope", "root"], ["--scope", "read", "--expires", "0d"], ["--scope", "read", "--name", "a b"]):
        assert main(["tokens", "create", *bad]) == InvalidInput.exit_code
    capsys.readouterr()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "::", "example.org"])
def test_serve_refuses_a_non_loopback_bind_without_tls(host: str) -> None:
    with pytest.raises(InvalidInput):
        _check_bind(host, tls=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_serve_binds_loopback_freely(host: str) -> None:
    _check_bind(host, tls=False)


def test_serve_binds_elsewhere_once_tls_is_acknowledged() -> None:
    _check_bind("0.0.0.0", tls=True)


def test_serve_refuses_before_binding(cli_env, monkeypatch, capsys) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == InvalidInput.exit_code
    assert "without TLS" in capsys.readouterr().err
    assert main(["serve", "--ssl-certfile", "/nonexistent"]) == InvalidInput.exit_code
    monkeypatch.setenv("CTPREG_URL", "http://127.0.0.1:1")
    assert main(["serve"]) == InvalidInput.exit_code
    assert "unset CTPREG_URL" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["ftp://host", "http://", "127.0.0.1:8200", "http://h/?x=1", "http://h/#f"])
def test_a_bad_registry_url_is_one_clear_error(url: str) -> None:
    with pytest.raises(InvalidInput, match="CTPREG_URL"):
        Settings.from_env({"CTPREG_HOME": "/tmp/x", "CTPREG_URL": url})


def test_the_token_never_shows_in_settings_repr() -> None:
    settings = Settings.from_env({"CTPREG_HOME": "/tmp/x", "CTPREG_URL": "http://h:1/", "CTPREG_TOKEN": "ctp_secret"})
    assert settings.url == "http://h:1" and "ctp_secret" not in repr(settings)


def test_an_expiry_in_any_offset_is_stored_as_its_instant(registry: Registry) -> None:
    """SQLite keeps no offset: an expiry of 00:00 at -08:00 must not come back as 00:00 UTC."""
    pacific = timezone(timedelta(hours=-8))
    registry.create_token(scope=READ, name="offset", expires_at=datetime(2030, 1, 1, tzinfo=pacific))
    assert registry.list_tokens()[0].expires_at == datetime(2030, 1, 1, 8, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="time zone"):
        registry.create_token(scope=READ, name="naive", expires_at=datetime(2030, 1, 1))
