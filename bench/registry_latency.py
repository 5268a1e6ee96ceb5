"""Registry lookups at platform scale: ctpreg vs MLflow Model Registry, same database kind, same versions, one run.

Populates 100,000 prompt versions over 50 base models (10 fingerprint classes), every compression level and four
datasets, through a bulk insert, then ``ANALYZE`` (``VACUUM ANALYZE`` on PostgreSQL); then measures in-process
``resolve`` (metadata tiers) and ``show NAME@latest`` (p50/p95/p99 over random lookups) and the cold ``ctpreg
resolve --json`` command (median of 10). On PostgreSQL a resolve is one statement (``db.postgres_reads``); its plan,
as executed, closes the report. MLflow gets the same versions (a registered model per prompt name, version tags
model/method/bits/dataset, a ``latest`` alias), the same ``ANALYZE``, and the same number of calls for the same
questions:

- ``show NAME@latest`` against ``get_model_version_by_alias(NAME, "latest")``: one version by alias;
- ``resolve`` (the ranked top 10 for a target) against ``search_model_versions`` filtered on the same target's tags
  (model, and method and bits where the target sets them), 10 results: MLflow's closest query. It cannot rank by
  recovery or fall back to related targets, so it answers less than resolve does; its results carry their aliases.

    python bench/registry_latency.py --backend sqlite --prompts 100000
    python bench/registry_latency.py --backend postgres --prompts 100000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402

from ctpreg.registry.recovery import gap_recovered  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.db.engine import Database  # noqa: E402
from ctpreg.registry.db.migrate import upgrade  # noqa: E402
from ctpreg.registry.db.models import AliasRow, BaseModelRow, PromptRow, PromptTargetRow  # noqa: E402
from ctpreg.registry.matcher import Target, rank  # noqa: E402
from ctpreg.registry.service import Registry  # noqa: E402
from ctpreg.registry.stores.local import LocalStore  # noqa: E402

COMPRESSIONS = [
    "none", "gptq-w2-g128", "gptq-w3-g128", "gptq-w4-g128", "gptq-w8-g128", "bnb-nf4", "bnb-fp4", "bnb-int8",
    "sparsegpt-s50", "sparsegpt-s75", "wanda-s50", "wanda-n2m4", "magnitude-s50", "gptq-w4-g128+sparsegpt-s50",
    "gptq-w3-g64",
]
DATASETS = ["wiki", "news", "c4", "ptb"]
TARGETS = [
    {"method": "gptq", "bits": 3}, {"bits": 3}, {"bits": 4}, {"method": "gptq", "bits": 2}, {"method": "bnb-nf4"},
    {"method": "sparsegpt", "sparsity": 0.5}, {"method": "wanda", "sparsity": 0.5}, {"method": "gptq", "bits": 8},
]
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return pick(0.50) * 1e3, pick(0.95) * 1e3, pick(0.99) * 1e3


def timed(calls: list[Callable[[], object]]) -> list[float]:
    out = []
    for call in calls:
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


@contextmanager
def database(backend: str, label: str, pg_url: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"{label}-") as folder:
            yield f"sqlite:///{folder}/{label}.db"
        return
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    name = f"{label}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def plan(prompts: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Base models and prompt rows: 50 models in 10 classes, every compression x dataset, versions to reach N."""
    models = [
        {"id": i + 1, "name": f"model-{i:02d}",
         "fingerprint": "sha256:" + hashlib.sha256(f"class-{i // 5}".encode()).hexdigest(),
         "hidden_size": 4096, "vocab_size": 32000, "architecture": "LlamaForCausalLM", "source": f"org/model-{i:02d}",
         "created_at": datetime.now(UTC)}
        for i in range(50)
    ]
    names = [(m, c, d) for c in COMPRESSIONS for d in DATASETS for m in models]  # every model early on
    rows, versions = [], {}
    for i in range(prompts):
        model, compression, dataset = names[i % len(names)]
        name = f"{model['name']}/{compression}/{dataset}"
        versions[name] = versions.get(name, 0) + 1
        spec = parse_compression(compression)
        compressed = 20 + 60 * rng.random()
        metrics = {"ppl_full": 20.0, "ppl_compressed": compressed,
                   "ppl_prompted": compressed - rng.random() * (compressed - 20)}
        sha = hashlib.sha256(f"{name}:{versions[name]}".encode()).hexdigest()
        rows.append({
            "name": name, "version": versions[name], "base_model_id": model["id"], "compression": spec.canonical,
            "method": spec.method, "bits": spec.bits, "sparsity": spec.sparsity, "group_size": spec.group_size,
            "dataset": dataset, "task": None, "num_virtual_tokens": 100, "hidden_size": 4096, "dtype": "float16",
            "sha256": sha, "size_bytes": 819_200, "object_key": f"prompts/{sha[:2]}/{sha}.safetensors",
            "metrics": metrics, "recovery": gap_recovered(metrics), "training": {"steps": 1000},
            "created_at": datetime.now(UTC), "created_by": "bench", "deprecated": False,
        })
    return models, rows


