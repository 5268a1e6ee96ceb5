"""Publishing under concurrency: 1, 4 and 8 writer processes on PostgreSQL + S3 (moto over HTTP).

Each writer publishes distinct prompts to a handful of shared names (so versions contend). Reports prompts/s and
publish latency p50/p99 per level, then asserts zero errors, versions 1..N per name with no duplicates, and every
row's object present with the right sha256.

    python bench/publish_throughput.py --writers 1,4,8 --per-writer 100
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table, moto_s3  # noqa: E402

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
    db_url: str, store_url: str, endpoint: str, worker: int, count: int, start_at: float
) -> tuple[list[float], int]:
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
    while time.time() < start_at:
        time.sleep(0.001)
    latencies, errors = [], 0
    for i, data in enumerate(payloads):
        started = time.perf_counter()
        try:
            registry.publish_bytes(data, name=f"shared/p{(worker + i) % NAMES}")
        except Exception:  # the bench counts every failure; none is expected
            errors += 1
        latencies.append(time.perf_counter() - started)
    registry.db.dispose()
    return latencies, errors


def run_level(
    db_url: str, store_url: str, endpoint: str, writers: int, per_writer: int
) -> tuple[float, list[float], int]:
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with context.Pool(writers) as pool:
        started = time.time()
        results = pool.starmap(writer, [(db_url, store_url, endpoint, w, per_writer, start_at) for w in range(writers)])
        elapsed = time.time() - max(started, start_at)
    latencies = [lat for lats, _ in results for lat in lats]
    return elapsed, latencies, sum(e for _, e in results)


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
    parser.add_argument("--per-writer", type=int, default=100)
    parser.add_argument("--pg-url", default=os.environ.get("CTPREG_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    print(describe())
    with moto_s3() as endpoint:
        rows, problems = measure(args, endpoint)
    print()
    return report(rows, problems)


def measure(args: argparse.Namespace, endpoint: str) -> tuple[list[list[object]], list[str]]:
    import boto3

    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    rows: list[list[object]] = []
    problems: list[str] = []
    for writers in (int(w) for w in args.writers.split(",")):
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
            problems += [f"{writers} writers: {p}" for p in check(db_url, f"s3://{bucket}/p", endpoint, total)]
            if errors:
                problems.append(f"{writers} writers: {errors} publish errors")
            ordered = sorted(latencies)
            rows.append([writers, total, f"{total / elapsed:.0f}", f"{ordered[len(ordered) // 2] * 1e3:.1f}",
                         f"{ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3:.1f}", errors])
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    return rows, problems


def report(rows: list[list[object]], problems: list[str]) -> int:
    print(markdown_table(["writers", "prompts", "prompts/s", "p50 ms", "p99 ms", "errors"], rows))
    if problems:
        print("\nFAILED checks:\n" + "\n".join(problems[:20]))
        return 1
    print("\nchecks: zero errors, versions 1..N per name without duplicates, every object present and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
