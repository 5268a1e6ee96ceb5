"""Fixtures: every registry test runs against SQLite and the real PostgreSQL server; S3 through moto.

PostgreSQL: one throwaway database per test run (dropped at the end), one fresh schema per test. Set
``CTPREG_TEST_PG_URL`` to point elsewhere (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ctpreg.registry.db.engine import Database
from ctpreg.registry.db.migrate import upgrade
from ctpreg.registry.service import Registry
from ctpreg.registry.stores.local import LocalStore

os.environ.setdefault("CTPREG_PROGRESS", "0")
# Fake credentials for moto; set before any test so monkeypatching tests restore them rather than delete them.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"
}.items():
    os.environ.setdefault(_key, _value)
PG_ADMIN_URL = os.environ.get("CTPREG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _torch_threads_unchanged() -> Iterator[None]:
    """A test that leaves torch on fewer threads slows every later test; fail the one that does it."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        now = torch.get_num_threads()
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch on {now} thread(s), it found {before}")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this run; its URL."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ctpreg_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the suite must say loudly that PostgreSQL was not tested
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for the postgres tests: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A fresh, empty schema inside the run's database, as a URL whose search_path points at it."""
    schema = f"s_{uuid.uuid4().hex[:12]}"
    engine = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{pg_database}?options=-csearch_path%3D{schema}"
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A migrated database URL on each backend."""
    db = Database(empty_db_url)
    upgrade(db.engine)
    db.dispose()
    return empty_db_url


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def registry(db_url: str, store_dir: Path) -> Iterator[Registry]:
    reg = Registry(Database(db_url), LocalStore(store_dir), user="test")
    yield reg
    reg.db.dispose()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A clean configuration for CLI tests: everything under a temporary CTPREG_HOME."""
    for key in list(os.environ):
        if key.startswith("CTPREG_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("CTPREG_HOME", str(home))
    return {"CTPREG_HOME": str(home)}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto as a real HTTP server on a loopback port, so boto3 speaks the S3 wire protocol."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    import boto3

    name = f"ctpreg-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def real_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CTPREG_HOME for the packaged-SmolLM2 tests: compressions cached by one test are reused by the next."""
    return tmp_path_factory.mktemp("real-home")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a local model folder (the path real users take with --model-path)."""
    from tiny import tiny_llama

    folder = tmp_path_factory.mktemp("tiny-model")
    loaded = tiny_llama()
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
