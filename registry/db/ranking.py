"""The matcher's metadata order (``registry.rank_rules``) compiled to SQL, so resolve reads only the rows it shows.

``SqlOps`` implements the rules' operations over the ``prompt_target`` table's columns (one row per compression a
prompt was trained on); the statements below return the first ``limit`` rows of the fingerprint class in exactly
the order ``matcher.rank`` gives without evidence, and the caller keeps each prompt's first row
(``rank_rules.distinct_head``). The resolver re-ranks that short list together with the prompts that have evidence,
which yields the exact top of the full ranking. When the target model's own exact matches fill the list, one query
on the (base_model_id, method, bits, deprecated) index answers; otherwise one query orders the whole class.

Statements depend only on the target's *shape* (which fields are set), are built once per shape and take the
values as bound parameters, so SQLAlchemy's compiled-statement cache serves repeated resolves.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean, ColumnElement, Float, Integer, Select, String, and_, bindparam, case, func, literal, select, true,
)

from .. import rank_rules
from ..compression import FULL_PRECISION_BITS
from ..matcher import Target
from ..rank_rules import Shape
from .models import BaseModelRow, PromptRow, PromptTargetRow

_prompt = PromptRow.__table__.c
_target_table = PromptTargetRow.__table__
_target = _target_table.c
_base = BaseModelRow.__table__.c
_COLUMNS = {"model": _target.base_model_id} | {
    name: _target[name]
    for name in ("method", "bits", "group_size", "sparsity", "dataset", "task", "recovery", "version", "name")
}
_PARAM_TYPES = {
    "method": String, "bits": Integer, "group_size": Integer, "sparsity": Float, "dataset": String, "task": String,
    "severity": Float, "model": Integer, "fingerprint": String, "limit": Integer,
}


def shape_and_params(target: Target, model_id: int, fingerprint: str, limit: int) -> tuple[Shape, dict[str, Any]]:
    """The statement's shape and its bound values (the target model is its row id here)."""
    params = {**target.rank_params, "model": model_id, "fingerprint": fingerprint, "limit": limit}
    return target.shape, params


def _param(name: str) -> ColumnElement:
    return bindparam(name, type_=_PARAM_TYPES[name]())


def _value(value: Any) -> ColumnElement:
    return value if isinstance(value, ColumnElement) else literal(value)


class SqlOps:
    """``rank_rules.Ops`` over the prompt table: each operation returns a SQL expression."""

    def column(self, name: str) -> ColumnElement:
        return _COLUMNS[name]

    def param(self, name: str) -> ColumnElement:
        return _param(name)

    def const(self, value: Any) -> ColumnElement:
        return literal(value, type_=Boolean()) if isinstance(value, bool) else literal(value)

    def eq(self, left: ColumnElement, right: ColumnElement) -> ColumnElement:
        return left == right

    def near(self, left: ColumnElement, right: ColumnElement) -> ColumnElement:
        return func.abs(left - right) < 1e-9

    def greater(self, left: ColumnElement, right: ColumnElement) -> ColumnElement:
        return left > right

    def is_in(self, value: ColumnElement, options: Sequence[str]) -> ColumnElement:
        return value.in_(list(options))

    def is_null(self, value: ColumnElement) -> ColumnElement:
        return value.is_(None)

    def all_of(self, conditions: Sequence[ColumnElement]) -> ColumnElement:
        return and_(*conditions) if conditions else true()

    def case(self, whens: Sequence[tuple[ColumnElement, Any]], otherwise: Any) -> ColumnElement:
        return case(*((condition, _value(then)) for condition, then in whens), else_=_value(otherwise))

    def severity(self) -> ColumnElement:
        return func.coalesce(_target.bits, FULL_PRECISION_BITS) * (1.0 - func.coalesce(_target.sparsity, 0.0))

    def distance(self, left: ColumnElement, right: ColumnElement) -> ColumnElement:
        return func.abs(left - right)

    def descending(self, value: ColumnElement) -> ColumnElement:
        return value.desc()


_SQL = SqlOps()


@lru_cache(maxsize=512)
def own_exact_statement(base: Select, shape: Shape) -> Select:
    """The target model's own exact matches, best first (tier 2, same model: the head of the ranking).

    The inner query picks the rows from the ``ix_prompt_target_rank`` index alone (every column it reads is in it),
    so only the ``limit`` prompts served are read from the prompt table.
    """
    where = and_(_target.base_model_id == _param("model"), rank_rules.exact(shape, _SQL), _target.deprecated.is_(False))
    order = rank_rules.own_exact_order(shape, _SQL)
    head = select(_target.id).where(where).order_by(*order).limit(_param("limit"))
    return _ranked(base).where(_target.id.in_(head)).order_by(*order)


@lru_cache(maxsize=512)
def class_statement(base: Select, shape: Shape) -> Select:
    """The whole fingerprint class in ranking order."""
    where = and_(_base.fingerprint == _param("fingerprint"), _target.deprecated.is_(False))
    return _ranked(base).where(where).order_by(*rank_rules.order(shape, _SQL)).limit(_param("limit"))


def _ranked(base: Select) -> Select:
    """The prompt records, once per compression each was trained on."""
    return base.join(_target_table, _target.prompt_id == _prompt.id)
