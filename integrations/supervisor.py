"""``ctpreg serve``'s processes: a gunicorn master supervising uvicorn workers, each serving ``server.create_app``.

gunicorn restarts a worker that dies or stops answering its heartbeat, and on SIGTERM lets requests in flight finish
(``graceful_seconds``) before it exits. ``RegistryWorker`` is the ``uvicorn-worker`` package's worker plus two things
gunicorn's own workers do and that one does not: it leaves when its master is gone (a master killed with SIGKILL
cannot stop its workers, which would otherwise keep serving, and holding the port, for ever), checked every second;
and it bounds request heads (``http_limits``). Options reach the workers as this object, never through the
environment: each worker builds its app in ``RegistryServer.load`` after the fork.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from ctpreg.registry.service import Registry
from ctpreg.registry.settings import Settings

from .http_limits import BoundedHttp
from .request_limits import RequestLimits
from .server import configure_access_log, create_app

PARENT_CHECK_S = 1


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8200
    workers: int = 1
    max_body_bytes: int = 16 << 20
    keep_bytes: int = 64 << 20
    access_log: bool = True
    graceful_seconds: int = 30
    docs: bool = False
    limits: RequestLimits = RequestLimits()
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class RegistryServer(BaseApplication):
    """gunicorn, configured from ``ServeOptions`` alone (no command line, no config file, no environment)."""

    def __init__(self, settings: Settings, options: ServeOptions) -> None:
        self.settings, self.options = settings, options
        super().__init__()

    def load_config(self) -> None:
        options = self.options
        config = {
            "bind": [options.bind], "workers": options.workers, "worker_class": RegistryWorker,
            "graceful_timeout": options.graceful_seconds, "keepalive": options.limits.keep_alive_s,
            "loglevel": "warning", "accesslog": None, "errorlog": "-", "proc_name": "ctpreg-serve",
            "certfile": str(options.ssl_certfile) if options.ssl_certfile else None,
            "keyfile": str(options.ssl_keyfile) if options.ssl_keyfile else None,
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self) -> FastAPI:
        configure_access_log(self.options.access_log)
        return create_app(Registry.from_settings(self.settings), max_body_bytes=self.options.max_body_bytes,
                          keep_bytes=self.options.keep_bytes, docs=self.options.docs)


class RegistryWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "auto", "http": "httptools"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        options: ServeOptions = self.app.options
        self.config.http = partial(BoundedHttp, limits=options.limits)
        self.config.timeout_notify = PARENT_CHECK_S
        self.config.timeout_graceful_shutdown = options.graceful_seconds

    async def callback_notify(self) -> None:
        """The heartbeat gunicorn watches, and the check that the master is still there: if not, shut down as on
        SIGTERM (requests in flight finish, the listening socket closes at once)."""
        if os.getppid() != self.ppid:
            self.log.warning("ctpreg serve: the master process is gone; worker %s exits", os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)
        self.notify()
