"""Resolve's reads on PostgreSQL in one statement and one round trip, through psycopg without SQLAlchemy.

Through the ORM a resolve costs two statements (the evidence, then the head of the ranking sized by it) and most of
its time in Python building and reading them. Here one statement returns everything ``Registry.candidates`` ranks,
as JSON the driver parses in C: the evidence measured on the target, the head of the target model's own exact
matches (``lite.rank_sql``: the ranking rules as SQL text), the head of the whole fingerprint class only when the
own matches run out (a branch behind a condition PostgreSQL checks once, before it reads anything of the class),
and the measured prompts. Each head holds ``limit`` plus one row per measured prompt, the count the statement takes
from its own evidence. Connections are reused and the statement, the same text for every target of a shape, is
prepared server-side on first use. A second statement is sent only when a multi-target prompt's repeated rows leave
a head short (the rows asked for double, as in ``rank_rules.distinct_head``).

Connections come from ``db.postgres_pool``, which declines a schema this code does not expect.
``tests/test_lite_reads.py`` checks that this path answers every target as the SQLAlchemy path does.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from ..errors import DatabaseError
from ..identity import SPEC_KINDS
from ..matcher import Target
from ..rank_rules import Shape
from ..records import BaseModelRecord, Evidence, PromptRecord
from .lite import (
    EVIDENCE_COLUMNS, EVIDENCE_FROM, RECORD_COLUMNS, evidence_filters, evidence_from_row, rank_sql, record_from_row,
)
from .postgres_pool import first_line

_EVIDENCE_NAMES = ("prompt_id, target_name, target_compression, ppl_without, ppl_with, eval_dataset, eval_tokens,"
                   " target_key, eval_data, target_source, ppl_full, accepted, measured_at, prompt_name,"
                   " prompt_version, id")
OWN, CLASS, MEASURED = 1, 2, 3  # the parts of the statement's record rows
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")  # the shared SQL text's ``:name`` parameters; psycopg's are %(name)s


@lru_cache(maxsize=512)
def gather_statement(shape: Shape, evidence_filter: str | None) -> str:
    """The one statement for a target shape and evidence filter (None: the target names no compression, so it has
    no evidence). It answers the evidence rows and the record rows, each tagged with its part and place.

    Each head is the ``prompt_id`` column of the ranking's index in rank order (an index-only scan), kept in order
    by ``unnest(ARRAY(...)) WITH ORDINALITY``; the class head's branch is gated by a condition on the own head
    alone, which PostgreSQL checks once before it reads anything of the class."""
    rank = rank_sql(shape, inline=True)
    evidence = f"SELECT {EVIDENCE_COLUMNS}{EVIDENCE_FROM}" + (" AND false" if evidence_filter is None
                                                               else evidence_filter)
    size = "(SELECT n * :factor FROM needed)"
    own_ids = (f"SELECT t.prompt_id FROM prompt_target AS t WHERE t.base_model_id = :t_model AND {rank.exact}"
               f" AND t.deprecated = false ORDER BY {rank.own_order} LIMIT {size}")
    class_ids = ("SELECT t.prompt_id FROM prompt_target AS t WHERE t.base_model_id IN"
                 f" (SELECT id FROM base_model WHERE fingerprint = :fingerprint) AND t.deprecated = false"
                 f" ORDER BY {rank.class_order} LIMIT {size}")
    sql = (
        f"WITH ev({_EVIDENCE_NAMES}) AS ({evidence}),"
        " needed AS (SELECT :limit + count(DISTINCT prompt_id) AS n FROM ev),"
        f" own AS (SELECT * FROM unnest(ARRAY({own_ids})) WITH ORDINALITY AS o(id, pos)),"
        f" picked AS (SELECT {OWN} AS part, id, pos FROM own"
        f" UNION ALL SELECT {CLASS}, id, pos FROM unnest(ARRAY({class_ids})) WITH ORDINALITY AS c(id, pos)"
        f" WHERE (SELECT count(DISTINCT id) FROM own) < (SELECT n FROM needed) AND (SELECT count(*) FROM own) < {size}"
        f" UNION ALL SELECT DISTINCT {MEASURED}, prompt_id, prompt_id FROM ev)"
        " SELECT (SELECT json_agg(ev ORDER BY measured_at, id) FROM ev),"
        f" (SELECT json_agg(json_build_array(k.part, {RECORD_COLUMNS}) ORDER BY k.part, k.pos)"
        f" FROM picked AS k JOIN prompt AS p ON p.id = k.id JOIN base_model AS b ON p.base_model_id = b.id"
        f" WHERE k.part < {MEASURED} OR p.deprecated = false)"
    )
    return _NAMED.sub(r"%(\1)s", sql)


def gather_query(*, target: Target, base: BaseModelRecord, limit: int,
                 eval_key: str | None) -> tuple[str, dict[str, Any]]:
    """The statement ``PostgresReader.gather`` sends first, and its values (``factor`` 1)."""
    spec = target.spec
    evidence_filter, params = None, {}
    if spec is not None:
        evidence_filter, params = evidence_filters(
            target_key=target.identity, target_kinds=None if target.identity else SPEC_KINDS, eval_key=eval_key)
    params.update({f"t_{k}": v for k, v in target.rank_params.items()})
    params.update(t_model=base.id, fingerprint=base.fingerprint, limit=limit, target_model=target.model,
                  target_compression=spec.canonical if spec is not None else None, factor=1)
    return gather_statement(target.shape, evidence_filter), params


class PostgresReader:
    """Resolve's reads on one connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def base_model(self, name: str) -> BaseModelRecord | None:
        row = self._one(
            "SELECT id, name, fingerprint, hidden_size, vocab_size, architecture, source, created_at"
            " FROM base_model WHERE name = %(name)s", {"name": name},
        )
        if row is None:
            return None
        id_, name, fingerprint, hidden, vocab, architecture, source, created = row
        return BaseModelRecord(name=name, fingerprint=fingerprint, hidden_size=hidden, vocab_size=vocab,
                               architecture=architecture, source=source, created_at=created, id=id_)

    def gather(self, *, target: Target, base: BaseModelRecord, limit: int,
               eval_key: str | None) -> tuple[list[Evidence], list[PromptRecord]]:
        """``lite.gather_by_parts``'s answer from one statement (more only while repeats leave a head short)."""
        sql, params = gather_query(target=target, base=base, limit=limit, eval_key=eval_key)
        factor = 1
        while True:
            evidence_rows, record_rows = self._one(sql, {**params, "factor": factor})
            evidence = [evidence_from_row(list(row.values())) for row in evidence_rows or ()]  # objects, in order
            parts: dict[int, list[list[Any]]] = {OWN: [], CLASS: [], MEASURED: []}
            for row in record_rows or ():
                parts[row[0]].append(row[1:])
            needed = limit + len({e.prompt_id for e in evidence})
            rows = parts[OWN]
            head = _distinct(rows)
            if len(head) < needed and len(rows) < needed * factor:  # the own matches ran out: the whole class
                rows = parts[CLASS]
                head = _distinct(rows)
            if len(head) >= needed or len(rows) < needed * factor:
                head = head[:needed]
                shown = {record.id for record in head}
                measured = [record for record in map(record_from_row, parts[MEASURED]) if record.id not in shown]
                return evidence, head + measured
            factor *= 2

    def _one(self, sql: str, params: dict[str, Any]) -> Any:
        import psycopg

        try:
            return self.connection.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            raise DatabaseError(f"metadata DB error: {first_line(exc)}") from None


def _distinct(rows: list[list[Any]]) -> list[PromptRecord]:
    """Each prompt's first row (its best), in order: a multi-target prompt has a row per compression."""
    seen: dict[int, PromptRecord] = {}
    for row in rows:
        if row[0] not in seen:
            seen[row[0]] = record_from_row(row)
    return list(seen.values())

