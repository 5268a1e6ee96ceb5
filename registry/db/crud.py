"""Queries on the metadata DB: keyword-only functions that take a session and never commit.

Versions are assigned inside the INSERT (``max(version) + 1`` as a subquery) under the unique constraint on
``(name, version)``; a concurrent publisher that loses the race retries in a savepoint, so versions are distinct and
consecutive without a read-then-write window.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import Float, Integer, Select, String, bindparam, cast, column, delete, func, insert, literal, or_
from sqlalchemy import select, true, update
from sqlalchemy import values as sa_values
from sqlmodel import Session

from ..errors import Conflict, DatabaseError, NotFound
from ..identity import LEGACY as LEGACY_KEY
from ..identity import EvalData
from ..records import BaseModelRecord, Evidence, Measurement, PromptRecord
from ..matcher import Target
from ..rank_rules import distinct_head
from ..refs import LATEST, PromptRef
from . import ranking
from .lite import gather_by_parts
from .postgres_writes import PUBLISH_GATE, TARGET_TYPES
from ..tokens import NewToken, TokenRecord
from .models import AliasRow, ApiTokenRow, BaseModelRow, PromptRow, PromptTargetRow, TransferResultRow, utcnow

MAX_VERSION_ATTEMPTS = 200
ALIAS_BATCH = 10_000
_prompt = PromptRow.__table__
_alias = AliasRow.__table__
_base = BaseModelRow.__table__
_target = PromptTargetRow.__table__


def _insert(session: Session, table):  # type: ignore[no-untyped-def]
    """A dialect-specific INSERT that supports ON CONFLICT (SQLite and PostgreSQL share the syntax)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(table)
    raise DatabaseError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")


def _to_base_record(row: BaseModelRow) -> BaseModelRecord:
    return BaseModelRecord(
        id=row.id, name=row.name, fingerprint=row.fingerprint, hidden_size=row.hidden_size, vocab_size=row.vocab_size,
        architecture=row.architecture, source=row.source, created_at=row.created_at,
    )


def _to_record(row: Any, aliases: Iterable[str] = ()) -> PromptRecord:
    return PromptRecord(
        id=row.id, name=row.name, version=row.version, model=row.model_name, model_fingerprint=row.model_fingerprint,
        compression=row.compression, dataset=row.dataset, task=row.task, num_virtual_tokens=row.num_virtual_tokens,
        hidden_size=row.hidden_size, dtype=row.dtype, sha256=row.sha256, size_bytes=row.size_bytes,
        object_key=row.object_key, metrics=dict(row.metrics or {}), training=dict(row.training or {}),
        created_at=row.created_at, created_by=row.created_by, deprecated=row.deprecated, aliases=tuple(sorted(aliases)),
    )


# --- base models -------------------------------------------------------------------------------------------------


def get_base_model(session: Session, *, name: str) -> BaseModelRecord | None:
    row = session.execute(select(BaseModelRow).where(BaseModelRow.name == name)).scalars().first()
    return _to_base_record(row) if row else None


def base_models_by_fingerprint(session: Session, *, fingerprint: str) -> list[BaseModelRecord]:
    rows = session.execute(
        select(BaseModelRow).where(BaseModelRow.fingerprint == fingerprint).order_by(BaseModelRow.name)
    ).scalars().all()
    return [_to_base_record(row) for row in rows]


def list_base_models(session: Session) -> list[BaseModelRecord]:
    rows = session.execute(select(BaseModelRow).order_by(BaseModelRow.name)).scalars().all()
    return [_to_base_record(row) for row in rows]


