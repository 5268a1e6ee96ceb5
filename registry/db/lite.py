"""Resolve's reads as SQL text run through a plain DB-API connection: no SQLAlchemy, no ORM on the hot path.

Importing SQLAlchemy and SQLModel costs more than a cold resolve may take in all (measured in
``bench/cli_latency.py``), and its ORM layer costs more per query than PostgreSQL takes to answer one. A read-only
resolve needs four queries: the target model, its evidence, the head of the ranking and the prompts measured on it.
``SqliteReader`` runs them with ``sqlite3`` in one read transaction; ``db.postgres_reads`` runs them with psycopg as
one statement. The ranking's ORDER BY is ``registry.rank_rules`` rendered as SQL text by ``TextOps`` (the third
interpreter of the rules, after the matcher and ``db/ranking``), for either backend. Anything else (a
missing file, another schema revision, any write) goes through the SQLAlchemy path, which upgrades or refuses.
``tests/test_lite_reads.py`` checks that every path answers every target identically.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from .. import rank_rules
from ..compression import FULL_PRECISION_BITS
from ..identity import LEGACY, SPEC_KINDS, EvalData
from ..matcher import Target
from ..rank_rules import Shape, distinct_head
from ..records import BaseModelRecord, Evidence, Measurement, PromptRecord
from .revision import SCHEMA_REVISION

_COLUMNS = {
    "model": "t.base_model_id", "method": "t.method", "bits": "t.bits", "group_size": "t.group_size",
    "sparsity": "t.sparsity", "dataset": "t.dataset", "task": "t.task", "recovery": "t.recovery",
    "version": "t.version", "name": "t.name",
}
RECORD_COLUMNS = (
    "p.id, p.name, p.version, b.name, b.fingerprint, p.compression, p.dataset, p.task, p.num_virtual_tokens,"
    " p.hidden_size, p.dtype, p.sha256, p.size_bytes, p.object_key, p.metrics, p.training, p.created_at,"
    " p.created_by, p.deprecated"
)
RECORD_FROM = " FROM prompt AS p JOIN base_model AS b ON p.base_model_id = b.id"
EVIDENCE_COLUMNS = (
    "t.prompt_id, bt.name, t.target_compression, t.ppl_without, t.ppl_with, t.eval_dataset, t.eval_tokens,"
    " t.target_key, t.eval_data, t.target_source, t.ppl_full, t.accepted, t.measured_at, p.name, p.version, t.id"
)
EVIDENCE_FROM = (
    " FROM transfer_result AS t JOIN base_model AS bt ON t.target_model_id = bt.id"
    " JOIN prompt AS p ON t.prompt_id = p.id"
    " WHERE bt.name = :target_model AND t.target_compression = :target_compression"
)
_RECORD = f"SELECT {RECORD_COLUMNS}{RECORD_FROM}"


class Sql(str):
    """A piece of SQL text (as opposed to a value the rules compare with, which becomes a parameter)."""


class TextOps:
    """``rank_rules.Ops`` as SQL text. The target's values are named parameters; the rules' own constants are
    parameters collected in ``params`` too, or, with ``inline``, SQL literals (a shorter statement)."""

    def __init__(self, inline: bool = False) -> None:
        self.params: dict[str, Any] = {}
        self.inline = inline

    def column(self, name: str) -> Sql:
        return Sql(_COLUMNS[name])

    def param(self, name: str) -> Sql:
        return Sql(f":t_{name}")

    def const(self, value: Any) -> Sql:
        if self.inline:
            return _literal(value)
        key = f"c{len(self.params)}"
        self.params[key] = value
        return Sql(f":{key}")

    def eq(self, left: Sql, right: Sql) -> Sql:
        return Sql(f"({left} = {right})")

    def near(self, left: Sql, right: Sql) -> Sql:
        return Sql(f"(abs({left} - {right}) < 1e-9)")

    def greater(self, left: Sql, right: Sql) -> Sql:
        return Sql(f"({left} > {right})")

    def is_in(self, value: Sql, options: Sequence[str]) -> Sql:
        return Sql(f"({value} IN ({', '.join(self.const(option) for option in options)}))")

    def is_null(self, value: Sql) -> Sql:
        return Sql(f"({value} IS NULL)")

    def all_of(self, conditions: Sequence[Sql]) -> Sql:
        return Sql("(" + " AND ".join(conditions) + ")" if conditions else "(1 = 1)")

    def case(self, whens: Sequence[tuple[Sql, Any]], otherwise: Any) -> Sql:
        branches = " ".join(f"WHEN {condition} THEN {self._value(then)}" for condition, then in whens)
        return Sql(f"(CASE {branches} ELSE {self._value(otherwise)} END)")

    def severity(self) -> Sql:
        return Sql(f"(coalesce(t.bits, {FULL_PRECISION_BITS}) * (1.0 - coalesce(t.sparsity, 0.0)))")

    def distance(self, left: Sql, right: Sql) -> Sql:
        return Sql(f"abs({left} - {right})")

    def descending(self, value: Sql) -> Sql:
        return Sql(f"{value} DESC")

    def _value(self, value: Any) -> Sql:
        return value if isinstance(value, Sql) else self.const(value)


@dataclass(frozen=True)
class RankSql:
    """The ranking rendered for one target shape: the condition of the target model's own exact matches, the two
    orders, and the constants they bind (callers copy them)."""

    exact: str
    own_order: str
    class_order: str
    constants: dict[str, Any]


def _literal(value: Any) -> Sql:
    """A constant of the rules (a method or family name, a tier, a flag) as SQL."""
    if isinstance(value, bool):
        return Sql("TRUE" if value else "FALSE")
    if isinstance(value, int | float):
        return Sql(repr(value))
    if isinstance(value, str):
        return Sql("'" + value.replace("'", "''") + "'")
    raise TypeError(f"no SQL literal for {value!r}")


@lru_cache(maxsize=512)
def rank_sql(shape: Shape, inline: bool = False) -> RankSql:
    ops = TextOps(inline)
    return RankSql(rank_rules.exact(shape, ops), ", ".join(rank_rules.own_exact_order(shape, ops)),
                   ", ".join(rank_rules.order(shape, ops)), ops.params)


@lru_cache(maxsize=512)
def _statements(shape: Shape) -> tuple[str, str, dict[str, Any]]:
    """(own exact matches, whole class) for one target shape on SQLite, and the constants they bind."""
    rank = rank_sql(shape)
    ranked = f"{_RECORD} JOIN prompt_target AS t ON t.prompt_id = p.id"
    own = (f"{ranked} WHERE t.id IN (SELECT t.id FROM prompt_target AS t WHERE t.base_model_id = :t_model"
           f" AND {rank.exact} AND t.deprecated = 0 ORDER BY {rank.own_order} LIMIT :limit) ORDER BY {rank.own_order}")
    whole = (f"{ranked} WHERE b.fingerprint = :fingerprint AND t.deprecated = 0 ORDER BY {rank.class_order}"
             " LIMIT :limit")
    return own, whole, rank.constants


def sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL; None for anything else (options, memory, other backends)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or len(url) == len(prefix) or ":memory:" in url:
        return None
    return Path(url[len(prefix):])


def evidence_filters(*, target_key: str | None, target_kinds: Sequence[str] | None,
                     eval_key: str | None) -> tuple[str, dict[str, Any]]:
    """The evidence query's filters beyond model and compression (``crud.evidence_for``'s), as SQL and values."""
    sql, params = "", {}
    if target_key is not None:
        sql, params["target_key"] = " AND t.target_key = :target_key", target_key
    elif target_kinds is not None:
        clauses = []
        for i, kind in enumerate(target_kinds):
            params[f"kind{i}"] = kind if kind == LEGACY else f"{kind}:"
            clauses.append(f"t.target_key = :kind{i}" if kind == LEGACY
                           else f"substr(t.target_key, 1, length(:kind{i})) = :kind{i}")
        sql += " AND (" + " OR ".join(clauses or ["1 = 0"]) + ")"
    if eval_key is not None:
        sql, params["eval_key"] = sql + " AND t.eval_key = :eval_key", eval_key
    return sql, params


def record_from_row(row: Sequence[Any]) -> PromptRecord:
    """A ``RECORD_COLUMNS`` row: JSON and times as SQLite's text or as PostgreSQL's JSON values."""
    return PromptRecord(
        id=row[0], name=row[1], version=row[2], model=row[3], model_fingerprint=row[4], compression=row[5],
        dataset=row[6], task=row[7], num_virtual_tokens=row[8], hidden_size=row[9], dtype=row[10],
        sha256=row[11], size_bytes=row[12], object_key=row[13], metrics=_json(row[14]) or {},
        training=_json(row[15]) or {}, created_at=_time(row[16]), created_by=row[17], deprecated=bool(row[18]),
    )


def evidence_from_row(row: Sequence[Any]) -> Evidence:
    """An ``EVIDENCE_COLUMNS`` row."""
    data = _json(row[8])  # SQLAlchemy's JSON type writes None as the JSON null
    return Evidence(
        prompt_id=row[0], target_model=row[1], target_compression=row[2],
        measurement=Measurement(row[3], row[4], row[5], row[6], target_key=row[7],
                                eval_data=EvalData.from_dict(data) if data else None, target_source=row[9],
                                ppl_full=row[10]),
        accepted=bool(row[11]), measured_at=_time(row[12]), prompt_ref=f"{row[13]}:{row[14]}",
    )


class SqliteReader:
    """One read transaction on an embedded SQLite registry whose schema is the one this code expects."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    @classmethod
    def open(cls, path: Path) -> SqliteReader | None:
        """A reader, or None when the file is missing or its schema is not current (the full path handles both)."""
        if not path.is_file():
            return None
        try:
            connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            connection.execute("BEGIN")
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            row = None
        if row is None or row[0] != SCHEMA_REVISION:
            connection.close()
            return None
        return cls(connection)

    def close(self) -> None:
        self.connection.close()

    def base_model(self, name: str) -> BaseModelRecord | None:
        row = self.connection.execute(
            "SELECT id, name, fingerprint, hidden_size, vocab_size, architecture, source, created_at"
            " FROM base_model WHERE name = ?", (name,),
        ).fetchone()
        if row is None:
            return None
        id_, name, fingerprint, hidden, vocab, architecture, source, created = row
        return BaseModelRecord(name=name, fingerprint=fingerprint, hidden_size=hidden, vocab_size=vocab,
                               architecture=architecture, source=source, created_at=_time(created), id=id_)

    def evidence(self, *, target_model: str, target_compression: str, target_key: str | None,
                 target_kinds: Sequence[str] | None, eval_key: str | None) -> list[Evidence]:
        """``crud.evidence_for`` for one compression of one model, oldest first."""
        filters, params = evidence_filters(target_key=target_key, target_kinds=target_kinds, eval_key=eval_key)
        params.update(target_model=target_model, target_compression=target_compression)
        sql = f"SELECT {EVIDENCE_COLUMNS}{EVIDENCE_FROM}{filters} ORDER BY t.measured_at, t.id"
        return [evidence_from_row(row) for row in self.connection.execute(sql, params).fetchall()]

    def top_prompts(self, *, target: Target, model_id: int, fingerprint: str, limit: int) -> list[PromptRecord]:
        """``crud.top_prompts``: the head of the metadata order (the own exact matches when they fill it)."""
        own, whole, constants = _statements(target.shape)
        params = {**{f"t_{k}": v for k, v in target.rank_params.items()}, "t_model": model_id, **constants,
                  "fingerprint": fingerprint}

        def head(sql: str) -> list[PromptRecord]:
            return distinct_head(lambda size: self._records(sql, {**params, "limit": size}), limit,
                                 key=lambda record: record.id)

        found = head(own)
        return found if len(found) >= limit else head(whole)

    def prompts_by_id(self, ids: set[int]) -> list[PromptRecord]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        return self._records(f"{_RECORD} WHERE p.id IN ({marks}) AND p.deprecated = 0 ORDER BY p.id", sorted(ids))

    def _records(self, sql: str, params: dict[str, Any] | list[Any]) -> list[PromptRecord]:
        return [record_from_row(row) for row in self.connection.execute(sql, params).fetchall()]

    def gather(self, *, target: Target, base: BaseModelRecord, limit: int,
               eval_key: str | None) -> tuple[list[Evidence], list[PromptRecord]]:
        return gather_by_parts(self, target=target, base=base, limit=limit, eval_key=eval_key)


