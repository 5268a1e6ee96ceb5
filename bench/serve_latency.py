"""The registry over HTTP under load: ``ctpreg serve`` vs MLflow's tracking server, same database, same data, one run.

For each backend (SQLite, PostgreSQL) the database gets 100,000 prompt versions by bulk insert
(``registry_latency.plan``), 50 of them with real artifacts in a local object folder, and ``ANALYZE``. ``ctpreg
serve --workers 2`` then answers, with a read token and bounded request counts at 1, 16 and 64 concurrent clients
(aiohttp, keep-alive, every connection opened before the clock starts, on this same machine):

- ``resolve``: ``GET /v1/resolve`` for a random model and target (400 distinct questions: 50 models x 8 targets),
  the ranked top candidates and the one to serve;
- ``fetch``: ``GET /v1/objects/{sha256}`` of a random published artifact, verified server-side before it is sent;
- ``show NAME@latest``: ``GET /v1/prompt?ref=NAME@latest``, one version by alias;
- ``GET /health``: no token, no DB: the floor of the HTTP stack and the load generator on these cores.

Each operation runs twice: *computed* (``--keep-mb 0``: every answer computed from the DB and the store) and *kept*
(the default: each worker keeps answers until the DB changes, ``integrations/answers.py``; three unclocked passes ask
every question first). The ``kept %`` column counts the answers that were replayed.

MLflow's tracking server (``mlflow server``, its default app and ``--workers 2``) gets the same versions in a database
of the same kind (``registry_latency.populate_mlflow``) and answers the question it can answer alike: one version by
alias, ``GET /api/2.0/mlflow/registered-models/alias``, compared with ``show NAME@latest``. MLflow has no ranked
resolve; its tag search is compared with resolve in-process by ``registry_latency.py``.

The load generator shares the 2 cores with the servers, so every figure includes its cost.

    python bench/serve_latency.py --prompts 100000 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402
from registry_latency import (  # noqa: E402
    DEFAULT_PG, TARGETS, analyze, database, mlflow_name, percentiles, plan, populate_ctpreg, populate_mlflow,
)

from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.db.engine import Database  # noqa: E402
from ctpreg.registry.service import Registry  # noqa: E402
from ctpreg.registry.stores.local import LocalStore  # noqa: E402
from ctpreg.registry.tokens import READ  # noqa: E402

PUBLISHED = 50
KEPT_HEADER = "x-ctpreg-answer"
WARM_PASSES = 3  # each worker keeps its own answers; each pass opens new connections, spread over the workers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(command: list[str], env: dict[str, str], ready_path: str, timeout: float = 120.0) -> Iterator[str]:
    """Run a server command on a free loopback port until the block ends; yields its base URL."""
    import urllib3

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)  # noqa: SIM115 (kept on error)
    process = subprocess.Popen([*command, "--port", str(port)], env={**os.environ, **env}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{command[0]} exited {process.returncode} before answering")
            try:
                if urllib3.request("GET", url + ready_path, retries=False, timeout=2.0).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{command[0]} did not answer {ready_path} within {timeout:.0f}s")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        text = Path(log.name).read_text(errors="replace")
        if "Traceback" in text:
            print(f"{command[0]} logged errors (whole log: {log.name}):\n{text[-4000:]}", file=sys.stderr)
        else:
            os.unlink(log.name)


@dataclass
class Load:
    seconds: float
    latencies: list[float]
    errors: Counter[str]
    kept: int


async def load(url: str, paths: list[str], clients: int, headers: dict[str, str]) -> Load:
    """GET every path once, ``clients`` at a time over keep-alive connections opened before the clock starts."""
    import aiohttp

    queue = iter(paths)
    result = Load(0.0, [], Counter(), 0)

    async def client(session: aiohttp.ClientSession) -> None:
        for path in queue:
            started = time.perf_counter()
            try:
                async with session.get(url + path, headers=headers) as response:
                    body = await response.read()
                    if response.status != 200:
                        result.errors[f"HTTP {response.status}: {body[:200].decode(errors='replace')}"] += 1
                    result.kept += response.headers.get(KEPT_HEADER) == "kept"
            except aiohttp.ClientError as exc:
                result.errors[f"{type(exc).__name__}: {exc}"] += 1
            result.latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def connect() -> None:
            async with session.get(url + "/health") as first:
                await first.read()

        await asyncio.gather(*(connect() for _ in range(clients)))  # every connection opened outside the clock
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        result.seconds = time.perf_counter() - started
        return result


def measure(label: str, url: str, paths: list[str], levels: list[int], headers: dict[str, str],
            failures: list[str]) -> list[list[object]]:
    rows = []
    for clients in levels:
        run = asyncio.run(load(url, paths, clients, headers))
        p50, _, p99 = percentiles(run.latencies)
        count = sum(run.errors.values())
        rows.append([label, clients, len(paths), f"{len(paths) / run.seconds:,.0f}", f"{p50:.2f}", f"{p99:.2f}",
                     f"{100 * run.kept / len(paths):.0f}", count])
        failures += [f"{label} at {clients} clients: {n} x {kind}" for kind, n in run.errors.items()]
    return rows


def publish_artifacts(registry: Registry, models: list[dict], rng: random.Random) -> list[str]:
    """Real artifacts for ``fetch``: a 7B model's 100-token prompt, 100 x 4096 float32 (1.6 MB)."""
    shas = []
    for i in range(PUBLISHED):
        model = models[i % len(models)]
        meta = PromptMetadata(model=model["name"], model_fingerprint=model["fingerprint"],
                              compression=parse_compression("gptq-w3-g128"), dataset="served",
                              num_virtual_tokens=100, hidden_size=4096)
        embeddings = np.random.default_rng(i).standard_normal((100, 4096), dtype=np.float32)
        shas.append(registry.publish_bytes(serialize_artifact(embeddings, meta)).prompt.sha256)
    rng.shuffle(shas)
    return shas


