"""Ports the servers bind (``serve``, ``proxy``): a port in use is one line with its own exit code, before any work."""

from __future__ import annotations

import errno
import socket

from ctpreg.registry.errors import AddressInUse, InvalidInput


def check_port_free(host: str, port: int) -> None:
    """``AddressInUse`` (one line, its own exit code) when another process listens on the port, before a server
    tries: gunicorn would retry for seconds and then exit with a generic code, uvicorn with a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"{host}:{port} is already in use by another process (choose another --port)") \
                    from None
            raise InvalidInput(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
