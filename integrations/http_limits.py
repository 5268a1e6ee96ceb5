"""Bounds on what a client may make a server worker hold before a request reaches the app.

uvicorn's httptools protocol bounds neither a request's head (httptools joins a header's pieces without limit, and
uvicorn keeps every header) nor the time a client may take to send it: a client that sends a head one byte every
few seconds holds its connection, and its buffer, for ever. ``BoundedHttp`` adds both bounds (431 for a head too
large or with too many headers, 408 and a closed connection for a head not complete in time) and closes a new
connection that sends nothing. Bodies are bounded by the app (``middleware.BodyLimit``) and read only after the
token was checked; uvicorn's keep-alive timeout closes idle connections between requests.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .request_limits import RequestLimits


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools hands it back from ``feed_data`` as a parser error."""


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``RequestLimits`` on every request's head."""

    def __init__(self, *args, limits: RequestLimits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_parsed = 0  # the head's bytes as the parser's callbacks hand them over
        self._head_raw = 0  # bytes received while a head is open (httptools buffers a header's pieces itself)
        self._head_fields = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._over_limit = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._over_limit:
            return
        super().data_received(data)
        if self._in_head and not self._over_limit:
            self._head_raw += len(data)
            if self._head_raw > self.limits.max_head_bytes:
                self._refuse(431, "request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_parsed, self._head_raw, self._head_fields = True, 0, 0, 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), fields=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, fields=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._over_limit:  # the parser error was ours: a head over the limits
            self._over_limit = False
            self._refuse(431, "request head too large or with too many headers")
            return
        super().send_400_response(msg)

    def _count(self, size: int, *, fields: int) -> None:
        self._head_parsed += size
        self._head_fields += fields
        if self._head_parsed > self.limits.max_head_bytes or self._head_fields > self.limits.max_headers:
            self._over_limit = True
            raise _HeadTooLarge

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "request head not complete in time")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` and close: nothing more of this connection is read."""
        self._over_limit, self._in_head = True, False
        self._cancel_head_timer()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()
