"""``ctpreg serve`` as a fleet would use it: a real uvicorn server (two workers) in a subprocess on 127.0.0.1, in
front of PostgreSQL and S3 (moto over HTTP), driven by the CLI and the Client through ``CTPREG_URL``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import urllib3
from sqlalchemy import create_engine, text

from ctpreg.cli.main import main
from ctpreg.registry import Client, Settings, Target
from ctpreg.registry.errors import Forbidden, IntegrityError, NoCompatiblePrompt, Unauthorized
from ctpreg.registry.matcher import MEASURED
from ctpreg.registry.remote import RemoteRegistry
from ctpreg.registry.resolver import resolve
from ctpreg.registry.service import Registry
from ctpreg.registry.tokens import ADMIN, PUBLISH, READ
from helpers import CountingValidator, artifact_bytes, fingerprint, write_artifact_file
from served import Served, serving

pytestmark = pytest.mark.postgres
CONTRACT = Path(__file__).with_name("openapi.json")


@contextmanager
def fresh_backend(pg_database: str, moto_endpoint: str) -> Iterator[dict[str, str]]:
    """A registry's configuration on a fresh PostgreSQL schema and S3 bucket, dropped afterwards."""
    schema = f"s_{uuid.uuid4().hex[:12]}"
    engine = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    bucket = f"ctpreg-http-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    try:
        yield {"CTPREG_DB_URL": f"{pg_database}?options=-csearch_path%3D{schema}",
               "CTPREG_STORE_URL": f"s3://{bucket}/registry", "CTPREG_S3_ENDPOINT_URL": moto_endpoint,
               "CTPREG_PROGRESS": "0"}
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def backend(pg_database: str, moto_endpoint: str) -> Iterator[dict[str, str]]:
    """The registry of this module's server."""
    with fresh_backend(pg_database, moto_endpoint) as env:
        yield env