def populate_ctpreg(url: str, models: list[dict], rows: list[dict]) -> float:
    db = Database(url)
    upgrade(db.engine)
    started = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(sa.insert(BaseModelRow.__table__), models)
        for start in range(0, len(rows), 10_000):
            conn.execute(sa.insert(PromptRow.__table__), rows[start : start + 10_000])
        ids = {
            (name, version): pid
            for pid, name, version in conn.execute(sa.select(PromptRow.id, PromptRow.name, PromptRow.version))
        }
        copied = ("base_model_id", "compression", "method", "bits", "sparsity", "group_size", "recovery", "dataset",
                  "task", "version", "name", "deprecated")
        for start in range(0, len(rows), 10_000):  # each prompt's one target: the rows resolve ranks
            conn.execute(sa.insert(PromptTargetRow.__table__), [
                {"prompt_id": ids[(row["name"], row["version"])], **{key: row[key] for key in copied}}
                for row in rows[start : start + 10_000]
            ])
        latest: dict[str, int] = {}
        for name, version in ids:
            latest[name] = max(latest.get(name, 0), version)
        conn.execute(sa.insert(AliasRow.__table__), [
            {"name": name, "alias": "latest", "prompt_id": ids[(name, version)], "updated_at": datetime.now(UTC)}
            for name, version in latest.items()
        ])
    db.dispose()
    seconds = time.perf_counter() - started
    analyze(url)
    return seconds


def analyze(url: str) -> None:
    """Planner statistics for every table, so both registries are measured on analysed databases. On PostgreSQL,
    ``VACUUM ANALYZE``: the state autovacuum brings a bulk-loaded table to within minutes (its visibility map is
    what lets an index-only scan skip the table's pages), rather than the moment after the load."""
    postgres = url.startswith("postgresql")
    engine = sa.create_engine(url, **({"isolation_level": "AUTOCOMMIT"} if postgres else {}))
    with engine.begin() as conn:
        conn.execute(sa.text("VACUUM ANALYZE" if postgres else "ANALYZE"))
    engine.dispose()


def mlflow_name(name: str) -> str:
    """MLflow model names cannot contain '/'."""
    return name.replace("/", "__")


def populate_mlflow(url: str, rows: list[dict]) -> float:
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(url)
    store.create_registered_model("template")
    store.create_model_version("template", source="s3://bucket/template", run_id=None)
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine, only=["registered_models", "model_versions", "model_version_tags", "registered_model_aliases"])
    tables = meta.tables
    with engine.connect() as conn:
        template = dict(conn.execute(sa.select(tables["model_versions"])).mappings().first())
        workspace = template["workspace"]
    now = int(time.time() * 1000)
    started = time.perf_counter()
    names = sorted({mlflow_name(r["name"]) for r in rows})
    latest: dict[str, int] = {}
    for r in rows:
        latest[mlflow_name(r["name"])] = max(latest.get(mlflow_name(r["name"]), 0), r["version"])
    with engine.begin() as conn:
        conn.execute(sa.insert(tables["registered_models"]), [
            {"name": n, "creation_time": now, "last_updated_time": now, "description": None, "workspace": workspace}
            for n in names
        ])
        for start in range(0, len(rows), 10_000):
            chunk = rows[start : start + 10_000]
            conn.execute(sa.insert(tables["model_versions"]), [
                {**template, "name": mlflow_name(r["name"]), "version": r["version"], "creation_time": now,
                 "last_updated_time": now, "source": f"s3://bucket/{r['object_key']}"} for r in chunk
            ])
            conn.execute(sa.insert(tables["model_version_tags"]), [
                {"key": key, "value": str(value), "name": mlflow_name(r["name"]), "version": r["version"],
                 "workspace": workspace}
                for r in chunk
                for key, value in (("model", r["name"].split("/")[0]), ("method", r["method"]), ("bits", r["bits"]),
                                   ("dataset", r["dataset"]))
            ])
        conn.execute(sa.insert(tables["registered_model_aliases"]), [
            {"alias": "latest", "version": v, "name": n, "workspace": workspace} for n, v in latest.items()
        ])
    engine.dispose()
    return time.perf_counter() - started


