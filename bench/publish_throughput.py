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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import (  # noqa: E402
    S3_SERVERS, busy_cpu_seconds, describe, markdown_table, moto_s3, postgres_cpu_seconds,
)

from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.db.engine import Database  # noqa: E402
from ctpreg.registry.db.migrate import upgrade  # noqa: E402
from ctpreg.registry.digest import sha256_hex  # noqa: E402
from ctpreg.registry.service import Registry  # noqa: E402
from ctpreg.registry.stores import open_store  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NAMES = 4
PATHS = ("psycopg", "sqlalchemy")  # db.postgres_writes, or the ORM path it replaced
CPU_PARTS = ("all", "writers", "S3 client", "PostgreSQL", "rest")  # "writers": ctpreg without the S3 client


@dataclass
class Run:
    """One run of a level: its rate and latencies, and the CPU it used per publish (milliseconds)."""

    rate: float
    latencies: list[float]
    errors: int
    cpu: dict[str, float]


def writer(
    db_url: str, store_url: str, endpoint: str, path: str, worker: int, count: int, ready: Any, finished: Any,
    results: Any,
) -> None:
    """Publish ``count`` prompts once every writer is ready (the barrier); report the latencies, the error count,
    when the last publish ended, this process's CPU seconds and those spent in the S3 client. Connections stay
    open until the parent has read PostgreSQL's CPU (``finished``), since their server processes end with them."""
    registry = Registry(Database(db_url), open_store(store_url, s3_endpoint_url=endpoint), user=f"w{worker}")
    if path == "sqlalchemy":  # every publish through the ORM, as before db.postgres_writes
        registry._publish_on_postgres = lambda *args, **kwargs: None  # type: ignore[method-assign]
    meta = PromptMetadata(
        model="llama-7b", model_fingerprint="sha256:" + "cd" * 32, compression=parse_compression("gptq-w3-g128"),
        dataset="wiki", num_virtual_tokens=20, hidden_size=512,
    )
    payloads = [
        serialize_artifact(np.random.default_rng(worker * 100_000 + i).standard_normal((20, 512)), meta)
        for i in range(count)
    ]
    upload, in_upload = registry.store.put_content, [0.0]

    def timed_upload(data: bytes) -> tuple[str, str]:
        started = time.thread_time()
        try:
            return upload(data)
        finally:
            in_upload[0] += time.thread_time() - started

    registry.store.put_content = timed_upload  # type: ignore[method-assign]
    registry.get_model("llama-7b")  # connect before the clock starts
    ready.wait()
    cpu_before = time.process_time()
    latencies, errors = [], 0
    for i, data in enumerate(payloads):
        started = time.perf_counter()
        try:
            registry.publish_bytes(data, name=f"shared/p{(worker + i) % NAMES}")
        except Exception:  # the bench counts every failure; none is expected
            errors += 1
        latencies.append(time.perf_counter() - started)
    results.put((latencies, errors, time.time(), time.process_time() - cpu_before, in_upload[0]))
    finished.wait()
    registry.db.dispose()


