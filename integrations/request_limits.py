"""The bounds ``ctpreg serve`` puts on a request's head and on idle connections (``http_limits`` applies them).

Apart from the protocol code so that the CLI can show them, with their defaults, without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctpreg.registry.errors import InvalidInput


@dataclass(frozen=True)
class RequestLimits:
    """What one connection may make a worker hold, and for how long, before its request reaches the app."""

    max_head_bytes: int = field(default=16 << 10, metadata={
        "help": "largest request head, request line and headers together, in bytes (431 above)"})
    max_headers: int = field(default=100, metadata={"help": "most header fields in one request (431 above)"})
    head_timeout_s: float = field(default=10.0, metadata={
        "help": "seconds a client may take to send a request's head, from its first byte or from the connection's "
                "opening (then 408, and the connection is closed)"})
    keep_alive_s: int = field(default=5, metadata={"help": "seconds an idle connection is kept open between requests"})

    def __post_init__(self) -> None:
        if not 1024 <= self.max_head_bytes <= 1 << 20:
            raise InvalidInput("the largest request head must be 1 KiB .. 1 MiB")
        if not 1 <= self.max_headers <= 10_000:
            raise InvalidInput("the most header fields must be 1 .. 10000")
        if not 0 < self.head_timeout_s <= 3600 or not 1 <= self.keep_alive_s <= 3600:
            raise InvalidInput("the head and keep-alive timeouts must be in (0, 3600] seconds")
