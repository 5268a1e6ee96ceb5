"""``ctpreg serve`` as processes and sockets: bounds on request heads and idle connections, a client that hangs up
mid-upload, a master killed with SIGKILL, a port already taken, and TLS. A real server on an embedded registry."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from ctpreg.cli.main import main
from ctpreg.registry import Settings
from ctpreg.registry.errors import AddressInUse
from ctpreg.registry.service import Registry
from ctpreg.registry.tokens import PUBLISH
from served import Served, alive, free_port, serving, workers_of

HEAD_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served-home")


@pytest.fixture(scope="module")
def publisher(home: Path) -> str:
    registry = Registry.from_settings(Settings.from_env({"CTPREG_HOME": str(home)}))
    token = registry.create_token(scope=PUBLISH, name="uploader")[1]
    registry.db.dispose()
    return token


@pytest.fixture(scope="module")
def server(home: Path, publisher: str) -> Iterator[Served]:
    with serving({"CTPREG_HOME": str(home)}, home / "serve.log", "--workers", "2", "--head-timeout-seconds",
                 str(HEAD_TIMEOUT_S), "--keep-alive-seconds", "1") as served:
        yield served


def address(served: Served) -> tuple[str, int]:
    host, port = served.url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def answer_of(conn: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    conn.settimeout(timeout)
    started, received = time.monotonic(), b""
    while chunk := conn.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def test_an_unfinished_head_is_cut_off_in_time_while_others_are_served(server) -> None:
    half = socket.create_connection(address(server))
    half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    trickle = socket.create_connection(address(server))
    silent = socket.create_connection(address(server))
    pool = urllib3.PoolManager(retries=False, timeout=2.0)
    started = time.monotonic()
    for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 8:  # a byte every 0.2 s keeps no connection open
        try:
            trickle.send(bytes([byte]))
        except OSError:
            break
        assert pool.request("GET", f"{server.url}/health").status == 200, "others are served meanwhile"
        time.sleep(0.2)
    for conn, answer in ((half, b"HTTP/1.1 408 "), (trickle, b"HTTP/1.1 408 "), (silent, b"")):
        received, _ = answer_of(conn, timeout=5.0)
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 3, "closed within the head timeout"
        assert received.startswith(answer) and (answer or received == b""), received
        conn.close()


def test_heads_over_the_limits_are_431(server) -> None:
    pool = urllib3.PoolManager(retries=False, timeout=5.0)
    assert pool.request("GET", f"{server.url}/health", headers={f"X-{i}": "v" for i in range(50)}).status == 200
    assert pool.request("GET", f"{server.url}/health", headers={f"X-{i}": "v" for i in range(101)}).status == 431
    too_big = pool.request("GET", f"{server.url}/health", headers={"X-Big": "v" * (17 << 10)})
    assert too_big.status == 431
    assert json.loads(too_big.data)["error"]["request_id"] == too_big.headers["X-Request-ID"], "the error shape"
    assert too_big.headers["X-Request-ID"] in server.log()
    with socket.create_connection(address(server)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n")
        received, _ = answer_of(conn, timeout=5.0)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["error"]["type"] == "InvalidInput", received
    with socket.create_connection(address(server)) as conn:  # a head that grows in pieces and never ends
        conn.sendall(b"GET /health HTTP/1.1\r\nX-Big: ")
        try:
            for _ in range(40):
                conn.sendall(b"v" * 1024)
                time.sleep(0.01)
        except OSError:
            pass
        received, _ = answer_of(conn, timeout=5.0)
    assert received.startswith(b"HTTP/1.1 431 "), received


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server) -> None:
    with socket.create_connection(address(server)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received, took = answer_of(conn, timeout=5.0)
    assert received.startswith(b"HTTP/1.1 200 ") and 0.5 < took < 3.5, (received, took)


def test_a_client_that_hangs_up_mid_upload_leaves_one_quiet_line(server, publisher) -> None:
    with socket.create_connection(address(server)) as conn:
        conn.sendall(f"POST /v1/prompts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {publisher}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {1 << 20}\r\n\r\n".encode())
        conn.sendall(b"\0" * (10 << 10))
    deadline = time.monotonic() + 10
    while "client went away" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log()
    assert log.count("client went away") == 1, log
    assert "Traceback" not in log and publisher not in log


def test_workers_leave_when_their_master_is_killed_and_free_the_port(home, publisher) -> None:
    with serving({"CTPREG_HOME": str(home)}, home / "killed.log", "--workers", "2") as served:
        workers = workers_of(served.process.pid)
        assert len(workers) == 2
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "a worker outlived its master"
        with socket.socket() as again:  # the port is free: nothing listens on it any more
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(address(served))
            again.listen()


def test_a_port_in_use_has_its_own_exit_code_and_one_line(cli_env, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == AddressInUse.exit_code == 15
    err = capsys.readouterr().err.strip()
    assert f"127.0.0.1:{port} is already in use" in err and len(err.splitlines()) == 1, err


def test_tls_serves_https(home, tmp_path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(1)).not_valid_after(now + dt.timedelta(1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    with serving({"CTPREG_HOME": str(home)}, tmp_path / "tls.log", "--ssl-certfile", str(cert_path),
                 "--ssl-keyfile", str(key_path), ca_certs=cert_path) as served:
        pool = urllib3.PoolManager(retries=False, timeout=5.0, ca_certs=str(cert_path))
        assert pool.request("GET", f"{served.url}/health").status == 200
        pool.clear()
        with pytest.raises(ssl.SSLError), socket.create_connection(address(served)) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")  # not a known CA


@pytest.mark.parametrize("gunicorn_code", [3, 4])
def test_a_server_that_stops_on_its_own_exits_1_not_gunicorns_code(cli_env, monkeypatch, gunicorn_code) -> None:
    """gunicorn's master exits 3 when a worker cannot boot and 4 when the app cannot load: to ctpreg those codes
    mean "no compatible prompt" and "no prompt helps"."""
    from ctpreg.integrations.supervisor import RegistryServer

    def stops(_self) -> None:
        raise SystemExit(gunicorn_code)

    monkeypatch.setattr(RegistryServer, "run", stops)
    assert main(["serve", "--port", str(free_port())]) == 1
