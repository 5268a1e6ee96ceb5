"""A fake registry server that answers whatever a test scripts, for testing the HTTP client as an attacker would.

Each route is a function of the request that returns status, headers and a body (bytes, or an iterator of chunks
sent with chunked transfer encoding, so endless or slow bodies are possible). ``sent`` counts the body bytes that
reached the socket, which tells how much the client read before it hung up.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Body = bytes | Iterable[bytes]
Answer = tuple[int, dict[str, str], Body]


def json_answer(value: Any, status: int = 200) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


def raw_answer(body: Body, status: int = 200, **headers: str) -> Answer:
    named = {key.replace("_", "-").title(): value for key, value in headers.items()}
    return status, {"Content-Type": "application/json", **named}, body


@dataclass
class HostileServer:
    url: str = ""
    routes: dict[str, Callable[[str], Answer]] = field(default_factory=dict)
    sent: int = 0
    requests: list[str] = field(default_factory=list)

    def answer(self, path: str, answer: Answer | Callable[[str], Answer]) -> None:
        """Answer every request for ``path`` (without its query) with ``answer``."""
        self.routes[path] = answer if callable(answer) else (lambda _query: answer)


def _handler(server: HostileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            parts = urlsplit(self.path)
            server.requests.append(self.path)
            route = server.routes.get(parts.path)
            status, headers, body = route(parts.query) if route else json_answer({"detail": "no route"}, 404)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            try:
                if isinstance(body, bytes):
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self._write(body)
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in _chunked(body):
                        self._write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _write(self, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            server.sent += len(data)

        do_GET = do_POST = do_PUT = do_DELETE = _respond

    return Handler


def _chunked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    yield b"0\r\n\r\n"


@contextmanager
def hostile_server() -> Iterator[HostileServer]:
    state = HostileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
