"""The server's side of the trust boundary, in process: error bodies that name no location and carry a request id,
readiness that needs the object store to be there, token expiries and ids, 405s, the documentation pages, and gc
racing a writer."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ctpreg.cli.main import main
from ctpreg.integrations.server import create_app
from ctpreg.registry import Settings
from ctpreg.registry.db.engine import Database
from ctpreg.registry.errors import StoreError
from ctpreg.registry.service import Registry
from ctpreg.registry.stores import open_store
from ctpreg.registry.stores.local import LocalStore
from ctpreg.registry.tokens import ADMIN, READ
from helpers import artifact_bytes

ACCESS = "ctpreg.access"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A registry home whose path is in no answer: every error body is checked for it."""
    return tmp_path / "secret-home"


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    registry = Registry.from_settings(Settings.from_env({"CTPREG_HOME": str(home)}))
    (home / "objects").mkdir(parents=True)
    yield registry
    registry.db.dispose()


@pytest.fixture
def tokens(registry: Registry) -> dict[str, str]:
    return {scope: registry.create_token(scope=scope, name=f"t-{scope}")[1] for scope in (READ, ADMIN)}


@pytest.fixture
def client(registry: Registry) -> TestClient:
    return TestClient(create_app(registry, keep_bytes=0), raise_server_exceptions=False)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_hides(answer, *secrets: str) -> str:
    """The answer is an error in the one shape, with the id of its header, and none of ``secrets`` in it."""
    error = answer.json()["error"]
    assert set(error) == {"type", "message", "exit_code", "request_id"}, error
    assert error["request_id"] == answer.headers["X-Request-ID"]
    for secret in secrets:
        assert secret not in answer.text, (secret, answer.text)
    return error["request_id"]


def logged(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if request_id in r.getMessage())


def test_every_answer_carries_a_request_id(client, tokens) -> None:
    ids = {client.get(path, headers=auth(tokens[READ])).headers["X-Request-ID"]
           for path in ("/health", "/ready", "/v1/models", "/v1/models", "/openapi.json", "/nowhere")}
    assert len(ids) == 6, "one id per request"
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and assert_hides(refused)


def test_a_corrupt_or_missing_object_is_refused_without_naming_the_store(client, registry, tokens, home,
                                                                        caplog) -> None:
    caplog.set_level(logging.INFO, ACCESS)
    record = registry.publish_bytes(artifact_bytes(1, model="leak-m")).prompt
    path = home / "objects" / record.object_key
    path.write_bytes(artifact_bytes(2, model="leak-m"))
    corrupt = client.get(f"/v1/objects/{record.sha256}", headers=auth(tokens[READ]))
    assert corrupt.status_code == 500 and corrupt.json()["error"]["type"] == "IntegrityError"
    request_id = assert_hides(corrupt, str(home), "file://")
    assert str(home) in logged(caplog, request_id), "the log keeps the detail under the request id"
    path.unlink()
    missing = client.get(f"/v1/objects/{record.sha256}", headers=auth(tokens[READ]))
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"
    assert str(home) in logged(caplog, assert_hides(missing, str(home), "file://"))


def test_gc_in_front_of_a_lost_db_refuses_without_naming_the_store(registry, home, tmp_path) -> None:
    registry.publish_bytes(artifact_bytes(3, model="lost-m"))
    other_db = Database(f"sqlite:///{tmp_path / 'other.db'}", auto_upgrade_empty=True)
    lost = Registry(other_db, LocalStore(home / "objects"))
    admin = lost.create_token(scope=ADMIN, name="ops")[1]
    answer = TestClient(create_app(lost, keep_bytes=0)).post("/v1/gc", headers=auth(admin), json={})
    assert answer.status_code == 409 and answer.json()["error"]["type"] == "Conflict"
    assert "reindex" in answer.json()["error"]["message"], "the rest of the message is kept"
    assert_hides(answer, str(home), "file://")
    lost.db.dispose()


def test_a_bug_is_a_500_in_the_error_shape_with_its_traceback_only_in_the_log(client, registry, tokens,
                                                                              monkeypatch, caplog) -> None:
    def broken(**_kwargs):
        raise RuntimeError("detail with /srv/secret/path")

    monkeypatch.setattr(registry, "list_prompts", broken)
    answer = client.get("/v1/prompts", headers=auth(tokens[READ]))
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "CtpregError"
    request_id = assert_hides(answer, "/srv/secret/path", "RuntimeError")
    assert any(r.exc_info and request_id in r.getMessage() for r in caplog.records)


def test_ready_needs_the_store_folder(registry, client, home) -> None:
    assert client.get("/ready").json() == {"status": "ok", "checks": {"db": "ok", "store": "ok"}}
    (home / "objects").rmdir()  # an unmounted volume: the folder is gone
    answer = client.get("/ready")
    assert answer.status_code == 503 and answer.json()["checks"] == {"db": "ok", "store": "StoreError"}


