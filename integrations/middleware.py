"""The ASGI middleware in front of the registry's routes, outermost first:

``RequestIds`` (an id per request, on every answer and every log line of it; a bug's traceback goes to the log and
the caller reads a 500 in the error shape; a client that hangs up mid-request is one quiet log line), ``AccessLog``,
``Authenticate`` (401 before anything of the request is read), ``KeptAnswers`` (``integrations.answers``) and
``BodyLimit``. Nothing here blocks the event loop: DB work runs in the thread pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ctpreg.registry import errors
from ctpreg.registry.db.changes import ChangeMarker
from ctpreg.registry.service import Registry
from ctpreg.registry.tokens import READ, TokenRecord, authorize

from .answers import MARKER
from .http_errors import REQUEST_ID, Scrubber, log, new_request_id, request_id_of

REQUEST_ID_HEADER = b"x-request-id"
_TOKEN_SHAPED = re.compile(r"ctp_[A-Za-z0-9_-]*", re.IGNORECASE)


def redacted(path: str) -> str:
    """A path as the access log writes it: anything shaped like a token cut out (a token pasted into a URL)."""
    return _TOKEN_SHAPED.sub("ctp_<redacted>", path)


class RequestIds:
    """Give each request an id (``X-Request-ID`` on its answer, ``request_id`` in its error body and log lines)."""

    def __init__(self, app: ASGIApp, scrubber: Scrubber) -> None:
        self.app, self.scrubber = app, scrubber

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})[REQUEST_ID] = request_id
        started = False

        async def tagged(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except ClientDisconnect:
            log.info(json.dumps({REQUEST_ID: request_id, "event": "client went away mid-request",
                                 "path": redacted(scope["path"])}))
        except Exception as exc:  # a bug: the log gets its traceback, the caller the error shape
            response = self.scrubber.unexpected(exc, request_id)
            if not started:
                await response(scope, receive, tagged)


class BodyLimit:
    """Refuse (413) any request body above ``limit`` bytes, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int, scrubber: Scrubber) -> None:
        self.app, self.limit, self.scrubber = app, limit, scrubber

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen, exceeded = 0, False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # the app sees a client that went away, and what it answers is dropped
                exceeded = True
                return {"type": "http.disconnect"}
            return message

        async def unless_exceeded(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted, unless_exceeded)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = errors.InvalidInput(f"request body over {self.limit} bytes")
        await self.scrubber.response(refusal, request_id_of(scope), status=413)(scope, receive, send)


class Authenticate:
    """401 for a ``/v1/`` request without a valid token, before anything of it (its body above all) is read; the
    token's record goes into the request's state for the routes' scope checks. Only ``/health``, ``/ready`` and the
    schema answer without one.

    With a change marker (``registry.db.changes``), the marker read here goes into the state too (``KeptAnswers``
    uses it), and a token already checked under the same marker is not looked up again: no token was created or
    revoked since. Its expiry is checked on every request. Tokens are looked up in the thread pool and the marker
    is read in a thread of its own (``MarkerThread``): however long the DB takes, the serving loop goes on."""

    KNOWN_TOKENS = 10_000

    def __init__(self, app: ASGIApp, registry: Registry, scrubber: Scrubber,
                 marker: ChangeMarker | None = None) -> None:
        self.app, self.registry, self.scrubber = app, registry, scrubber
        self.marker = MarkerThread(marker) if marker is not None else None
        self._known: dict[str, tuple[str, TokenRecord]] = {}  # sha256 of a token -> (marker, its record)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        kind, _, value = header.partition(" ")
        marker = await self.marker.current() if self.marker is not None else None
        try:
            if kind.lower() != "bearer" or not value:
                raise errors.Unauthorized("this endpoint needs an API token: Authorization: Bearer ctp_...")
            record = await self._authenticate(value.strip(), marker)
        except errors.CtpregError as exc:
            await self.scrubber.response(exc, request_id_of(scope))(scope, receive, send)
            return
        scope.setdefault("state", {}).update(token=record, token_id=record.public_id, **{MARKER: marker})
        await self.app(scope, receive, send)

    async def _authenticate(self, value: str, marker: str | None) -> TokenRecord:
        digest = hashlib.sha256(value.encode("latin-1")).hexdigest()
        known = self._known.get(digest)
        if known is not None and marker is not None and known[0] == marker:
            return authorize(known[1], True, READ)
        record = await run_in_threadpool(self.registry.authenticate, value, READ)
        if marker is not None:
            if len(self._known) >= self.KNOWN_TOKENS:
                self._known.clear()
            self._known[digest] = (marker, record)
        return record


class MarkerThread:
    """A change marker driven from a thread of its own running an event loop of its own, started on first use.

    ``ChangeMarker.current`` is a coroutine, but a marker may do blocking work inside it (``sqlite3`` has no async
    API, and a read waits while another connection holds a lock); on the serving loop that would stall every
    request of the worker, ``/health`` included. One loop also keeps an async connection (PostgreSQL) on the loop it
    was opened in."""

    def __init__(self, marker: ChangeMarker) -> None:
        self.marker = marker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    async def current(self) -> str | None:
        future = asyncio.run_coroutine_threadsafe(self.marker.current(), self._started())
        return await asyncio.wrap_future(future)

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:  # started lazily: in the worker process, after any fork
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="ctpreg-change-marker", daemon=True).start()
                self._loop = loop
        return self._loop


class AccessLog:
    """One JSON line per request: its id, method, path (tokens cut out), status, milliseconds, client, and the
    token's public id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            client = scope.get("client")
            state = scope.get("state", {})
            log.info(json.dumps({
                REQUEST_ID: state.get(REQUEST_ID), "method": scope["method"], "path": redacted(scope["path"]),
                "status": status, "ms": round(1000 * (time.perf_counter() - started), 2),
                "client": client[0] if client else None, "token": state.get("token_id"),
            }))
