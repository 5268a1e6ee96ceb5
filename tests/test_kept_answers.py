"""Answers a server keeps until the DB changes: the change markers they hang on, the middleware that replays them,
and a real two-worker server that must never send a stale answer or honour a token revoked a moment ago."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import urllib3
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from ctpreg.registry import Settings
from ctpreg.integrations.answers import KEPT_HEADER, MARKER, KeptAnswers
from ctpreg.registry.db.changes import PostgresMarker, SqliteMarker, change_marker
from ctpreg.registry.service import Registry
from ctpreg.registry.tokens import ADMIN, READ
from helpers import artifact_bytes
from served import Served, serving
from test_http_service import fresh_backend, main_with

KEPT = KEPT_HEADER[0].decode()


def current(marker) -> str | None:
    return asyncio.run(marker.current())


def test_the_sqlite_marker_moves_on_every_commit_and_only_then(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE t (x INTEGER)")
    marker = change_marker(f"sqlite:///{path}")
    assert isinstance(marker, SqliteMarker)
    first = current(marker)
    assert current(marker) == first, "reading the marker is not a change"
    writer.execute("BEGIN")
    writer.execute("INSERT INTO t VALUES (1)")
    assert current(marker) == first, "an uncommitted write is not a change"
    writer.execute("COMMIT")
    second = current(marker)
    assert second != first
    writer.execute("SELECT * FROM t").fetchall()
    assert current(marker) == second
    writer.execute("INSERT INTO t VALUES (2)")
    assert current(marker) not in (first, second)


@pytest.mark.postgres
def test_the_postgres_marker_moves_on_every_commit_and_only_then(pg_url: str) -> None:
    marker = change_marker(pg_url)
    assert isinstance(marker, PostgresMarker)
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")

    async def scenario() -> list[str | None]:
        seen = [await marker.current(), await marker.current()]
        with psycopg.connect(conninfo, autocommit=True) as writer:
            writer.execute("CREATE TABLE t (x integer)")
            seen.append(await marker.current())
            with writer.transaction():
                writer.execute("INSERT INTO t VALUES (1)")
                seen.append(await marker.current())  # in flight
            seen.append(await marker.current())  # committed
            writer.execute("SELECT * FROM t").fetchall()
            seen.append(await marker.current())
        await marker.close()
        return seen

    start, again, created, in_flight, committed, after_read = asyncio.run(scenario())
    assert start == again, "reading the marker is not a change"
    assert created != start
    assert committed not in (created, in_flight), "a commit after a snapshot changes every later one"
    assert after_read == committed, "a read is not a change"


def test_backends_without_a_marker_keep_nothing() -> None:
    assert change_marker("mysql+pymysql://u@h/db") is None


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Driver:
    """Calls an ASGI app directly, one whole request at a time."""

    app: ASGIApp

    def request(self, method: str, target: str, headers: dict[str, str] | None = None) -> Answer:
        path, _, query = target.partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "server": ("test", 80), "client": ("test", 1),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        asyncio.run(self.app(scope, receive, send))
        start = sent[0]
        return Answer(start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
                      b"".join(m.get("body", b"") for m in sent[1:]))

    def get(self, target: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", target, headers)

    def post(self, target: str) -> Answer:
        return self.request("POST", target)


class Recorder:
    """A tiny app behind ``KeptAnswers`` that counts how often each route really ran."""

    def __init__(self, limit_bytes: int = 1 << 20) -> None:
        self.calls = 0
        self.marker = "1"

        async def resolve(request: Request) -> Response:
            self.calls += 1
            return JSONResponse({"answer": self.calls})

        async def missing(request: Request) -> Response:
            self.calls += 1
            return JSONResponse({"error": "none"}, status_code=404)

        async def big(request: Request) -> Response:
            self.calls += 1
            return Response(b"x" * (limit_bytes // 4))

        inner = Starlette(routes=[Route("/v1/resolve", resolve, methods=["GET", "POST"]),
                                  Route("/v1/prompt", missing), Route("/v1/objects/big", big),
                                  Route("/v1/tokens", resolve)])
        kept = KeptAnswers(inner, limit_bytes=limit_bytes)

        async def with_marker(scope, receive, send) -> None:
            scope.setdefault("state", {})[MARKER] = self.marker
            await kept(scope, receive, send)

        self.client = Driver(with_marker)


def test_a_kept_answer_is_replayed_only_under_the_same_marker() -> None:
    app = Recorder()
    first = app.client.get("/v1/resolve?model=a")
    replay = app.client.get("/v1/resolve?model=a")
    assert first.json() == replay.json() == {"answer": 1} and app.calls == 1
    assert KEPT not in first.headers and replay.headers[KEPT] == "kept"
    assert app.client.get("/v1/resolve?model=b").json() == {"answer": 2}, "another query is another answer"
    app.marker = "2"
    assert app.client.get("/v1/resolve?model=a").json() == {"answer": 3}, "the DB changed: computed again"
    assert app.client.get("/v1/resolve?model=a").json() == {"answer": 3} and app.calls == 3


def test_errors_writes_conditional_requests_and_other_routes_are_never_replayed() -> None:
    app = Recorder()
    for _ in range(2):
        assert app.client.get("/v1/prompt").status_code == 404
        app.client.post("/v1/resolve")
        app.client.get("/v1/resolve", headers={"If-None-Match": '"x"'})
        app.client.get("/v1/resolve", headers={"Range": "bytes=0-1"})
        app.client.get("/v1/tokens")
    assert app.calls == 10


def test_the_budget_bounds_what_is_kept() -> None:
    app = Recorder(limit_bytes=64 << 10)
    app.client.get("/v1/objects/big")
    app.client.get("/v1/objects/big")
    assert app.calls == 2, "an answer over an eighth of the budget is not kept"
    for model in range(200):
        app.client.get(f"/v1/resolve?model={model}")
    app.client.get("/v1/resolve?model=199")
    assert app.calls == 202
    app.client.get("/v1/resolve?model=0")
    assert app.calls == 202, "two hundred small answers fit in 64 KiB"
    tight = Recorder(limit_bytes=8 * 64)
    for model in range(20):
        tight.client.get(f"/v1/resolve?model={model}")
    tight.client.get("/v1/resolve?model=0")
    assert tight.calls == 21, "the least recently used answer went first"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "registry"
    if request.param == "sqlite":
        env = {"CTPREG_HOME": str(home), "CTPREG_PROGRESS": "0"}
        assert main_with(env, "db", "upgrade") == 0
        yield env
        return
    with fresh_backend(request.getfixturevalue("pg_database"), request.getfixturevalue("moto_endpoint")) as backend:
        env = {**backend, "CTPREG_HOME": str(home)}
        assert main_with(env, "db", "upgrade") == 0
        yield env


@pytest.fixture
def kept_server(registry_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Served, Registry]]:
    direct = Registry.from_settings(Settings.from_env(registry_env))
    with serving(registry_env, tmp_path / "serve.log", "--workers", "2") as served:
        yield served, direct
    direct.db.dispose()


def ask(pool: urllib3.PoolManager, served: Served, token: str, path: str) -> urllib3.BaseHTTPResponse:
    return pool.request("GET", served.url + path, headers={"Authorization": f"Bearer {token}"})


ROUNDS = 12  # requests per check: enough that both workers answer (each keeps its own answers)


def test_a_served_answer_follows_every_change_made_anywhere(kept_server) -> None:
    served, direct = kept_server
    _, token = direct.create_token(scope=READ, name="fleet")
    pool = urllib3.PoolManager(retries=False, maxsize=4)
    first = direct.publish_bytes(artifact_bytes(1, model="kept-m")).prompt
    listing = "/v1/prompts?model=kept-m"
    resolving = "/v1/resolve?model=kept-m&compression=gptq-w3-g128"
    answers = [ask(pool, served, token, resolving) for _ in range(ROUNDS)]
    assert {json.loads(a.data)["candidates"][0]["ref"] for a in answers} == {first.ref}
    assert any(a.headers.get(KEPT) == "kept" for a in answers), "repeated reads are answered from what was kept"
    assert len({a.headers["X-Request-ID"] for a in answers}) == ROUNDS, "a replayed answer has its own request id"
    for _ in range(ROUNDS):
        ask(pool, served, token, listing)

    second = direct.publish_bytes(artifact_bytes(2, model="kept-m")).prompt  # another process publishes
    for _ in range(ROUNDS):
        refs = [p["ref"] for p in json.loads(ask(pool, served, token, listing).data)]
        assert second.ref in refs, "a kept listing outlived a publish"
    direct.deprecate(first.ref)
    for _ in range(ROUNDS):
        refs = [c["ref"] for c in json.loads(ask(pool, served, token, resolving).data)["candidates"]]
        assert first.ref not in refs, "a kept resolve outlived a deprecation"
    direct.set_alias(second.ref, "prod")
    for _ in range(ROUNDS):
        answer = ask(pool, served, token, f"/v1/prompt?ref={second.name}@prod")
        assert answer.status == 200 and json.loads(answer.data)["ref"] == second.ref


def test_a_revoked_token_is_refused_at_once_by_every_worker(kept_server) -> None:
    served, direct = kept_server
    direct.publish_bytes(artifact_bytes(3, model="kept-r"))
    record, token = direct.create_token(scope=ADMIN, name="soon-gone")
    pool = urllib3.PoolManager(retries=False, maxsize=4)
    assert all(ask(pool, served, token, "/v1/prompts?model=kept-r").status == 200 for _ in range(ROUNDS))
    direct.revoke_token(record.public_id)
    statuses = [ask(pool, served, token, "/v1/prompts?model=kept-r").status for _ in range(ROUNDS)]
    assert statuses == [401] * ROUNDS


def test_keep_mb_zero_computes_every_answer(registry_env: dict[str, str], tmp_path: Path) -> None:
    direct = Registry.from_settings(Settings.from_env(registry_env))
    _, token = direct.create_token(scope=READ, name="fleet")
    direct.publish_bytes(artifact_bytes(4, model="kept-z"))
    pool = urllib3.PoolManager(retries=False, maxsize=4)
    with serving(registry_env, tmp_path / "serve.log", "--keep-mb", "0") as served:
        answers = [ask(pool, served, token, "/v1/prompts?model=kept-z") for _ in range(4)]
    direct.db.dispose()
    assert all(a.status == 200 and KEPT not in a.headers for a in answers)
