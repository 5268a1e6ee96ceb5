"""A slow DB never stalls a server worker's event loop: while one request waits on the DB (a change marker blocked
on a lock, a slow token lookup), ``/health`` still answers at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import urllib3
import uvicorn

import ctpreg.integrations.server as server_module
from ctpreg.integrations.server import create_app
from ctpreg.registry import Settings
from ctpreg.registry.service import Registry
from ctpreg.registry.tokens import READ
from served import free_port

STALL_S = 2.0


class LockedMarker:
    """A change marker whose read blocks its thread, as ``sqlite3`` does while another connection holds a lock."""

    async def current(self) -> str | None:
        time.sleep(STALL_S)
        return "unchanged"

    async def close(self) -> None:
        return None


@contextmanager
def running(registry: Registry) -> Iterator[str]:
    """The app under a real uvicorn, in a thread of this process."""
    config = uvicorn.Config(create_app(registry), host="127.0.0.1", port=free_port(), log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry.from_settings(Settings.from_env({"CTPREG_HOME": str(tmp_path)}))
    yield registry
    registry.db.dispose()


def health_while_a_request_waits(url: str, token: str) -> float:
    """Seconds ``/health`` took while a ``/v1/`` request was stuck on the DB."""
    pool = urllib3.PoolManager(retries=False, timeout=10.0)
    with ThreadPoolExecutor(1) as background:
        stuck = background.submit(pool.request, "GET", f"{url}/v1/models",
                                  headers={"Authorization": f"Bearer {token}"})
        time.sleep(0.3)  # the request is inside the server now
        started = time.monotonic()
        assert pool.request("GET", f"{url}/health").status == 200
        took = time.monotonic() - started
        assert stuck.result().status == 200
    return took


def test_a_change_marker_blocked_on_a_lock_does_not_stall_the_loop(registry, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "change_marker", lambda _url: LockedMarker())
    token = registry.create_token(scope=READ, name="reader")[1]
    with running(registry) as url:
        assert health_while_a_request_waits(url, token) < STALL_S / 2


def test_a_slow_token_lookup_does_not_stall_the_loop(registry, monkeypatch) -> None:
    token = registry.create_token(scope=READ, name="reader")[1]
    real = registry.authenticate

    def slow(*args, **kwargs):
        time.sleep(STALL_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "authenticate", slow)
    with running(registry) as url:
        assert health_while_a_request_waits(url, token) < STALL_S / 2