class PartReads(Protocol):
    """Resolve's read queries one by one (``SqliteReader`` here, ``crud.SessionReads``), for ``gather_by_parts``."""

    def evidence(self, *, target_model: str, target_compression: str, target_key: str | None,
                 target_kinds: Sequence[str] | None, eval_key: str | None) -> list[Evidence]: ...
    def top_prompts(self, *, target: Target, model_id: int, fingerprint: str, limit: int) -> list[PromptRecord]: ...
    def prompts_by_id(self, ids: set[int]) -> list[PromptRecord]: ...


def gather_by_parts(reads: PartReads, *, target: Target, base: BaseModelRecord, limit: int,
                    eval_key: str | None) -> tuple[list[Evidence], list[PromptRecord]]:
    """What ``Registry.candidates`` ranks, from a reader's four queries: the evidence measured on the target, and
    the head of the metadata order (``limit`` plus one per measured prompt) with every measured prompt added."""
    spec = target.spec
    evidence = (
        reads.evidence(target_model=target.model, target_compression=spec.canonical, target_key=target.identity,
                       target_kinds=None if target.identity else SPEC_KINDS, eval_key=eval_key)
        if spec is not None else []
    )
    measured = {e.prompt_id for e in evidence}
    assert base.id is not None
    prompts = reads.top_prompts(target=target, model_id=base.id, fingerprint=base.fingerprint,
                                limit=limit + len(measured))
    prompts += reads.prompts_by_id(measured - {p.id for p in prompts})
    return evidence, prompts


def _json(value: Any) -> Any:
    """SQLite returns JSON columns as text; PostgreSQL's JSON arrives parsed."""
    return json.loads(value) if isinstance(value, str) else value


def _time(value: str | None) -> datetime | None:
    """SQLite's stored ISO text, or the ISO text of a PostgreSQL timestamp inside JSON."""
    return datetime.fromisoformat(value) if value else None