def run_level(db_url: str, store_url: str, endpoint: str, path: str, writers: int, per_writer: int) -> Run:
    """Timed from the moment every writer is ready (imports, payloads and connections are not timed) until the
    last publish ends. The CPU split: the writers' own (the S3 client's part of it measured inside the upload),
    PostgreSQL's processes, and the rest of the machine's busy time (the S3 server, mostly)."""
    context = multiprocessing.get_context("spawn")
    ready, finished, results = context.Barrier(writers + 1), context.Barrier(writers + 1), context.Queue()
    processes = [
        context.Process(target=writer,
                        args=(db_url, store_url, endpoint, path, w, per_writer, ready, finished, results))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=300)
    started, busy, postgres = time.time(), busy_cpu_seconds(), postgres_cpu_seconds()
    reports = [results.get(timeout=600) for _ in processes]
    busy, postgres = busy_cpu_seconds() - busy, postgres_cpu_seconds() - postgres
    finished.wait(timeout=60)
    for process in processes:
        process.join()
    total = writers * per_writer
    elapsed = max(report[2] for report in reports) - started
    own, client = sum(report[3] for report in reports), sum(report[4] for report in reports)
    cpu = {"all": busy, "writers": own - client, "S3 client": client, "PostgreSQL": postgres,
           "rest": busy - own - postgres}
    return Run(rate=total / elapsed, latencies=[lat for report in reports for lat in report[0]],
               errors=sum(report[1] for report in reports), cpu={k: 1e3 * v / total for k, v in cpu.items()})


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
    parser.add_argument("--paths", default="psycopg", help=f"publish paths on PostgreSQL, of {', '.join(PATHS)}")
    parser.add_argument("--s3-servers", default=",".join(S3_SERVERS), help=f"of {', '.join(S3_SERVERS)}")
    args = parser.parse_args()
    print(describe())
    rows: list[list[object]] = []
    cpu_rows: list[list[object]] = []
    problems: list[str] = []
    paths = args.paths.split(",")
    if not set(paths) <= set(PATHS):
        parser.error(f"unknown publish path in {args.paths!r}: choose from {', '.join(PATHS)}")
    for server in args.s3_servers.split(","):
        if server not in S3_SERVERS:
            parser.error(f"unknown S3 server {server!r}: choose from {', '.join(S3_SERVERS)}")
        print(f"S3 server {server}: {S3_SERVERS[server]}")
        with moto_s3(server) as endpoint:
            for path in paths:
                measured, cpu, failed = measure(args, endpoint, path)
                rows += [[server, path, *row] for row in measured]
                cpu_rows += [[server, path, *row] for row in cpu]
                problems += [f"{server}, {path}: {p}" for p in failed]
    print()
    return report(rows, cpu_rows, problems)


def measure(
    args: argparse.Namespace, endpoint: str, path: str
) -> tuple[list[list[object]], list[list[object]], list[str]]:
    """Every level ``args.repeats`` times, the levels interleaved so that a slow spell of the machine does not fall
    on one level only; each run on a new database and an emptied bucket. Answers the throughput rows, the CPU rows
    (medians over the runs) and the failed checks."""
    levels = [int(w) for w in args.writers.split(",")]
    runs: dict[int, list[Run]] = {w: [] for w in levels}
    problems: list[str] = []
    for _ in range(args.repeats):
        for writers in levels:
            run, found = run_once(args, endpoint, path, writers)
            runs[writers].append(run)
            problems += [f"{writers} writers: {p}" for p in found]
    rows, cpu_rows = [], []
    for writers in levels:
        rates = [run.rate for run in runs[writers]]
        ordered = sorted(lat for run in runs[writers] for lat in run.latencies)
        errors = sum(run.errors for run in runs[writers])
        rows.append([writers, writers * args.per_writer, f"{statistics.median(rates):.0f}",
                     f"{min(rates):.0f}-{max(rates):.0f}", f"{ordered[len(ordered) // 2] * 1e3:.1f}",
                     f"{ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3:.1f}", errors])
        cpu_rows.append([writers, *(f"{statistics.median(run.cpu[part] for run in runs[writers]):.2f}"
                                    for part in CPU_PARTS)])
        if errors:
            problems.append(f"{writers} writers: {errors} publish errors")
    return rows, cpu_rows, problems


def run_once(args: argparse.Namespace, endpoint: str, path: str, writers: int) -> tuple[Run, list[str]]:
    import boto3

    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    name = f"ctpreg_publish_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = args.pg_url.rsplit("/", 1)[0] + f"/{name}"
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"publish-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        upgrade(Database(db_url).engine)
        run = run_level(db_url, f"s3://{bucket}/p", endpoint, path, writers, args.per_writer)
        return run, check(db_url, f"s3://{bucket}/p", endpoint, writers * args.per_writer)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        empty_bucket(s3, bucket)  # the S3 server's memory stays the same from run to run


def empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def report(rows: list[list[object]], cpu_rows: list[list[object]], problems: list[str]) -> int:
    print(markdown_table(
        ["S3 server", "publish path", "writers", "prompts per run", "prompts/s (median)", "range", "p50 ms", "p99 ms",
         "errors"], rows))
    print("\nCPU per publish, ms (medians over the runs; 'rest' is the machine's other busy time: the S3 server, "
          "mostly):\n")
    print(markdown_table(["S3 server", "publish path", "writers", *CPU_PARTS], cpu_rows))
    if problems:
        print("\nFAILED checks:\n" + "\n".join(problems[:20]))
        return 1
    print("\nchecks: zero errors, versions 1..N per name without duplicates, every object present and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