def cold_cli(env: dict[str, str], args: list[str], runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ctpreg.cli.main", *args], env=env, capture_output=True, text=True,
                              timeout=120)  # the running interpreter: no `ctpreg` on PATH needed
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"cold CLI failed: {proc.stderr.strip()}")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=1000, help="calls per operation, the same for both registries")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("CTPREG_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args()
    print(describe())
    rng = random.Random(0)
    models, rows = plan(args.prompts, rng)
    failures: list[str] = []
    results: list[list[object]] = []
    with database(args.backend, "ctpreg_bench", args.pg_url) as url, tempfile.TemporaryDirectory() as folder:
        populate_seconds = populate_ctpreg(url, models, rows)
        registry = Registry(Database(url), LocalStore(Path(folder)), user="bench")
        names = sorted({r["name"] for r in rows})
        latest = {}
        for r in rows:
            latest[r["name"]] = max(latest.get(r["name"], 0), r["version"])
        targets = [Target(model=rng.choice(models)["name"], **rng.choice(TARGETS)) for _ in range(args.lookups)]
        lookups = [rng.choice(names) for _ in range(args.lookups)]
        registry.candidates(targets[0], limit=10)  # connect and check the schema outside the timings
        resolve_times = timed([lambda t=t: registry.candidates(t, limit=10) for t in targets])
        show_times = timed([lambda n=n: registry.get(f"{n}@latest") for n in lookups])
        fingerprints = {m["name"]: m["fingerprint"] for m in models}
        complete = args.prompts >= len(models) * len(COMPRESSIONS) * len(DATASETS)
        for target in targets[:50]:
            best = registry.candidates(target, limit=10)[0]
            if best.prompt.model_fingerprint != fingerprints[target.model]:
                failures.append(f"resolve {target.describe()} served {best.prompt.ref} from another embedding space")
            if complete and (best.prompt.model != target.model or best.tier != 2):
                failures.append(f"resolve {target.describe()} served {best.prompt.ref} (tier {best.tier})")
        failures += ranking_mismatches(registry, targets[:20], fingerprints)
        for name in lookups[:50]:
            if registry.get(f"{name}@latest").version != latest[name]:
                failures.append(f"{name}@latest is not version {latest[name]}")
        env = {**os.environ, "CTPREG_DB_URL": url, "CTPREG_STORE_URL": Path(folder).as_uri(), "CTPREG_HOME": folder}
        model = models[7]["name"]
        cli_seconds = cold_cli(env, ["resolve", "--model", model, "--method", "gptq", "--bits", "3", "--json"])
        plan_rows = explain(registry, Target(model=model, method="gptq", bits=3))
        registry.db.dispose()
        results.append(["ctpreg resolve (metadata tiers, top 10)", "MLflow search", *fmt(percentiles(resolve_times))])
        results.append(["ctpreg show NAME@latest", "MLflow alias", *fmt(percentiles(show_times))])
        if not args.no_mlflow:
            with database(args.backend, "mlflow_bench", args.pg_url) as mlflow_url:
                mlflow_seconds, mlflow_rows = measure_mlflow(mlflow_url, rows, lookups, targets, failures)
                results += mlflow_rows
    print(f"\n{args.prompts:,} prompt versions, {len(models)} base models, {len(names):,} names on {args.backend}; "
          f"population (bulk insert): ctpreg {populate_seconds:.1f}s"
          + ("" if args.no_mlflow else f", MLflow {mlflow_seconds:.1f}s") + "\n")
    print(f"{args.lookups} calls per operation\n")
    print(markdown_table(["operation", "compared with", "p50 ms", "p95 ms", "p99 ms"], results))
    ratio = ""
    if not args.no_mlflow:
        ours = {r[0]: float(r[2]) for r in results}
        alias_ratio = ours["MLflow get_model_version_by_alias"] / ours["ctpreg show NAME@latest"]
        search_ratio = (ours["MLflow search_model_versions (the target's tags, 10 results)"]
                        / ours["ctpreg resolve (metadata tiers, top 10)"])
        ratio = (f"\nratio MLflow/ctpreg at p50: alias lookup {alias_ratio:.1f}x, "
                 f"tag search vs resolve {search_ratio:.0f}x")
    print(ratio)
    print(f"\ncold CLI `ctpreg resolve --model {model} --method gptq --bits 3 --json`: "
          f"median of 10 = {cli_seconds:.3f}s")
    print("\nquery plan of the resolve fast path:\n" + "\n".join(plan_rows))
    if failures:
        print("\nFAILED checks:\n" + "\n".join(failures[:20]))
        return 1
    return 0


def ranking_mismatches(registry: Registry, targets: list[Target], fingerprints: dict[str, str]) -> list[str]:
    """The DB's top 10 must be the head of the matcher's ranking of the whole fingerprint class, computed in Python."""
    by_class: dict[str, list] = {}
    for prompt in registry.list_prompts(include_deprecated=False):
        by_class.setdefault(prompt.model_fingerprint, []).append(prompt)
    found = []
    for target in targets:
        expected = [c.prompt.ref for c in rank(target, by_class[fingerprints[target.model]])[:10]]
        got = [c.prompt.ref for c in registry.candidates(target, limit=10)]
        if got != expected:
            at = next(i for i, (a, b) in enumerate(zip([*got, None], [*expected, None])) if a != b)
            found.append(f"resolve {target.describe()}: place {at + 1} is {got[at:at + 1]}, the full ranking has "
                         f"{expected[at:at + 1]}")
    return found


def fmt(values: tuple[float, float, float]) -> list[str]:
    return [f"{v:.3f}" for v in values]


def explain(registry: Registry, target: Target) -> list[str]:
    """The plan of what a resolve sends: on PostgreSQL the one statement of ``db.postgres_reads`` (as executed,
    ANALYZE), on SQLite the own-exact-matches query of ``db.lite``."""
    model = registry.get_model(target.model)
    if registry.db.dialect == "postgresql":
        import psycopg

        from ctpreg.registry.db.postgres_pool import conninfo_for
        from ctpreg.registry.db.postgres_reads import gather_query

        sql, params = gather_query(target=target, base=model, limit=10, eval_key=None)
        with psycopg.connect(conninfo_for(registry.db.url), autocommit=True) as conn:
            rows = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + sql, params).fetchall()
        return ["  " + row[0] for row in rows]
    from ctpreg.registry.db import crud, ranking

    shape, params = ranking.shape_and_params(target, model.id, model.fingerprint, 10)
    statement = ranking.own_exact_statement(crud._record_query(), shape)
    used = {p.key for p in statement._get_embedded_bindparams()}
    compiled = statement.params(**{k: v for k, v in params.items() if k in used}).compile(
        registry.db.engine, compile_kwargs={"literal_binds": True}
    )
    with registry.db.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled))
        return ["  " + " ".join(str(c) for c in row) for row in rows]


