"""A real ``ctpreg serve`` in a subprocess on a loopback port, for the HTTP tests and the serving bench."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import urllib3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """What the server wrote (its access log is on stderr)."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an orchestrator stops it; the exit code of a graceful shutdown."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@contextmanager
def serving(env: Mapping[str, str], log_path: Path, *args: str, startup_s: float = 60.0,
            ca_certs: Path | None = None) -> Iterator[Served]:
    """``ctpreg serve`` with ``env`` (the registry's DB and store) until the block ends; waits for ``/ready``.
    Its output goes to ``log_path`` (a pipe nobody reads would fill and stall it). With ``ca_certs`` (the server's
    own certificate, given in ``args``) it is asked over https."""
    port = free_port()
    command = [sys.executable, "-m", "ctpreg.cli.main", "serve", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its workers too are stopped with its process group
    served = Served(f"{'https' if ca_certs else 'http'}://127.0.0.1:{port}", process, log_path)
    pool = urllib3.PoolManager(retries=False, timeout=2.0, ca_certs=str(ca_certs) if ca_certs else None)
    deadline = time.monotonic() + startup_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ctpreg serve exited {process.returncode}: {served.log()}")
            try:
                if pool.request("GET", f"{served.url}/ready").status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ctpreg serve did not become ready")
            time.sleep(0.1)
        pool.clear()  # an idle TLS connection would hold a graceful shutdown up (it waits for the close_notify)
        yield served
    finally:
        stop_group(process)


def workers_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a server's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the server and its workers, SIGKILL what is left after ``grace_s``: no worker outlives a test."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.2)  # the group outlives its leader until the workers have exited
