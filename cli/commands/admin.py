"""Operations: ``db upgrade|current``, ``models add|list``, ``gc``."""

from __future__ import annotations

from typing import Annotated

import typer

from ctpreg.registry.refs import check_fingerprint, check_model_name
from ctpreg.registry.db.revision import SCHEMA_REVISION
from ctpreg.registry.records import BaseModelRecord
from ctpreg.registry.service import DEFAULT_GC_GRACE_SECONDS, MAX_GC_GRACE_SECONDS

from ..options import JsonFlag
from ..output import emit_json, info, table
from ..state import state

db_app = typer.Typer(help="Metadata DB schema (Alembic migrations).", no_args_is_help=True)
models_app = typer.Typer(help="Base models and their embedding-space fingerprints.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations to the configured DB (CTPREG_DB_URL)."""
    from ctpreg.registry.db.engine import Database, safe_url
    from ctpreg.registry.db.migrate import upgrade

    db = Database(state(ctx).settings.db_url)
    db.make_sqlite_folder()
    upgrade(db.engine, revision)
    info(f"{safe_url(db.url)} is at revision {db.current_revision()}")


@db_app.command("current")
def db_current(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the DB's schema revision and the one this ctpreg needs."""
    from ctpreg.registry.db.engine import Database, safe_url

    db = Database(state(ctx).settings.db_url)
    current = db.current_revision()
    if as_json:
        emit_json({"url": safe_url(db.url), "current": current, "required": SCHEMA_REVISION})
        return
    verdict = "up to date" if current == SCHEMA_REVISION else "run `ctpreg db upgrade`"
    info(f"{safe_url(db.url)}: revision {current or '(none)'}, needs {SCHEMA_REVISION}: {verdict}")


@models_app.command("add")
def models_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model slug, e.g. llama-7b.")],
    fingerprint: Annotated[str, typer.Option(help="Embedding-space fingerprint, sha256:<64 hex>.")],
    hidden_size: Annotated[int, typer.Option(min=1, help="Hidden (embedding) size.")],
    vocab_size: Annotated[int, typer.Option(min=1, help="Vocabulary size.")],
    source: Annotated[str | None, typer.Option(help="Where the weights come from (hub id, path).")] = None,
    architecture: Annotated[str | None, typer.Option(help="Architecture, e.g. LlamaForCausalLM.")] = None,
) -> None:
    """Register a base model (publishing registers unknown models automatically)."""
    record = BaseModelRecord(
        name=check_model_name(name), fingerprint=check_fingerprint(fingerprint), hidden_size=hidden_size,
        vocab_size=vocab_size, source=source, architecture=architecture,
    )
    state(ctx).registry.add_model(record)
    info(f"registered {name} ({fingerprint[:19]}…, hidden {hidden_size})")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List base models with their fingerprints."""
    models = state(ctx).registry.list_models()
    if as_json:
        emit_json([m.to_dict() for m in models])
        return
    table(
        f"{len(models)} base model(s)",
        ["name", "fingerprint", "hidden", "vocab", "architecture", "source"],
        [(m.name, m.fingerprint[:23] + "…", m.hidden_size, m.vocab_size, m.architecture, m.source) for m in models],
    )


def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    grace: Annotated[float, typer.Option(
        min=0, max=MAX_GC_GRACE_SECONDS, help="Keep unreferenced objects younger than this many seconds.",
    )] = DEFAULT_GC_GRACE_SECONDS,
    allow_empty_db: Annotated[bool, typer.Option(
        "--allow-empty-db",
        help=("Collect even when the DB references no prompt at all (otherwise refused: a lost DB would empty the "
              "store)."),
    )] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove stored objects no prompt references, and partial uploads of killed publishes, older than --grace."""
    removed = state(ctx).registry.gc(grace_seconds=grace, dry_run=dry_run, allow_empty_db=allow_empty_db)
    if as_json:
        emit_json({"dry_run": dry_run, "objects": [{"key": o.key, "size": o.size} for o in removed]})
        return
    verb = "would remove" if dry_run else "removed"
    info(f"{verb} {len(removed)} unreferenced object(s), {sum(o.size for o in removed)} bytes")


def reindex(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Register every prompt in the object store into the metadata DB (after a lost or new DB); idempotent."""
    results = state(ctx).registry.reindex()
    if as_json:
        emit_json([{"ref": r.prompt.ref, "sha256": r.prompt.sha256, "created": r.created} for r in results])
        return
    info(f"{sum(r.created for r in results)} prompt(s) registered, {sum(not r.created for r in results)} already there")
