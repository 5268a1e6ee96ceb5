"""The matcher's metadata order (tiers 2-4, see ``registry.matcher``) as SQL, so resolve reads only the rows it shows.

These statements return the first ``limit`` prompts of the fingerprint class in exactly the order ``matcher.rank``
gives without evidence; the resolver re-ranks that short list together with the prompts that have evidence, which
yields the exact top of the full ranking. When the target model's own exact matches fill the list, one query on the
(base_model_id, method, bits, deprecated) index answers; otherwise one query orders the whole class.

Statements depend only on the target's *shape* (which fields are set), are built once per shape and take the
values as bound parameters, so SQLAlchemy's compiled-statement cache serves repeated resolves.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    select,
    true,
)

from ..compression import FULL_PRECISION_BITS, METHODS, PRUNING, QUANTIZATION
from ..matcher import EXACT, OTHER_FAMILY, SAME_FAMILY, Target
from .models import BaseModelRow, PromptRow

_QUANTIZERS = [m for m, info in METHODS.items() if info.family == QUANTIZATION]
_PRUNERS = [m for m, info in METHODS.items() if info.family == PRUNING]
_prompt = PromptRow.__table__.c
_base = BaseModelRow.__table__.c


class Shape(NamedTuple):
    """Which target fields are set: all a statement's structure depends on."""

    family: str | None
    method: bool
    bits: bool
    group_size: bool
    sparsity: bool
    dataset: bool
    task: bool
    severity: bool


def shape_and_params(target: Target, model_id: int, fingerprint: str, limit: int) -> tuple[Shape, dict[str, Any]]:
    shape = Shape(
        family=target.family, method=target.method is not None, bits=bool(target.bits),
        group_size=target.group_size is not None, sparsity=target.sparsity is not None, dataset=bool(target.dataset),
        task=bool(target.task), severity=target.severity is not None,
    )
    params = {
        "model_id": model_id, "fingerprint": fingerprint, "limit": limit, "t_method": target.method,
        "t_bits": target.bits, "t_group": target.group_size, "t_sparsity": target.sparsity,
        "t_dataset": target.dataset, "t_task": target.task, "t_severity": target.severity,
    }
    return shape, params


_PARAM_TYPES = {
    "t_method": String, "t_bits": Integer, "t_group": Integer, "t_sparsity": Float, "t_dataset": String,
    "t_task": String, "t_severity": Float, "model_id": Integer, "fingerprint": String, "limit": Integer,
}


def _param(name: str) -> ColumnElement:
    return bindparam(name, type_=_PARAM_TYPES[name]())


def _family() -> ColumnElement:
    return case(
        (_prompt.method.in_(_QUANTIZERS), literal(QUANTIZATION)),
        (_prompt.method.in_(_PRUNERS), literal(PRUNING)),
        else_=literal("none"),
    )


def _severity() -> ColumnElement:
    return func.coalesce(_prompt.bits, FULL_PRECISION_BITS) * (1.0 - func.coalesce(_prompt.sparsity, 0.0))


def exact_condition(shape: Shape) -> ColumnElement:
    """SQL twin of ``Target.matches_exactly``."""
    if shape.family is None:
        return true()
    clauses: list[ColumnElement] = []
    if shape.method:
        clauses.append(_prompt.method == _param("t_method"))
    if shape.family == QUANTIZATION:
        clauses.append(_prompt.method.in_(_QUANTIZERS))
        if shape.bits:
            clauses.append(_prompt.bits == _param("t_bits"))
    if shape.group_size:
        clauses.append(_prompt.group_size == _param("t_group"))
    if shape.sparsity:
        clauses.append(func.abs(_prompt.sparsity - _param("t_sparsity")) < 1e-9)
    elif shape.family != PRUNING:
        clauses.append(_prompt.sparsity.is_(None))
    return and_(*clauses)


def _misses(shape: Shape) -> list[ColumnElement]:
    """Dataset/task mismatch flags, only for what the target asks (a constant would read as a column number)."""
    terms = []
    if shape.dataset:
        terms.append(case((_prompt.dataset == _param("t_dataset"), 0), else_=1))
    if shape.task:
        terms.append(case((and_(_prompt.task.is_not(None), _prompt.task == _param("t_task")), 0), else_=1))
    return terms


def _by_recovery() -> list[ColumnElement]:
    return [
        case((_prompt.recovery.is_(None), 1), else_=0), _prompt.recovery.desc(), _prompt.version.desc(), _prompt.name
    ]


def _order(shape: Shape) -> list[ColumnElement]:
    same_family = _family() == shape.family if shape.family is not None else false()
    tier = case((exact_condition(shape), EXACT), (same_family, SAME_FAMILY), else_=OTHER_FAMILY)
    terms = [tier, case((_prompt.base_model_id == _param("model_id"), 0), else_=1), *_misses(shape)]
    if shape.severity:
        wanted = _param("t_severity")
        terms.append(case((and_(tier == SAME_FAMILY, _severity() > wanted), 1), else_=0))
        terms.append(case((tier == EXACT, 0.0), else_=func.abs(_severity() - wanted)))
    return terms + _by_recovery()


@lru_cache(maxsize=512)
def own_exact_statement(base: Select, shape: Shape) -> Select:
    """The target model's own exact matches, best first (tier 2, same model: the head of the ranking).

    The inner query picks the ids from the ``ix_prompt_rank`` index alone (every column it reads is in it), so only
    the ``limit`` rows served are read from the table.
    """
    where = and_(_prompt.base_model_id == _param("model_id"), exact_condition(shape), _prompt.deprecated.is_(False))
    order = [*_misses(shape), *_by_recovery()]
    head = select(_prompt.id).where(where).order_by(*order).limit(_param("limit"))
    return base.where(_prompt.id.in_(head)).order_by(*order)


@lru_cache(maxsize=512)
def class_statement(base: Select, shape: Shape) -> Select:
    """The whole fingerprint class in ranking order."""
    where = and_(_base.fingerprint == _param("fingerprint"), _prompt.deprecated.is_(False))
    return base.where(where).order_by(*_order(shape)).limit(_param("limit"))
