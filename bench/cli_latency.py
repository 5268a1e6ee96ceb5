"""Cold ``ctpreg resolve --json``: what every inference process or script pays, against its floor, in one run.

Each row is a fresh interpreter, timed from spawn to exit (median and worst of ``--repeats``):
- the floor: ``python -c pass``, and the interpreter reading the same SQLite file with ``sqlite3``;
- what the full path would add: importing SQLAlchemy and SQLModel;
- ``ctpreg resolve --json`` on the embedded SQLite registry (read through ``registry.db.lite``);
- the same resolve through the full path (SQLAlchemy), forced by a URL the reader leaves to it;
- ``ctpreg resolve --json`` on PostgreSQL (a fresh database beside ``--pg-url``), when it is given.

The registry holds ``--prompts`` prompts of one model across 10 compressions.

    python bench/cli_latency.py --prompts 1000 --repeats 15 --pg-url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402
from registry_latency import database  # noqa: E402

COMPRESSIONS = ["gptq-w2-g128", "gptq-w3-g128", "gptq-w4-g128", "gptq-w8-g128", "bnb-nf4", "bnb-int8",
                "sparsegpt-s50", "wanda-s50", "magnitude-s60", "none"]
RESOLVE = ["-m", "ctpreg.cli.main", "resolve", "--model", "bench-model", "--bits", "3", "--json"]


def populate(db_url: str, store: Path, count: int) -> None:
    import numpy as np

    from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact
    from ctpreg.registry.compression import parse_compression
    from ctpreg.registry.db.engine import Database
    from ctpreg.registry.db.migrate import upgrade
    from ctpreg.registry.service import Registry
    from ctpreg.registry.stores.local import LocalStore

    db = Database(db_url)
    db.make_sqlite_folder()
    upgrade(db.engine)
    registry = Registry(db, LocalStore(store), user="bench")
    rng = np.random.default_rng(0)
    for i in range(count):
        full, compressed = 20.0, 20.0 + float(rng.uniform(1, 40))
        meta = PromptMetadata(
            model="bench-model", model_fingerprint="sha256:" + "cd" * 32,
            compression=parse_compression(COMPRESSIONS[i % len(COMPRESSIONS)]), dataset="wiki",
            num_virtual_tokens=4, hidden_size=8,
            metrics={"ppl_full": full, "ppl_compressed": compressed,
                     "ppl_prompted": compressed - float(rng.uniform(0, compressed - full))},
        )
        registry.publish_bytes(serialize_artifact(rng.standard_normal((4, 8)), meta), name=f"bench/p{i % 50}")
    db.dispose()


def spawn(argv: list[str], env: dict[str, str], repeats: int) -> tuple[float, float]:
    """Median and worst wall seconds of ``repeats`` fresh processes (one warm-up run first)."""
    samples = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            samples.append(time.perf_counter() - started)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pg-url", default=None,
                        help="Also time resolve on PostgreSQL (a fresh database is created next to this one).")
    args = parser.parse_args()
    print(describe())
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        db_file = home / "registry.db"
        populate(f"sqlite:///{db_file}", home / "objects", args.prompts)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTPREG_")}
        env["CTPREG_HOME"] = str(home)
        rows = []

        def row(label: str, argv: list[str], environment: dict[str, str]) -> None:
            median, worst = spawn(argv, environment, args.repeats)
            rows.append([label, f"{median * 1e3:.0f}", f"{worst * 1e3:.0f}"])

        row("floor: python -c pass", [python, "-c", "pass"], env)
        read = f"import sqlite3; sqlite3.connect('{db_file}').execute('SELECT count(*) FROM prompt').fetchone()"
        row("floor: python + sqlite3 reads the file", [python, "-c", read], env)
        row("import sqlalchemy, sqlmodel (what the full path adds)", [python, "-c", "import sqlalchemy, sqlmodel"], env)
        row("ctpreg resolve --json, SQLite (stdlib read path)", [python, *RESOLVE], env)
        full_path = {**env, "CTPREG_DB_URL": f"sqlite:///{db_file}?timeout=60"}  # options: the reader declines
        row("ctpreg resolve --json, SQLite through SQLAlchemy", [python, *RESOLVE], full_path)
        if args.pg_url:
            with database("postgres", "ctpreg_cli", args.pg_url) as pg_url:
                populate(pg_url, home / "objects", args.prompts)
                row("ctpreg resolve --json, PostgreSQL", [python, *RESOLVE], {**env, "CTPREG_DB_URL": pg_url})
    print(f"\ncold `ctpreg resolve --json`, {args.prompts} prompts, {args.repeats} fresh processes per row\n")
    print(markdown_table(["what runs", "median ms", "worst ms"], rows))


if __name__ == "__main__":
    main()