def test_serve_refuses_a_store_folder_that_is_not_there(cli_env, tmp_path, monkeypatch, capsys) -> None:
    missing = tmp_path / "unmounted" / "objects"
    monkeypatch.setenv("CTPREG_STORE_URL", missing.as_uri())
    with socket.socket() as taken:  # were the check missing, binding would fail, not serve on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == StoreError.exit_code
    assert "does not exist" in capsys.readouterr().err and not missing.exists()


def test_an_s3_store_without_its_bucket_is_not_usable(moto_endpoint: str) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store("s3://ctpreg-no-such-bucket/registry", s3_endpoint_url=moto_endpoint).check()


@pytest.mark.parametrize("expires_at", [
    "9999-12-31T23:59:59-08:00", "0001-01-01T00:00:00+08:00", "2020-01-01T00:00:00+00:00", "2030-01-01T00:00:00",
    "tomorrow", "2030-13-01T00:00:00+00:00", "9" * 65,
    (datetime.now(UTC) + timedelta(days=3660)).isoformat(),
])
def test_token_expiries_out_of_range_or_unparseable_are_422(client, tokens, expires_at) -> None:
    answer = client.post("/v1/tokens", headers=auth(tokens[ADMIN]),
                         json={"scope": "read", "name": "x", "expires_at": expires_at})
    assert answer.status_code == 422, answer.text
    assert_hides(answer)


def test_a_token_expiry_within_the_cap_is_kept_in_utc(client, tokens) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    answer = client.post("/v1/tokens", headers=auth(tokens[ADMIN]),
                         json={"scope": "read", "name": "x", "expires_at": soon.astimezone().isoformat()})
    assert answer.status_code == 201 and answer.json()["record"]["expires_at"] == soon.isoformat()


def test_a_token_pasted_into_a_path_is_refused_and_never_logged(client, registry, tokens, caplog) -> None:
    caplog.set_level(logging.INFO, ACCESS)
    _, pasted = registry.create_token(scope=READ, name="pasted")
    for path in (f"/v1/tokens/{pasted}", f"/v1/objects/{pasted}", f"/{pasted}"):
        answer = client.delete(path, headers=auth(tokens[ADMIN]))
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
        assert pasted not in answer.text
    assert client.get("/v1/models", headers=auth(pasted)).status_code == 200, "the token was not revoked"
    lines = [r.getMessage() for r in caplog.records]
    assert any('"/v1/tokens/ctp_' in line for line in lines)
    assert all(pasted not in line and pasted[4:] not in line for line in lines)


def test_405_lists_every_method_of_the_path(client, tokens) -> None:
    contract = client.get("/openapi.json").json()
    paths = {path: {m.upper() for m in ops} for path, ops in contract["paths"].items()}
    paths["/openapi.json"] = {"GET", "HEAD"}
    for path, methods in paths.items():
        url = path.replace("{sha256}", "0" * 64).replace("{token_id}", "0" * 12)
        answer = client.request("PATCH", url, headers=auth(tokens[ADMIN]))
        assert answer.status_code == 405, (path, answer.status_code)
        assert set(answer.headers["Allow"].split(", ")) >= methods, (path, answer.headers["Allow"])
        assert_hides(answer)


def test_the_documentation_pages_are_served_only_when_asked(registry) -> None:
    quiet = TestClient(create_app(registry, keep_bytes=0))
    assert quiet.get("/docs").status_code == 404 and quiet.get("/redoc").status_code == 404
    assert quiet.get("/openapi.json").status_code == 200
    documented = TestClient(create_app(registry, keep_bytes=0, docs=True))
    assert documented.get("/docs").status_code == 200 and documented.get("/redoc").status_code == 200


def test_listing_skips_objects_that_go_away_under_it(registry, home, monkeypatch) -> None:
    """gc lists the store while publishes rename temp files into place and other gcs delete: a file that was in
    the folder when it was read and is gone when it is looked at is skipped, never an error."""
    kept = registry.publish_bytes(artifact_bytes(5, model="race-m")).prompt
    gone = registry.publish_bytes(artifact_bytes(6, model="race-m")).prompt
    store: LocalStore = registry.store
    doomed = {home / "objects" / gone.object_key: gone.object_key.encode(),
              home / "objects" / "prompts" / kept.sha256[:2] / ".x.safetensors.abc.tmp": b"half"}
    real = Path.rglob

    def racing(self: Path, pattern: str):
        found = list(real(self, pattern))
        for path in doomed:
            path.unlink(missing_ok=True)  # renamed into place, or collected, after the folder was read
        return iter(found)

    def plant() -> None:
        for path, data in doomed.items():
            path.write_bytes(data)

    monkeypatch.setattr(Path, "rglob", racing)
    plant()
    assert [o.key for o in store.list()] == [kept.object_key]
    plant()
    assert store.partial_uploads(datetime.now(UTC) + timedelta(1)) == []
    plant()
    assert registry.gc(grace_seconds=0) == []
    assert (home / "objects" / kept.object_key).exists()