def mlflow_filter(target: Target) -> str:
    """The target's question as MLflow tag filters: its model, and its method and bits where it sets them."""
    clauses = [f"tags.model = '{target.model}'"]
    clauses += [f"tags.method = '{target.method}'"] if target.method else []
    clauses += [f"tags.bits = '{target.bits}'"] if target.bits is not None else []
    return " AND ".join(clauses)


def measure_mlflow(url, rows, lookups, targets, failures):  # type: ignore[no-untyped-def]
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    seconds = populate_mlflow(url, rows)
    analyze(url)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    client.get_model_version_by_alias(mlflow_name(lookups[0]), "latest")
    alias_times = timed([lambda n=n: client.get_model_version_by_alias(mlflow_name(n), "latest") for n in lookups])
    search_times = timed([
        lambda t=t: client.search_model_versions(mlflow_filter(t), max_results=10) for t in targets
    ])
    expected = max(r["version"] for r in rows if r["name"] == lookups[0])
    if int(client.get_model_version_by_alias(mlflow_name(lookups[0]), "latest").version) != expected:
        failures.append("MLflow alias lookup returned the wrong version")
    first = rows[0]  # a version that exists, so its own tags must find it
    known = Target(model=first["name"].split("/")[0], method=first["method"], bits=first["bits"])
    if not client.search_model_versions(mlflow_filter(known), max_results=10):
        failures.append(f"MLflow search found nothing for {mlflow_filter(known)}")
    return seconds, [
        ["MLflow get_model_version_by_alias", "ctpreg show", *fmt(percentiles(alias_times))],
        ["MLflow search_model_versions (the target's tags, 10 results)", "ctpreg resolve",
         *fmt(percentiles(search_times))],
    ]


if __name__ == "__main__":
    sys.exit(main())