def resolve_paths(models: list[dict], count: int, rng: random.Random) -> list[str]:
    paths = []
    for _ in range(count):
        target = {"model": rng.choice(models)["name"], **rng.choice(TARGETS)}
        paths.append("/v1/resolve?" + urlencode(target))
    return paths


def run_backend(backend: str, args: argparse.Namespace, failures: list[str]) -> list[list[object]]:
    rng = random.Random(0)
    models, rows = plan(args.prompts, rng)
    levels = [int(c) for c in args.clients.split(",")]
    table: list[list[object]] = []
    names = sorted({r["name"] for r in rows})
    with database(backend, "ctpreg_serve", args.pg_url) as url, tempfile.TemporaryDirectory() as folder:
        populate_ctpreg(url, models, rows)
        registry = Registry(Database(url), LocalStore(Path(folder) / "objects"), user="bench")
        shas = publish_artifacts(registry, models, rng)
        analyze(url)
        _, token = registry.create_token(scope=READ, name="bench")
        registry.db.dispose()
        env = {"CTPREG_DB_URL": url, "CTPREG_STORE_URL": (Path(folder) / "objects").as_uri(), "CTPREG_HOME": folder}
        headers = {"Authorization": f"Bearer {token}"}
        operations = [
            ("resolve", resolve_paths(models, args.requests, rng)),
            ("fetch (1.6 MB object)", [f"/v1/objects/{rng.choice(shas)}" for _ in range(args.requests)]),
            ("show NAME@latest", ["/v1/prompt?" + urlencode({"ref": f"{rng.choice(names)}@latest"})
                                  for _ in range(args.requests)]),
        ]
        for keep_mb, kind in ((0, "computed"), (64, "kept")):
            command = [sys.executable, "-m", "ctpreg.cli.main", "serve", "--workers", str(args.workers),
                       "--no-access-log", "--keep-mb", str(keep_mb)]
            with server(command, env, "/ready") as base:
                if keep_mb == 0:
                    floor = measure("GET /health (HTTP floor)", base, ["/health"] * args.requests, levels, {}, failures)
                    table += [[backend, *row] for row in floor]
                for label, paths in operations:
                    for _ in range(WARM_PASSES if keep_mb else 0):  # unclocked; fresh connections reach each worker
                        asyncio.run(load(base, sorted(set(paths)), max(levels), headers))
                    measured = measure(f"ctpreg {label}, {kind}", base, paths, levels, headers, failures)
                    table += [[backend, *row] for row in measured]
    if args.no_mlflow:
        return table
    if shutil.which("mlflow") is None and not Path(sys.executable).with_name("mlflow").exists():
        failures.append("MLflow's server is not installed (pip install mlflow): its rows are missing")
        return table
    with database(backend, "mlflow_serve", args.pg_url) as url:
        populate_mlflow(url, rows)
        analyze(url)
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", url,
                   "--host", "127.0.0.1", "--workers", str(args.workers)]
        with server(command, {}, "/health") as base:
            paths = ["/api/2.0/mlflow/registered-models/alias?" + urlencode(
                {"name": mlflow_name(rng.choice(names)), "alias": "latest"}) for _ in range(args.requests)]
            table += [[backend, *row] for row in measure("MLflow get_model_version_by_alias (REST)", base, paths,
                                                         levels, {}, failures)]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000, help="requests per operation and concurrency level")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (both servers)")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("CTPREG_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    print(describe())
    failures: list[str] = []
    table: list[list[object]] = []
    for backend in args.backends.split(","):
        table += run_backend(backend, args, failures)
    print(f"\n{args.prompts:,} prompt versions; {args.requests} requests per row; {args.workers} server workers; "
          "client and servers on the same cores\n")
    print(markdown_table(["database", "operation", "clients", "requests", "req/s", "p50 ms", "p99 ms", "kept %",
                          "errors"],
                         table))
    if failures:
        print("\nFAILED checks:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