@pytest.fixture(scope="module")
def direct(backend: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Registry:
    home = tmp_path_factory.mktemp("direct")
    assert main_with({**backend, "CTPREG_HOME": str(home)}, "db", "upgrade") == 0
    return Registry.from_settings(Settings.from_env({**backend, "CTPREG_HOME": str(home)}))


@pytest.fixture(scope="module")
def tokens(direct: Registry) -> dict[str, str]:
    """One active token per scope, plus an expired and a revoked one."""
    made = {scope: direct.create_token(scope=scope, name=f"test-{scope}")[1] for scope in (READ, PUBLISH, ADMIN)}
    made["expired"] = direct.create_token(scope=ADMIN, name="old", expires_at=datetime.now(UTC) - timedelta(1))[1]
    revoked, made["revoked"] = direct.create_token(scope=ADMIN, name="gone")
    direct.revoke_token(revoked.public_id)
    return made


@pytest.fixture(scope="module")
def server(backend: dict[str, str], direct: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("server")
    with serving({**backend, "CTPREG_HOME": str(home)}, home / "serve.log", "--workers", "2") as served:
        yield served


def main_with(env: dict[str, str], *args: str) -> int:
    """The CLI in this process with exactly ``env`` as its CTPREG_* configuration."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CTPREG_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        return main(list(args))
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def run_json(env: dict[str, str], capsys: pytest.CaptureFixture, *args: str):
    code = main_with(env, *args, "--json")
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def over_http(server: Served, token: str, home: Path) -> dict[str, str]:
    return {"CTPREG_URL": server.url, "CTPREG_TOKEN": token, "CTPREG_HOME": str(home), "CTPREG_PROGRESS": "0"}


def test_the_walkthrough_over_http_matches_direct_access(server, backend, tokens, tmp_path, capsys) -> None:
    admin, reader = over_http(server, tokens[ADMIN], tmp_path / "a"), over_http(server, tokens[READ], tmp_path / "r")
    direct_env = {**backend, "CTPREG_HOME": str(tmp_path / "d")}
    path = write_artifact_file(tmp_path / "p.safetensors", seed=11, model="llama-7b")
    first = run_json(admin, capsys, "publish", str(path))
    again = run_json(admin, capsys, "publish", str(path))
    assert first["created"] is True and again["created"] is False and first["version"] == again["version"]
    assert run_json(admin, capsys, "show", f"{first['name']}:1")["created_by"].startswith("test-admin (token ")
    run_json(admin, capsys, "publish", str(write_artifact_file(tmp_path / "q.safetensors", seed=12, model="llama-7b",
                                                                compression="gptq-w4-g128")))
    for command in (["list", "--model", "llama-7b"], ["resolve", "--model", "llama-7b", "--bits", "3"],
                    ["show", f"{first['name']}:1"], ["models", "list"]):
        assert run_json(reader, capsys, *command) == run_json(direct_env, capsys, *command), command
    served = run_json(reader, capsys, "resolve", "--model", "llama-7b", "--bits", "3")[0]
    assert served["compression"] == "gptq-w3-g128" and served["tier"] == 2
    out = tmp_path / "fetched.safetensors"
    assert main_with(reader, "fetch", served["ref"], "-o", str(out)) == 0
    assert out.read_bytes() == path.read_bytes()
    assert main_with(admin, "alias", "set", served["ref"], "prod") == 0
    assert run_json(reader, capsys, "show", f"{first['name']}@prod")["sha256"] == first["sha256"]
    assert main_with(admin, "deprecate", served["ref"]) == 0
    after = run_json(reader, capsys, "resolve", "--model", "llama-7b", "--bits", "3")
    assert after == run_json(direct_env, capsys, "resolve", "--model", "llama-7b", "--bits", "3")
    assert served["ref"] not in [c["ref"] for c in after]
    assert main_with(reader, "resolve", "--model", "no-such-model", "--bits", "3") == NoCompatiblePrompt.exit_code
    capsys.readouterr()
    minted = run_json(admin, capsys, "tokens", "create", "--scope", "read", "--name", "minted-over-http")
    assert run_json({**reader, "CTPREG_TOKEN": minted["token"]}, capsys, "list", "--model", "llama-7b")
    assert main_with(reader, "tokens", "list") == Forbidden.exit_code
    assert run_json(admin, capsys, "gc", "--dry-run")["objects"] == []
    capsys.readouterr()


def test_the_client_over_http_resolves_validates_and_then_works_offline(server, tokens, tmp_path) -> None:
    env = over_http(server, tokens[PUBLISH], tmp_path)
    client = Client(Settings.from_env(env))
    own_space = fingerprint("mistral-x")  # no prompt of the other tests shares it
    client.registry.publish_bytes(artifact_bytes(21, model="mistral-x", fp=own_space, compression="gptq-w2-g128"))
    client.registry.publish_bytes(artifact_bytes(22, model="mistral-x", fp=own_space, compression="sparsegpt-s50"))
    validator = CountingValidator({"gptq-w2-g128": 0.0, "sparsegpt-s50": 0.25})
    target = Target(model="mistral-x", method="gptq", bits=4, group_size=128)
    first = resolve(client.registry, target, validator=validator, top_k=2)
    assert first.served.prompt.compression == "sparsegpt-s50" and first.served.tier == MEASURED
    again = resolve(client.registry, target, validator=validator)
    assert len(validator.calls) == 2, "the evidence recorded over HTTP must be reused"
    assert again.served.prompt.sha256 == first.served.prompt.sha256
    prompt = client.resolve("mistral-x", method="gptq", bits=3)
    offline = Client(Settings.from_env({**env, "CTPREG_OFFLINE": "1"})).resolve("mistral-x", method="gptq", bits=3)
    assert offline.record == prompt.record and offline.data == prompt.data


def _operations(contract: dict) -> list[tuple[str, str, bool]]:
    """(method, path, needs a token) of every operation in the schema."""
    return [(method.upper(), path, "security" in op) for path, ops in contract["paths"].items()
            for method, op in ops.items()]


SCOPE_OF = {"read": READ, "publish": PUBLISH, "admin": ADMIN}


def test_every_endpoint_refuses_missing_bad_expired_revoked_and_underscoped_tokens(server, tokens) -> None:
    pool = urllib3.PoolManager(retries=False)
    contract = json.loads(pool.request("GET", f"{server.url}/openapi.json").data)
    unknown = "ctp_0123456789ab_" + "A" * 43
    checked = 0
    for method, path, secured in _operations(contract):
        url = server.url + path.replace("{sha256}", "0" * 64).replace("{token_id}", "0" * 12)
        if not secured:
            assert path in ("/health", "/ready", "/openapi.json"), path
            continue
        tag = contract["paths"][path][method.lower()]["tags"][0]
        body = b"{" if method in ("POST", "PUT") else None  # malformed: the token is refused before it is read
        for header, status in ((None, 401), ("Basic abc", 401), ("Bearer nonsense", 401), (f"Bearer {unknown}", 401),
                               (f"Bearer {tokens['expired']}", 401), (f"Bearer {tokens['revoked']}", 401)):
            answer = pool.request(method, url, body=body, headers={"Authorization": header} if header else {})
            assert answer.status == status, (method, path, header, answer.data)
            assert json.loads(answer.data)["error"]["type"] == "Unauthorized"
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        needed = SCOPE_OF[tag]
        for weaker in (READ, PUBLISH)[: (READ, PUBLISH, ADMIN).index(needed)]:
            answer = pool.request(method, url, headers={"Authorization": f"Bearer {tokens[weaker]}"})
            assert answer.status == 403, (method, path, weaker, answer.data)
        checked += 1
    assert checked >= 15
    log = server.log()
    assert all(tokens[kind] not in log for kind in tokens), "a token reached the access log"
    assert '"status": 401' in log and '"status": 403' in log


def test_a_tampered_object_is_never_served_as_valid(server, backend, direct, tokens, tmp_path, capsys) -> None:
    published = direct.publish_bytes(artifact_bytes(31, model="tamper-m")).prompt
    bucket, prefix = backend["CTPREG_STORE_URL"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=backend["CTPREG_S3_ENDPOINT_URL"])
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{published.object_key}", Body=artifact_bytes(32, model="tamper-m"))
    pool = urllib3.PoolManager(retries=False)
    answer = pool.request("GET", f"{server.url}/v1/objects/{published.sha256}",
                          headers={"Authorization": f"Bearer {tokens[READ]}"})
    assert answer.status == 500 and json.loads(answer.data)["error"]["type"] == "IntegrityError"
    code = main_with(over_http(server, tokens[READ], tmp_path), "fetch", published.ref, "-o", str(tmp_path / "x"))
    assert code == IntegrityError.exit_code and not (tmp_path / "x").exists()
    capsys.readouterr()


def test_the_client_checks_bytes_itself(tokens, server) -> None:
    """Whatever sits between (a cache, a proxy), bytes that do not hash to the record are refused client-side."""
    remote = RemoteRegistry(server.url, tokens[READ])
    record = remote.get(remote.list_prompts(limit=1)[0].ref)
    forged = type(record)(**{**record.__dict__, "sha256": "f" * 64})
    remote_get = remote._request  # serve the real bytes for the forged record

    def request(method, path, **kwargs):
        return remote_get(method, path.replace("f" * 64, record.sha256), **kwargs)

    remote._request = request
    with pytest.raises(IntegrityError):
        remote.fetch_record(forged)


def test_objects_carry_the_sha256_as_etag_and_answer_304(server, direct, tokens) -> None:
    record = direct.publish_bytes(artifact_bytes(41, model="etag-m")).prompt
    pool = urllib3.PoolManager(retries=False)
    auth = {"Authorization": f"Bearer {tokens[READ]}"}
    full = pool.request("GET", f"{server.url}/v1/objects/{record.sha256}", headers=auth)
    assert full.status == 200 and full.headers["ETag"] == f'"{record.sha256}"' and full.data == artifact_bytes(
        41, model="etag-m")
    again = pool.request("GET", f"{server.url}/v1/objects/{record.sha256}",
                         headers={**auth, "If-None-Match": f'"{record.sha256}"'})
    assert again.status == 304 and again.data == b""
    missing = pool.request("GET", f"{server.url}/v1/objects/{'e' * 64}", headers=auth)
    assert missing.status == 404


def test_bodies_over_the_limit_are_refused_with_413(server, tokens) -> None:
    pool = urllib3.PoolManager(retries=False)
    answer = pool.request("POST", f"{server.url}/v1/prompts", body=b"\0" * ((16 << 20) + 1),
                          headers={"Authorization": f"Bearer {tokens[PUBLISH]}",
                                   "Content-Type": "application/octet-stream"})
    assert answer.status == 413
    streamed = pool.request("POST", f"{server.url}/v1/prompts", body=(b"\0" * (1 << 20) for _ in range(17)),
                            chunked=True, headers={"Authorization": f"Bearer {tokens[PUBLISH]}",
                                                   "Content-Type": "application/octet-stream"})
    assert streamed.status == 413, "a body without Content-Length is counted as it arrives"
    chunked_json = pool.request("POST", f"{server.url}/v1/gc", body=(b" " * (1 << 20) for _ in range(17)),
                                chunked=True, headers={"Authorization": f"Bearer {tokens[ADMIN]}",
                                                       "Content-Type": "application/json"})
    assert chunked_json.status == 413, "a JSON route must not turn the cut-off body into a 400"


def test_eight_concurrent_http_publishers_get_gap_free_versions(server, tokens) -> None:
    name = f"race/{uuid.uuid4().hex[:8]}"

    def publish(worker: int) -> list[int]:
        remote = RemoteRegistry(server.url, tokens[PUBLISH])
        return [remote.publish_bytes(artifact_bytes(1000 + 10 * worker + i, model="race-m"), name=name).prompt.version
                for i in range(5)]

    with ThreadPoolExecutor(8) as pool:
        versions = [v for batch in pool.map(publish, range(8)) for v in batch]
    assert sorted(versions) == list(range(1, 41))


def test_the_schema_served_is_the_checked_in_contract(server) -> None:
    """A change to the API must change tests/openapi.json with it (regenerate: python tests/test_http_service.py)."""
    served = json.loads(urllib3.request("GET", f"{server.url}/openapi.json").data)
    assert served == json.loads(CONTRACT.read_text())


def test_ready_reports_each_dependency_and_sigterm_lets_requests_in_flight_finish(backend, direct, tokens,
                                                                                 tmp_path) -> None:
    env = {**backend, "CTPREG_HOME": str(tmp_path)}
    with serving(env, tmp_path / "log") as served:
        ready = json.loads(urllib3.request("GET", f"{served.url}/ready").data)
        assert ready == {"status": "ok", "checks": {"db": "ok", "store": "ok"}}
        body = artifact_bytes(51, model="graceful-m")
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as conn:  # a publish whose body is still arriving
            conn.sendall(f"POST /v1/prompts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens[PUBLISH]}\r\n"
                         f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            conn.sendall(body[:100])
            time.sleep(0.5)
            served.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            conn.sendall(body[100:])
            answer = conn.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 201"), answer
        assert served.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    broken = {**env, "CTPREG_S3_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens on the discard port
    assert main_with(broken, "serve", "--port", "1") != 0


def test_schemathesis_finds_no_server_error_and_no_schema_violation(pg_database, moto_endpoint, tmp_path) -> None:
    """A bounded fuzz run over every operation with an admin token, on a registry of its own (it revokes tokens,
    deprecates and collects what it finds). Every check runs but one: schema-valid requests the server refuses
    (ST202) are expected, since a JSON schema cannot say that gptq takes bits 2/3/4/8 and the bnb methods none, or
    that bytes are a valid safetensors prompt; the server answers those 400 with the reason."""
    with fresh_backend(pg_database, moto_endpoint) as env:
        env = {**env, "CTPREG_HOME": str(tmp_path)}
        assert main_with(env, "db", "upgrade") == 0
        registry = Registry.from_settings(Settings.from_env(env))
        registry.publish_bytes(artifact_bytes(81, model="fuzz-m"))
        _, admin = registry.create_token(scope=ADMIN, name="fuzzer")
        with serving(env, tmp_path / "serve.log") as served:
            command = [str(Path(sys.executable).with_name("st")), "run", f"{served.url}/openapi.json",
                       "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "25",
                       "--workers", "1", "--seed", "20261202", "--suppress-health-check", "all",
                       "--request-timeout", "20", "-H", f"Authorization: Bearer {admin}"]
            run = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path)
        registry.db.dispose()
    summary = run.stdout[run.stdout.rfind("SUMMARY"):]
    print(summary)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "Tested: 21" in summary, summary


def test_a_fleet_resolve_over_http_loads_no_db_driver_no_s3_client_and_no_torch(server, direct, tokens,
                                                                                 tmp_path) -> None:
    direct.publish_bytes(artifact_bytes(61, model="fleet-m"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTPREG_", "AWS_"))}
    env.update(over_http(server, tokens[READ], tmp_path))
    resolve = (
        "import json, sys\n"
        "from ctpreg.cli.main import main\n"
        "code = main(['resolve', '--model', 'fleet-m', '--bits', '3', '--json'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'psycopg', 'boto3', 'torch'})\n"
        "print(json.dumps({'code': code, 'loaded': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", resolve], env=env, check=True, capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"code": 0, "loaded": []}


def test_listing_pages_and_lookups_answer_as_direct_access_does(server, direct, tokens, monkeypatch) -> None:
    import ctpreg.registry.remote as remote_module

    for seed in range(5):
        direct.publish_bytes(artifact_bytes(70 + seed, model="paged-m"), name="paged/p")
    monkeypatch.setattr(remote_module, "PAGE", 2)  # five versions in three pages
    remote = RemoteRegistry(server.url, tokens[READ])
    assert remote.list_prompts(model="paged-m") == direct.list_prompts(model="paged-m")
    assert [r.version for r in remote.list_prompts(model="paged-m", limit=3)] == [1, 2, 3]
    over_a_page = urllib3.request("GET", f"{server.url}/v1/prompts?limit=1001",
                                  headers={"Authorization": f"Bearer {tokens[READ]}"})
    assert over_a_page.status == 422, "one answer holds at most a page"
    assert remote.get_model("org/no-such") is None and direct.get_model("org/no-such") is None
    assert remote.evidence("org/no-such") == direct.evidence("org/no-such") == []


def test_token_expiries_keep_their_instant_whatever_the_offset(server, tokens) -> None:
    pool = urllib3.PoolManager(retries=False)
    answer = pool.request("POST", f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {tokens[ADMIN]}"},
                          json={"scope": "read", "name": "offset", "expires_at": "2030-01-01T00:00:00-08:00"})
    assert answer.status == 201, answer.data
    created = json.loads(answer.data)["record"]["id"]
    listed = {t.public_id: t for t in RemoteRegistry(server.url, tokens[ADMIN]).list_tokens()}
    assert listed[created].expires_at == datetime(2030, 1, 1, 8, tzinfo=UTC)


def test_an_unreachable_db_is_503_without_naming_it(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from ctpreg.integrations.server import create_app

    hidden = "postgresql+psycopg://nobody@127.0.0.1:9/secret_db_name"  # nothing listens on the discard port
    registry = Registry.from_settings(Settings.from_env({"CTPREG_HOME": str(tmp_path), "CTPREG_DB_URL": hidden}))
    answer = TestClient(create_app(registry)).get("/v1/prompts", headers={"Authorization": "Bearer " + "ctp_"
                                                                          + "0" * 12 + "_" + "A" * 43})
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "DatabaseError"
    assert "secret_db_name" not in answer.text and "127.0.0.1" not in answer.text


def test_unauthorized_is_raised_as_itself_by_the_client(server) -> None:
    with pytest.raises(Unauthorized):
        RemoteRegistry(server.url, None).list_prompts()


if __name__ == "__main__":
    from ctpreg.integrations.server import create_app

    app = create_app(Registry.from_settings(Settings.from_env({"CTPREG_HOME": "/nonexistent"})))
    CONTRACT.write_text(json.dumps(app.openapi(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {CONTRACT}")


def test_a_prompt_and_its_optimizer_state_publish_and_fetch_over_http(server, tokens, direct, tmp_path) -> None:
    import numpy as np

    from ctpreg.registry.artifacts import serialize_artifact
    from ctpreg.registry.digest import sha256_hex
    from ctpreg.registry.errors import Forbidden
    from ctpreg.registry.lineage import state_beside
    from ctpreg.registry.optimizer_state import serialize_state
    from ctpreg.registry.remote import RemoteRegistry
    from helpers import metadata

    state = serialize_state({k: np.full((4, 8), 0.5, np.float32) for k in ("prompt", "exp_avg", "exp_avg_sq")},
                            {"step": 8})
    meta = metadata(dataset="http-states")
    training = {**meta.training, "steps_total": 10, "state": {"sha256": sha256_hex(state), "size_bytes": len(state)}}
    artifact = tmp_path / "p.safetensors"
    artifact.write_bytes(serialize_artifact(np.ones((4, 8)), type(meta)(**{**meta.__dict__, "training": training})))
    state_beside(artifact).write_bytes(state)
    with pytest.raises(Forbidden):
        RemoteRegistry(server.url, tokens["read"]).publish_state(state)
    published = RemoteRegistry(server.url, tokens["publish"]).publish(artifact).prompt
    reader = RemoteRegistry(server.url, tokens["read"])
    assert reader.get(published.ref).lineage.state_sha256 == sha256_hex(state)
    assert reader.fetch_state(sha256_hex(state)) == state == direct.fetch_state(sha256_hex(state))
