"""The machine line every benchmark prints first: cores, Python, torch and database versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import subprocess
from collections.abc import Iterator


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _postgres() -> str:
    try:
        out = subprocess.run(["psql", "--version"], capture_output=True, text=True, timeout=10).stdout.split()
        return out[2] if len(out) > 2 else "absent"
    except (OSError, subprocess.SubprocessError):
        return "absent"


def describe() -> str:
    import sqlite3

    return (
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {_version('torch')}, transformers {_version('transformers')}, peft {_version('peft')}, "
        f"SQLite {sqlite3.sqlite_version}, PostgreSQL {_postgres()}, SQLAlchemy {_version('sqlalchemy')}"
    )


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """An S3 server (moto) on a loopback port with fake credentials; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's HTTP server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
