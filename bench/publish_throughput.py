"""Publishing under concurrency: 1, 4 and 8 writer processes on PostgreSQL + S3 (moto over HTTP).

Each writer publishes distinct prompts to a handful of shared names (so versions contend). Reports prompts/s and
publish latency p50/p99 per level, then asserts zero errors, versions 1..N per name with no duplicates, and every
row's object present with the right sha256. Each level runs ``--repeats`` times (the median and the range), against
two S3 servers, both moto's S3 over HTTP (``machine.moto_s3``): moto's own server, which closes every connection,
and the same application kept alive. Everything (writers, S3 server, PostgreSQL) shares this machine's cores, so the
S3 server's CPU counts against the writers'.

    python bench/publish_throughput.py --writers 1,4,8 --per-writer 200 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import S3_SERVERS, describe, markdown_table, moto_s3  # noqa: E402

from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.db.engine import Database  # noqa: E402
from ctpreg.registry.db.migrate import upgrade  # noqa: E402
from ctpreg.registry.digest import sha256_hex  # noqa: E402
from ctpreg.registry.service import Registry  # noqa: E402
from ctpreg.registry.stores import open_store  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NAMES = 4


def writer(
    db_url: str, store_url: str, endpoint: str, worker: int, count: int, ready: Any, results: Any
) -> None:
    """Publish ``count`` prompts once every writer is ready (the barrier), and report the latencies, the error
    count and when the last publish ended."""
    registry = Registry(Database(db_url), open_store(store_url, s3_endpoint_url=endpoint), user=f"w{worker}")
    meta = PromptMetadata(
        model="llama-7b", model_fingerprint="sha256:" + "cd" * 32, compression=parse_compression("gptq-w3-g128"),
        dataset="wiki", num_virtual_tokens=20, hidden_size=512,
    )
    payloads = [
        serialize_artifact(np.random.default_rng(worker * 100_000 + i).standard_normal((20, 512)), meta)
        for i in range(count)
    ]
    registry.get_model("llama-7b")  # connect before the clock starts
    ready.wait()
    latencies, errors = [], 0
    for i, data in enumerate(payloads):
        started = time.perf_counter()
        try:
            registry.publish_bytes(data, name=f"shared/p{(worker + i) % NAMES}")
        except Exception:  # the bench counts every failure; none is expected
            errors += 1
        latencies.append(time.perf_counter() - started)
    results.put((latencies, errors, time.time()))
    registry.db.dispose()


def run_level(
    db_url: str, store_url: str, endpoint: str, writers: int, per_writer: int
) -> tuple[float, list[float], int]:
    """Elapsed from the moment every writer is ready (imports, payloads and connections are not timed) until the
    last publish ends, with every latency and the error count."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(writers + 1), context.Queue()
    processes = [
        context.Process(target=writer, args=(db_url, store_url, endpoint, w, per_writer, ready, results))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=300)
    started = time.time()
    reports = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    elapsed = max(ended for _, _, ended in reports) - started
    return elapsed, [lat for lats, _, _ in reports for lat in lats], sum(errors for _, errors, _ in reports)


def check(db_url: str, store_url: str, endpoint: str, expected: int) -> list[str]:
    registry = Registry(Database(db_url), open_store(store_url, s3_endpoint_url=endpoint))
    problems = []
    records = registry.list_prompts()
    if len(records) != expected:
        problems.append(f"{len(records)} rows, expected {expected}")
    by_name: dict[str, list[int]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record.version)
        if sha256_hex(registry.store.get_verified(record.object_key, record.sha256)) != record.sha256:
            problems.append(f"{record.ref}: object mismatch")
    for name, versions in by_name.items():
        if sorted(versions) != list(range(1, len(versions) + 1)):
            problems.append(f"{name}: versions are not 1..{len(versions)} without duplicates")
    registry.db.dispose()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="1,4,8")
    parser.add_argument("--per-writer", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level; the table gives their median")
    parser.add_argument("--pg-url", default=os.environ.get("CTPREG_TEST_PG_URL", DEFAULT_PG))
    parser.add_argument("--s3-servers", default=",".join(S3_SERVERS), help=f"of {', '.join(S3_SERVERS)}")
    args = parser.parse_args()
    print(describe())
    rows: list[list[object]] = []
    problems: list[str] = []
    for server in args.s3_servers.split(","):
        if server not in S3_SERVERS:
            parser.error(f"unknown S3 server {server!r}: choose from {', '.join(S3_SERVERS)}")
        print(f"S3 server {server}: {S3_SERVERS[server]}")
        with moto_s3(server) as endpoint:
            measured, failed = measure(args, endpoint)
        rows += [[server, *row] for row in measured]
        problems += [f"{server}: {p}" for p in failed]
    print()
    return report(rows, problems)


def measure(args: argparse.Namespace, endpoint: str) -> tuple[list[list[object]], list[str]]:
    """Every level ``args.repeats`` times, the levels interleaved so that a slow spell of the machine does not fall
    on one level only; each run on a new database and bucket."""
    levels = [int(w) for w in args.writers.split(",")]
    rates: dict[int, list[float]] = {w: [] for w in levels}
    latencies: dict[int, list[float]] = {w: [] for w in levels}
    errors = dict.fromkeys(levels, 0)
    problems: list[str] = []
    for _ in range(args.repeats):
        for writers in levels:
            rate, times, failed, found = run_once(args, endpoint, writers)
            rates[writers].append(rate)
            latencies[writers] += times
            errors[writers] += failed
            problems += [f"{writers} writers: {p}" for p in found]
    rows: list[list[object]] = []
    for writers in levels:
        ordered = sorted(latencies[writers])
        rows.append([writers, writers * args.per_writer, f"{statistics.median(rates[writers]):.0f}",
                     f"{min(rates[writers]):.0f}-{max(rates[writers]):.0f}", f"{ordered[len(ordered) // 2] * 1e3:.1f}",
                     f"{ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3:.1f}", errors[writers]])
        if errors[writers]:
            problems.append(f"{writers} writers: {errors[writers]} publish errors")
    return rows, problems


def run_once(args: argparse.Namespace, endpoint: str, writers: int) -> tuple[float, list[float], int, list[str]]:
    import boto3

    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    name = f"ctpreg_publish_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = args.pg_url.rsplit("/", 1)[0] + f"/{name}"
    bucket = f"publish-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    try:
        upgrade(Database(db_url).engine)
        elapsed, latencies, errors = run_level(db_url, f"s3://{bucket}/p", endpoint, writers, args.per_writer)
        total = writers * args.per_writer
        return total / elapsed, latencies, errors, check(db_url, f"s3://{bucket}/p", endpoint, total)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(rows: list[list[object]], problems: list[str]) -> int:
    print(markdown_table(
        ["S3 server", "writers", "prompts per run", "prompts/s (median)", "range", "p50 ms", "p99 ms", "errors"], rows))
    if problems:
        print("\nFAILED checks:\n" + "\n".join(problems[:20]))
        return 1
    print("\nchecks: zero errors, versions 1..N per name without duplicates, every object present and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
