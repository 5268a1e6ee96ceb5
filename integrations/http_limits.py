"""Bounds on what a client may make a server worker hold before a request reaches the app.

uvicorn's httptools protocol bounds neither a request's head (httptools joins a header's pieces without limit, and
uvicorn keeps every header) nor the time a client may take to send it: a client that sends a head one byte every
few seconds holds its connection, and its buffer, for ever. ``BoundedHttp`` adds both bounds (431 for a head too
large or with too many headers, 408 and a closed connection for a head not complete in time) and closes a new
connection that sends nothing. Its refusals, uvicorn's 400 for a malformed request too, are in the error shape of
every other answer, with a request id. Bodies are bounded by the app (``middleware.BodyLimit``) and read only after the
token was checked; uvicorn's keep-alive timeout closes idle connections between requests.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ctpreg.registry import errors

from .http_errors import REQUEST_ID, log, new_request_id
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
        self._spoke = False  # the client sent a byte on this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._over_limit:
            return
        self._spoke = True
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
        """uvicorn's answer to a request the parser refused; a head over the limits is refused by our callbacks."""
        if self._over_limit:
            self._over_limit = False
            self._refuse(431, "request head too large or with too many headers")
            return
        self._refuse(400, msg)

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
        if not self._in_head or self.transport.is_closing():
            return
        if self._spoke:
            self._refuse(408, "request head not complete in time")
        else:  # a connection opened and never used (a browser's preconnect, a port scan): closed without a word
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in the error shape of every other answer (``http_errors``), and close: nothing more of
        this connection is read."""
        self._over_limit, self._in_head = True, False
        self._cancel_head_timer()
        request_id = new_request_id()
        body = json.dumps({"error": {"type": errors.InvalidInput.__name__, "message": message,
                                     "exit_code": errors.InvalidInput.exit_code, REQUEST_ID: request_id}}).encode()
        log.warning(json.dumps({REQUEST_ID: request_id, "status": status, "refused": message,
                                "client": self.client[0] if self.client else None}))
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(), len(body),
                                                   request_id.encode(), body))
        self.transport.close()
