"""Answers of the read routes kept in each server worker until the metadata DB changes.

A fleet asks the same few questions over and over (the prompt for llama-7b at 3 bits, the object of that prompt).
Each request reads the DB's change marker (``registry.db.changes``: one cheap statement) before anything else; a
kept answer is sent again only when it was computed under the very same marker, so no commit anywhere (a publish,
a deprecation, an alias, a revoked token, from any worker or process) has happened since. Otherwise the route runs
as usual and its answer is kept under the marker read before it started. Only successful answers of routes every
valid token may read are kept, at most ``limit_bytes`` of them (least recently used go first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MARKER = "change_marker"  # the key of the request's marker in the ASGI scope's state
KEPT_PATHS = frozenset({"/v1/resolve", "/v1/candidates", "/v1/prompt", "/v1/prompts", "/v1/models", "/v1/model",
                        "/v1/evidence"})
KEPT_PREFIXES = ("/v1/objects/",)
MAX_SHARE = 8  # one answer may take at most this share of the budget
KEPT_HEADER = (b"x-ctpreg-answer", b"kept")  # on a replayed answer: tells it from a computed one


@dataclass(frozen=True)
class KeptAnswer:
    marker: str
    start: Message
    body: bytes


class KeptAnswers:
    """ASGI middleware: replay a GET's kept answer when the DB has not changed since it was computed."""

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app, self.limit_bytes = app, limit_bytes
        self._answers: OrderedDict[tuple[str, bytes], KeptAnswer] = OrderedDict()
        self._bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        marker = scope.get("state", {}).get(MARKER)
        if marker is None or not self._keepable(scope):
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope["query_string"])
        kept = self._answers.get(key)
        if kept is not None and kept.marker == marker:
            self._answers.move_to_end(key)
            await send(kept.start)
            await send({"type": "http.response.body", "body": kept.body})
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def recorded(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and start is not None and start["status"] == 200:
                    replayed = {**start, "headers": [*start.get("headers", []), KEPT_HEADER]}
                    self._keep(key, KeptAnswer(marker, replayed, b"".join(chunks)))
            await send(message)

        await self.app(scope, receive, recorded)

    def _keepable(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET" or self.limit_bytes <= 0:
            return False
        path = scope["path"]
        if path not in KEPT_PATHS and not path.startswith(KEPT_PREFIXES):
            return False
        return not any(name in (b"if-none-match", b"range") for name, _ in scope["headers"])

    def _keep(self, key: tuple[str, bytes], answer: KeptAnswer) -> None:
        if _size(key, answer) > self.limit_bytes // MAX_SHARE:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= _size(key, old)
        self._answers[key] = answer
        self._bytes += _size(key, answer)
        while self._bytes > self.limit_bytes:
            dropped_key, dropped = self._answers.popitem(last=False)
            self._bytes -= _size(dropped_key, dropped)


def _size(key: tuple[str, bytes], answer: KeptAnswer) -> int:
    """What an answer counts against the budget: its body and its key."""
    return len(answer.body) + len(key[0]) + len(key[1])
