"""Publish's writes on PostgreSQL in two round trips, through psycopg without SQLAlchemy.

Through the ORM a publish costs most of its time in Python: the session, and compiling its one combined insert
again on every call (the target rows make each statement's cache key unique). Here the statements are fixed text,
prepared server-side on first use, with the target rows passed as arrays. The transaction is the ORM path's
(``crud.insert_next_version``, ``crud.publish_gate_held``), sent as two pipelines:

1. ``BEGIN`` and the shared publish gate, before the object is uploaded, so gc cannot delete the object between
   the upload and the commit;
2. after the upload: the name's advisory lock, the prompt row with its target rows and ``latest`` (one statement
   of data-modifying CTEs), the caller's alias if any, and ``COMMIT``.

Both paths take the same locks, so they publish side by side. ``tests/test_postgres_writes.py`` checks that this
path writes what the ORM path writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..errors import DatabaseError
from ..records import BaseModelRecord, PromptRecord
from ..refs import LATEST
from .lite import RECORD_COLUMNS, RECORD_FROM, record_from_row
from .postgres_pool import first_line

PUBLISH_GATE = 0x63747072  # the advisory lock key publishes share and gc takes alone ("ctpr")
PROMPT_COLUMNS = (
    "name", "compression", "method", "bits", "sparsity", "group_size", "dataset", "task", "recovery", "deprecated",
    "base_model_id", "num_virtual_tokens", "hidden_size", "dtype", "sha256", "size_bytes", "object_key", "metrics",
    "training", "created_at", "created_by",
)
TARGET_TYPES = {"compression": "varchar", "method": "varchar", "bits": "integer", "sparsity": "float8",
                "group_size": "integer", "recovery": "float8"}  # a prompt_target row's own columns

_GATE = f"SELECT pg_advisory_xact_lock_shared({PUBLISH_GATE})"
_LOCK_NAME = "SELECT pg_advisory_xact_lock(hashtextextended(%(name)s, 0))"
_TARGETS = ", ".join(f"%(t_{key})s::{kind}[]" for key, kind in TARGET_TYPES.items())
_INSERT = (
    f"WITH inserted AS (INSERT INTO prompt ({', '.join(PROMPT_COLUMNS)}, version)"
    f" VALUES ({', '.join(f'%({c})s' for c in PROMPT_COLUMNS)},"
    " (SELECT coalesce(max(version), 0) + 1 FROM prompt WHERE name = %(name)s::varchar))"
    " ON CONFLICT DO NOTHING RETURNING id, version),"
    " target_rows AS (INSERT INTO prompt_target (prompt_id, version, deprecated, base_model_id, dataset, task, name,"
    f" {', '.join(TARGET_TYPES)}) SELECT i.id, i.version, false, %(base_model_id)s, %(dataset)s::varchar,"
    f" %(task)s::varchar, %(name)s::varchar, {', '.join(f't.{key}' for key in TARGET_TYPES)}"
    f" FROM inserted AS i, unnest({_TARGETS})"
    f" AS t({', '.join(TARGET_TYPES)})),"
    " latest AS (INSERT INTO alias (name, alias, prompt_id, updated_at)"
    f" SELECT %(name)s::varchar, '{LATEST}', id, %(created_at)s FROM inserted ON CONFLICT (name, alias)"
    " DO UPDATE SET prompt_id = excluded.prompt_id, updated_at = excluded.updated_at)"
    " SELECT id, version FROM inserted"
)
_SET_ALIAS = (
    "INSERT INTO alias (name, alias, prompt_id, updated_at) SELECT name, %(alias)s, id, %(created_at)s FROM prompt"
    " WHERE name = %(name)s AND sha256 = %(sha256)s ON CONFLICT (name, alias)"
    " DO UPDATE SET prompt_id = excluded.prompt_id, updated_at = excluded.updated_at"
)
_BY_CONTENT = (
    f"SELECT json_build_array({RECORD_COLUMNS}),"
    " ARRAY(SELECT a.alias FROM alias AS a WHERE a.prompt_id = p.id ORDER BY a.alias)"
    f"{RECORD_FROM} WHERE p.name = %(name)s AND p.sha256 = %(sha256)s"
)


def publish_rows(
    connection: Any, *, values: dict[str, Any], targets: Sequence[dict[str, Any]], model: BaseModelRecord,
    alias: str | None, upload: Callable[[], tuple[str, str]],
) -> tuple[PromptRecord, bool] | None:
    """Upload under the publish gate (``upload`` answers the object's sha256 and key) and insert the next version
    of ``values["name"]``; answer ``(record, created)`` as ``crud.insert_next_version`` does, or None when the name
    had neither a free version nor this content (a writer that skips the name's lock): the full path retries.

    ``values`` holds every ``PROMPT_COLUMNS`` entry but the sha256 and object key. On any error the transaction is
    left open and the pool (``PostgresPool``) closes the connection instead of reusing it, which rolls it back:
    nothing is written and no lock outlives the call."""
    import psycopg
    from psycopg.types.json import Json

    try:
        with connection.pipeline():
            connection.execute("BEGIN")
            connection.execute(_GATE)
        sha, key = upload()
        params = {**values, "sha256": sha, "object_key": key, "base_model_id": model.id,
                  "metrics": Json(values["metrics"]), "training": Json(values["training"]),
                  **{f"t_{name}": [target[name] for target in targets] for name in TARGET_TYPES}}
        with connection.pipeline():
            connection.execute(_LOCK_NAME, params)
            inserted = connection.execute(_INSERT, params)
            if alias is not None:
                connection.execute(_SET_ALIAS, {**params, "alias": alias})
            connection.execute("COMMIT")
        row = inserted.fetchone()
        if row is None:
            return _existing(connection, params)
    except psycopg.Error as exc:
        raise DatabaseError(f"metadata DB error: {first_line(exc)}") from None
    record = PromptRecord(
        id=row[0], version=row[1], name=values["name"], model=model.name, model_fingerprint=model.fingerprint,
        compression=values["compression"], dataset=values["dataset"], task=values["task"],
        num_virtual_tokens=values["num_virtual_tokens"], hidden_size=values["hidden_size"], dtype=values["dtype"],
        sha256=sha, size_bytes=values["size_bytes"], object_key=key, metrics=dict(values["metrics"]),
        training=dict(values["training"]), created_at=values["created_at"], created_by=values["created_by"],
        deprecated=False, aliases=tuple(sorted({LATEST, *([alias] if alias else [])})),
    )
    return record, True


def _existing(connection: Any, params: dict[str, Any]) -> tuple[PromptRecord, bool] | None:
    """The committed version holding this content under this name, with its aliases."""
    row = connection.execute(_BY_CONTENT, params).fetchone()
    if row is None:
        return None
    return replace(record_from_row(row[0]), aliases=tuple(row[1])), False