def ensure_base_model(
    session: Session,
    *,
    name: str,
    fingerprint: str,
    hidden_size: int,
    vocab_size: int | None = None,
    architecture: str | None = None,
    source: str | None = None,
) -> int:
    """Register ``name`` if new (race-free upsert); if known, it must agree on fingerprint and hidden size."""
    stmt = _insert(session, _base).values(
        name=name, fingerprint=fingerprint, hidden_size=hidden_size, vocab_size=vocab_size,
        architecture=architecture, source=source, created_at=utcnow(),
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
    row = session.execute(select(BaseModelRow).where(BaseModelRow.name == name)).scalars().one()
    if row.fingerprint != fingerprint:
        raise Conflict(
            f"model {name!r} is registered with fingerprint {row.fingerprint[:19]}…, the artifact says "
            f"{fingerprint[:19]}…: a prompt only fits the embedding space it was trained in"
        )
    if row.hidden_size != hidden_size:
        raise Conflict(f"model {name!r} has hidden size {row.hidden_size}, the artifact says {hidden_size}")
    if vocab_size is not None and row.vocab_size is not None and row.vocab_size != vocab_size:
        raise Conflict(f"model {name!r} has vocab size {row.vocab_size}, got {vocab_size}")
    assert row.id is not None
    return row.id


# --- prompts -----------------------------------------------------------------------------------------------------


_RECORD_QUERY = select(
    *_prompt.c, _base.c.name.label("model_name"), _base.c.fingerprint.label("model_fingerprint")
).select_from(_prompt.join(_base, _prompt.c.base_model_id == _base.c.id))


def _record_query() -> Select:
    """Prompt columns plus the base model's name and fingerprint (Core rows: no ORM identity-map work on reads)."""
    return _RECORD_QUERY


def _records(
    session: Session, stmt: Select, *, with_aliases: bool = True, params: dict[str, Any] | None = None
) -> list[PromptRecord]:
    connection = session.connection()
    rows = connection.execute(stmt, params or {}).all()
    aliases: dict[int, list[str]] = {}
    if with_aliases and rows:
        ids = [row.id for row in rows]
        for start in range(0, len(ids), ALIAS_BATCH):  # PostgreSQL binds at most 65,535 parameters per statement
            batch = ids[start : start + ALIAS_BATCH]
            for prompt_id, alias in connection.execute(
                select(_alias.c.prompt_id, _alias.c.alias).where(_alias.c.prompt_id.in_(batch))
            ):
                aliases.setdefault(prompt_id, []).append(alias)
    return [_to_record(row, aliases.get(row.id, ())) for row in rows]


def find_by_content(session: Session, *, name: str, sha256: str) -> PromptRecord | None:
    stmt = _record_query().where(PromptRow.name == name, PromptRow.sha256 == sha256)
    found = _records(session, stmt)
    return found[0] if found else None


def insert_next_version(
    session: Session, *, values: dict[str, Any], model: BaseModelRecord, targets: Sequence[dict[str, Any]]
) -> tuple[PromptRecord, bool]:
    """Insert a prompt row as the next version of its name, with a ``prompt_target`` row per compression it was
    trained on (``targets``: compression, method, bits, sparsity, group_size, recovery), and point ``latest`` at it;
    return ``(record, created)``.

    ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: a lost race on (name, version) or a duplicate (name, sha256)
    returns no row instead of aborting the transaction, so no savepoint is needed. Idempotent: the same content
    under the same name returns the existing version. Under the name's lock a new version is the newest and nothing
    else points at it yet, so ``latest`` moves to it. On PostgreSQL the three inserts are one statement (data-modifying
    CTEs): the name's lock is held for that statement and the commit only.
    """
    name, sha = values["name"], values["sha256"]
    lock_name(session, name)  # concurrent publishers of one name queue here instead of colliding on a version
    next_version = (
        select(func.coalesce(func.max(_prompt.c.version), 0) + 1).where(_prompt.c.name == name).scalar_subquery()
    )
    statement = (
        _insert(session, _prompt).values(**values, version=next_version).on_conflict_do_nothing()
        .returning(_prompt.c.id, _prompt.c.version)
    )
    combined = session.get_bind().dialect.name == "postgresql"
    if combined:
        statement = _with_targets_and_latest(statement, values, targets)
    for attempt in range(MAX_VERSION_ATTEMPTS):
        inserted = session.execute(statement).first()
        if inserted is not None:
            if not combined:
                shared = {"prompt_id": inserted.id, "version": inserted.version, "deprecated": False,
                          **{key: values[key] for key in ("base_model_id", "dataset", "task", "name")}}
                session.execute(insert(_target), [{**shared, **target} for target in targets])
                set_alias(session, name=name, alias=LATEST, prompt_id=inserted.id)
            row = {**values, "id": inserted.id, "version": inserted.version, "model_name": model.name,
                   "model_fingerprint": model.fingerprint}
            return _to_record(SimpleNamespace(**row)), True
        existing = find_by_content(session, name=name, sha256=sha)
        if existing is not None:
            return existing, False
        time.sleep(random.uniform(0.0, 0.002 * min(attempt + 1, 25)))
    raise DatabaseError(f"could not assign a version to {name!r} after {MAX_VERSION_ATTEMPTS} attempts")


TARGET_KEYS = tuple(TARGET_TYPES)  # a prompt_target row's own columns


def _with_targets_and_latest(inserting: Any, values: dict[str, Any], targets: Sequence[dict[str, Any]]) -> Select:
    """PostgreSQL: the prompt insert, its ``prompt_target`` rows and the ``latest`` alias as one statement that
    answers the new row's (id, version), or nothing when the insert did nothing."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    inserted = inserting.cte("inserted")
    trained = sa_values(
        column("compression", String), column("method", String), column("bits", Integer), column("sparsity", Float),
        column("group_size", Integer), column("recovery", Float), name="trained",
    ).data([tuple(target[key] for key in TARGET_KEYS) for target in targets])
    shared = [literal(values[key], _target.c[key].type) for key in ("base_model_id", "dataset", "task", "name")]
    rows = insert(_target).from_select(
        ["prompt_id", "version", "deprecated", "base_model_id", "dataset", "task", "name", *TARGET_KEYS],
        select(inserted.c.id, inserted.c.version, literal(False), *shared,
               *(cast(trained.c[key], _target.c[key].type) for key in TARGET_KEYS))  # a column of NULLs is text
        .select_from(inserted.join(trained, true())),
    ).cte("target_rows")
    latest = pg_insert(_alias).from_select(
        ["name", "alias", "prompt_id", "updated_at"],
        select(literal(values["name"], _alias.c.name.type), literal(LATEST, _alias.c.alias.type), inserted.c.id,
               literal(utcnow(), _alias.c.updated_at.type)).select_from(inserted),
    )
    latest = latest.on_conflict_do_update(
        index_elements=["name", "alias"],
        set_={"prompt_id": latest.excluded.prompt_id, "updated_at": latest.excluded.updated_at},
    ).cte("latest")
    return select(inserted.c.id, inserted.c.version).add_cte(rows, latest)


def aliases_of(session: Session, *, prompt_id: int) -> tuple[str, ...]:
    rows = session.connection().execute(select(_alias.c.alias).where(_alias.c.prompt_id == prompt_id))
    return tuple(sorted(rows.scalars()))


def lock_name(session: Session, name: str) -> None:
    """On PostgreSQL, a transaction-scoped advisory lock on ``name`` (re-entrant; SQLite's ``BEGIN IMMEDIATE``
    already serialises writers). Taken before a version is chosen, a publisher never computes the version another
    one is about to commit, so no insert waits on the unique index only to conflict and retry."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(name, 0))))


def publish_gate_held(session: Session, *, exclusive: bool = False) -> bool:
    """On PostgreSQL, take the publish gate for the rest of the transaction and return True; elsewhere False.

    A publish holds it shared from before its upload until its commit, and gc holds it alone while it re-checks and
    deletes an orphan. So gc never deletes an object a publish has uploaded but not yet committed (gc waits for the
    commit, then sees the reference), and a publish that starts meanwhile uploads after the deletion. A publish that
    holds the gate needs no check of its object after committing (an S3 round trip per publish otherwise)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    session.execute(select(lock(PUBLISH_GATE)))
    return True


def refresh_latest(session: Session, *, name: str) -> None:
    """Point ``name@latest`` at the newest version that is not deprecated (or remove it when none is left).

    Publish and deprecate both end here, one name at a time: on PostgreSQL a transaction-scoped advisory lock on the
    name serialises them (SQLite's write transactions already are, by ``BEGIN IMMEDIATE``), and under READ COMMITTED
    the query after the lock sees every concurrent publish or deprecate that committed while this one waited. So
    the last to commit decides from the full picture, and ``latest`` never lands on a deprecated or older version.
    """
    lock_name(session, name)
    newest = session.execute(
        select(_prompt.c.id).where(_prompt.c.name == name, _prompt.c.deprecated.is_(False))
        .order_by(_prompt.c.version.desc()).limit(1)
    ).scalar()
    if newest is None:
        session.execute(delete(AliasRow).where(AliasRow.name == name, AliasRow.alias == LATEST))
    else:
        set_alias(session, name=name, alias=LATEST, prompt_id=newest)


def set_alias(session: Session, *, name: str, alias: str, prompt_id: int) -> None:
    stmt = _insert(session, _alias).values(name=name, alias=alias, prompt_id=prompt_id, updated_at=utcnow())
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name", "alias"],
            set_={"prompt_id": stmt.excluded.prompt_id, "updated_at": stmt.excluded.updated_at},
        )
    )


def get_prompt(session: Session, *, ref: PromptRef) -> PromptRecord:
    """The prompt a reference names, or ``NotFound`` saying which part did not match."""
    stmt = _record_query()
    if ref.sha_prefix:
        upper = ref.sha_prefix + "g"  # 'g' sorts after every hex digit: a range scan on the sha256 index
        stmt = stmt.where(PromptRow.sha256 >= ref.sha_prefix, PromptRow.sha256 < upper).order_by(PromptRow.id)
        found = _records(session, stmt.limit(50))
        if not found:
            raise NotFound(f"no prompt has a sha256 starting with {ref.sha_prefix}")
        if len({r.sha256 for r in found}) > 1:  # the same bytes under several names are one object
            raise NotFound(f"sha256 prefix {ref.sha_prefix} is ambiguous; give more characters or NAME:VERSION")
        return found[0]
    if ref.version is not None:
        found = _records(session, stmt.where(PromptRow.name == ref.name, PromptRow.version == ref.version))
        if not found:
            _raise_unknown_name(session, ref.name)
            raise NotFound(f"{ref.name} has no version {ref.version}")
        return found[0]
    stmt = stmt.join(_alias, _alias.c.prompt_id == _prompt.c.id).where(
        _alias.c.name == ref.name, _alias.c.alias == ref.alias
    )
    found = _records(session, stmt)
    if not found:
        _raise_unknown_name(session, ref.name)
        raise NotFound(f"{ref.name} has no alias {ref.alias!r}")
    return found[0]


def _raise_unknown_name(session: Session, name: str | None) -> None:
    if session.execute(select(PromptRow.id).where(PromptRow.name == name).limit(1)).first() is None:
        raise NotFound(f"no prompt named {name!r}")


def list_prompts(
    session: Session,
    *,
    model: str | None = None,
    methods: Sequence[str] | None = None,
    bits: int | None = None,
    dataset: str | None = None,
    include_deprecated: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> list[PromptRecord]:
    stmt = _record_query()
    if model:
        stmt = stmt.where(BaseModelRow.name == model)
    if methods:
        stmt = stmt.where(PromptRow.method.in_(list(methods)))
    if bits is not None:
        stmt = stmt.where(PromptRow.bits == bits)
    if dataset:
        stmt = stmt.where(PromptRow.dataset == dataset)
    if not include_deprecated:
        stmt = stmt.where(PromptRow.deprecated.is_(False))
    stmt = stmt.order_by(PromptRow.name, PromptRow.version)
    if limit:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return _records(session, stmt)


def top_prompts(session: Session, *, target: Target, model_id: int, fingerprint: str, limit: int) -> list[PromptRecord]:
    """The first ``limit`` candidates in the matcher's metadata order, read without scanning the whole class."""
    def rows(statement: Select, size: int) -> list[PromptRecord]:
        _, params = ranking.shape_and_params(target, model_id, fingerprint, size)
        return _records(session, statement, with_aliases=False, params=params)

    own = ranking.own_exact_statement(_RECORD_QUERY, target.shape)
    found = distinct_head(lambda size: rows(own, size), limit, key=_record_id)
    if len(found) >= limit:
        return found
    whole = ranking.class_statement(_RECORD_QUERY, target.shape)
    return distinct_head(lambda size: rows(whole, size), limit, key=_record_id)


def _record_id(record: PromptRecord) -> int:
    return record.id


class Reads(Protocol):
    """What ``Registry.candidates`` reads; ``SessionReads`` (this module), ``lite.SqliteReader`` and
    ``postgres_reads.PostgresReader`` answer alike (the first two through ``lite.gather_by_parts``)."""

    def base_model(self, name: str) -> BaseModelRecord | None: ...
    def gather(self, *, target: Target, base: BaseModelRecord, limit: int,
               eval_key: str | None) -> tuple[list[Evidence], list[PromptRecord]]: ...


@dataclass(frozen=True)
class SessionReads:
    """``Reads`` over a SQLAlchemy session (any backend)."""

    session: Session

    def base_model(self, name: str) -> BaseModelRecord | None:
        return get_base_model(self.session, name=name)

    def evidence(self, *, target_model: str, target_compression: str, target_key: str | None,
                 target_kinds: Sequence[str] | None, eval_key: str | None) -> list[Evidence]:
        return evidence_for(self.session, target_model=target_model, target_compression=target_compression,
                            target_key=target_key, target_kinds=target_kinds, eval_key=eval_key)

    def top_prompts(self, *, target: Target, model_id: int, fingerprint: str, limit: int) -> list[PromptRecord]:
        return top_prompts(self.session, target=target, model_id=model_id, fingerprint=fingerprint, limit=limit)

    def prompts_by_id(self, ids: set[int]) -> list[PromptRecord]:
        return prompts_by_id(self.session, ids=ids)

    def gather(self, *, target: Target, base: BaseModelRecord, limit: int,
               eval_key: str | None) -> tuple[list[Evidence], list[PromptRecord]]:
        return gather_by_parts(self, target=target, base=base, limit=limit, eval_key=eval_key)


def prompts_by_id(session: Session, *, ids: set[int]) -> list[PromptRecord]:
    if not ids:
        return []
    stmt = _record_query().where(PromptRow.id.in_(sorted(ids)), PromptRow.deprecated.is_(False)).order_by(PromptRow.id)
    return _records(session, stmt, with_aliases=False)


def deprecate(session: Session, *, prompt: PromptRecord) -> None:
    """Mark a version deprecated and let ``latest`` move off it (``refresh_latest``)."""
    row = session.get(PromptRow, prompt.id)
    if row is None:
        raise NotFound(f"{prompt.ref} disappeared")
    row.deprecated = True
    session.add(row)
    session.execute(update(_target).where(_target.c.prompt_id == prompt.id).values(deprecated=True))
    session.flush()
    refresh_latest(session, name=prompt.name)


def referenced_shas(session: Session) -> set[str]:
    return set(session.execute(select(PromptRow.sha256).distinct()).scalars())


def referenced_state_shas(session: Session) -> set[str]:
    """The optimizer state objects prompts name (``training.state.sha256``, checked when they were published)."""
    shas = set()
    naming = select(PromptRow.training).where(cast(PromptRow.training, String).contains('"state"'))
    for training in session.execute(naming).scalars():
        state = training.get("state") if isinstance(training, dict) else None
        if isinstance(state, dict) and isinstance(state.get("sha256"), str):
            shas.add(state["sha256"])
    return shas


def is_referenced(session: Session, *, sha256: str) -> bool:
    return session.execute(select(PromptRow.id).where(PromptRow.sha256 == sha256).limit(1)).first() is not None


# --- evidence ----------------------------------------------------------------------------------------------------


def add_evidence(
    session: Session, *, prompt_id: int, target_model: str, target_compression: str, measurement: Measurement,
    accepted: bool,
) -> None:
    target = session.execute(select(BaseModelRow).where(BaseModelRow.name == target_model)).scalars().first()
    if target is None:
        raise NotFound(f"unknown target model {target_model!r}")
    session.add(
        TransferResultRow(
            prompt_id=prompt_id, target_model_id=target.id, target_compression=target_compression,
            eval_dataset=measurement.eval_dataset, eval_tokens=measurement.eval_tokens,
            ppl_without=measurement.ppl_without, ppl_with=measurement.ppl_with, ppl_full=measurement.ppl_full,
            relative_gain=measurement.relative_gain, accepted=accepted, target_key=measurement.target_key,
            target_source=measurement.target_source, eval_key=measurement.eval_key,
            eval_data=measurement.eval_data.to_dict() if measurement.eval_data else None,
        )
    )


_result = TransferResultRow.__table__
_EVIDENCE_QUERY = (
    select(_result, _base.c.name.label("target_name"), _prompt.c.name.label("prompt_name"), _prompt.c.version)
    .select_from(
        _result.join(_base, _result.c.target_model_id == _base.c.id).join(_prompt, _result.c.prompt_id == _prompt.c.id)
    )
    .where(_base.c.name == bindparam("target_model"))
    .order_by(_result.c.measured_at, _result.c.id)
)


@lru_cache(maxsize=64)
def _evidence_statement(
    by_compression: bool, by_key: bool, kinds: tuple[str, ...] | None, by_eval_key: bool
) -> Select:
    """The evidence query for one combination of filters, built once (values are bound parameters)."""
    statement = _EVIDENCE_QUERY
    if by_compression:
        statement = statement.where(_result.c.target_compression == bindparam("target_compression"))
    if by_key:
        statement = statement.where(_result.c.target_key == bindparam("target_key"))
    elif kinds is not None:
        statement = statement.where(
            or_(*[_result.c.target_key == kind for kind in kinds if kind == LEGACY_KEY],
                *[_result.c.target_key.startswith(f"{kind}:") for kind in kinds if kind != LEGACY_KEY])
        )
    if by_eval_key:
        statement = statement.where(_result.c.eval_key == bindparam("eval_key"))
    return statement


def evidence_for(
    session: Session,
    *,
    target_model: str,
    target_compression: str | None = None,
    target_key: str | None = None,
    target_kinds: Sequence[str] | None = None,
    eval_key: str | None = None,
) -> list[Evidence]:
    """Measurements on ``target_model``, oldest first; optionally only one compression of it, one target identity
    (``target_key``) or identities of some kinds (``target_kinds``), and one evaluation data set (``eval_key``)."""
    statement = _evidence_statement(
        target_compression is not None, target_key is not None,
        tuple(target_kinds) if target_key is None and target_kinds is not None else None, eval_key is not None,
    )
    values = {"target_model": target_model, "target_compression": target_compression, "target_key": target_key,
              "eval_key": eval_key}
    rows = session.connection().execute(statement, {k: v for k, v in values.items() if v is not None})
    return [
        Evidence(
            prompt_id=row.prompt_id, target_model=row.target_name, target_compression=row.target_compression,
            measurement=Measurement(
                row.ppl_without, row.ppl_with, row.eval_dataset, row.eval_tokens, target_key=row.target_key,
                eval_data=EvalData.from_dict(row.eval_data) if row.eval_data else None, target_source=row.target_source,
                ppl_full=row.ppl_full,
            ),
            accepted=row.accepted, measured_at=row.measured_at, prompt_ref=f"{row.prompt_name}:{row.version}",
        )
        for row in rows
    ]


# --- API tokens --------------------------------------------------------------------------------------------------


def _to_token(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(
        public_id=row.public_id, name=row.name, scope=row.scope, created_at=_aware(row.created_at),
        created_by=row.created_by, expires_at=_aware(row.expires_at), revoked_at=_aware(row.revoked_at),
    )


def _aware(moment: Any) -> Any:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def add_token(session: Session, *, token: NewToken, name: str, scope: str, created_by: str,
              expires_at: datetime | None) -> TokenRecord:
    row = ApiTokenRow(public_id=token.public_id, secret_sha256=token.secret_sha256, name=name, scope=scope,
                      created_by=created_by, expires_at=expires_at)
    session.add(row)
    session.flush()
    return _to_token(row)


def find_token(session: Session, *, public_id: str) -> tuple[TokenRecord, str] | None:
    """The token with this public id and the stored sha256 of its secret."""
    row = session.execute(select(ApiTokenRow).where(ApiTokenRow.public_id == public_id)).scalars().first()
    return (_to_token(row), row.secret_sha256) if row is not None else None


def list_tokens(session: Session) -> list[TokenRecord]:
    rows = session.execute(select(ApiTokenRow).order_by(ApiTokenRow.id)).scalars().all()
    return [_to_token(row) for row in rows]


def revoke_token(session: Session, *, public_id: str) -> TokenRecord:
    row = session.execute(select(ApiTokenRow).where(ApiTokenRow.public_id == public_id)).scalars().first()
    if row is None:
        raise NotFound(f"no API token with id {public_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
    return _to_token(row)
