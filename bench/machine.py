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


def busy_cpu_seconds() -> float:
    """CPU seconds every core of this machine has spent busy since boot (``/proc/stat``; Linux)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU seconds used by the local PostgreSQL server's processes alive now (``/proc``; Linux)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                line = stat.read()
        except OSError:  # gone meanwhile
            continue
        name, rest = line[line.index("(") + 1 : line.rindex(")")], line[line.rindex(")") + 2 :].split()
        if name.startswith("postgres"):
            total += int(rest[11]) + int(rest[12])
    return total / os.sysconf("SC_CLK_TCK")


S3_SERVERS = {
    "werkzeug": "moto's own server (werkzeug): a new connection and thread per request",
    "keep-alive": "moto's S3 app under gunicorn (gthread): connections kept alive, as S3 keeps them",
}


@contextlib.contextmanager
def moto_s3(server: str = "werkzeug") -> Iterator[str]:
    """An S3 server (moto) on a loopback port with fake credentials; yields its endpoint URL.

    ``werkzeug`` is moto's ``ThreadedMotoServer`` in this process. Its HTTP server answers every request with
    ``Connection: close``, so each boto3 call pays a TCP connect and the server a new thread, costs a real S3 client
    does not pay. ``keep-alive`` serves the same moto S3 application from a gunicorn process that keeps connections
    open (both speak S3's wire protocol to boto3)."""
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    if server == "keep-alive":
        with _gunicorn_moto() as endpoint:
            yield endpoint
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's HTTP server logs every request
    threaded = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    threaded.start()
    host, port = threaded.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        threaded.stop()


@contextlib.contextmanager
def _gunicorn_moto() -> Iterator[str]:
    import signal
    import socket
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    process = subprocess.Popen([
        gunicorn, "--workers", "1", "--worker-class", "gthread", "--threads", "16", "--keep-alive", "60",
        "--bind", f"127.0.0.1:{port}", "--log-level", "error",
        "moto.moto_server.werkzeug_app:create_backend_app('s3')",
    ])
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:  # an S3 error answer: the server is up
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn serving moto did not start (exit {process.poll()})") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.send_signal(signal.SIGINT)  # gunicorn's quick shutdown: kept-alive connections do not hold it up
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
