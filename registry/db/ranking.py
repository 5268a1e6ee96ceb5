"""The matcher's metadata order (tiers 2-4, see ``registry.matcher``) as SQL, so resolve reads only the rows it shows.

These statements return the first ``limit`` prompts of the fingerprint class in exactly the order
``matcher.rank`` gives without evidence; the resolver re-ranks that short list together with the prompts that have
evidence, which yields the exact top of the full ranking. When the target model's own exact matches fill the list,
one indexed query on (base_model_id, method, bits) answers; otherwise one query orders the whole class.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, and_, case, false, func, literal, select, true

from ..compression import FULL_PRECISION_BITS, METHODS, PRUNING, QUANTIZATION
from ..matcher import EXACT, OTHER_FAMILY, SAME_FAMILY, Target
from .models import BaseModelRow, PromptRow

_QUANTIZERS = [m for m, info in METHODS.items() if info.family == QUANTIZATION]
_PRUNERS = [m for m, info in METHODS.items() if info.family == PRUNING]


def _family() -> ColumnElement:
    return case(
        (PromptRow.method.in_(_QUANTIZERS), literal(QUANTIZATION)),
        (PromptRow.method.in_(_PRUNERS), literal(PRUNING)),
        else_=literal("none"),
    )


def _severity() -> ColumnElement:
    return func.coalesce(PromptRow.bits, FULL_PRECISION_BITS) * (1.0 - func.coalesce(PromptRow.sparsity, 0.0))


def exact_condition(target: Target) -> ColumnElement:
    """SQL twin of ``Target.matches_exactly``."""
    family = target.family
    if family is None:
        return true()
    clauses: list[ColumnElement] = []
    if target.method is not None:
        clauses.append(PromptRow.method == target.method)
    if family == QUANTIZATION:
        clauses.append(PromptRow.method.in_(_QUANTIZERS))
        if target.bits:
            clauses.append(PromptRow.bits == target.bits)
    if target.group_size is not None:
        clauses.append(PromptRow.group_size == target.group_size)
    if target.sparsity is not None:
        clauses.append(func.abs(PromptRow.sparsity - target.sparsity) < 1e-9)
    elif family != PRUNING:
        clauses.append(PromptRow.sparsity.is_(None))
    return and_(*clauses)


def _misses(target: Target) -> list[ColumnElement]:
    """Dataset/task mismatch flags (only for what the target asks; constants would read as column numbers)."""
    terms = []
    if target.dataset:
        terms.append(case((PromptRow.dataset == target.dataset, 0), else_=1))
    if target.task:
        terms.append(case((and_(PromptRow.task.is_not(None), PromptRow.task == target.task), 0), else_=1))
    return terms


def _by_recovery() -> list[ColumnElement]:
    return [case((PromptRow.recovery.is_(None), 1), else_=0), PromptRow.recovery.desc(), PromptRow.version.desc(), PromptRow.name]


def _order(target: Target, model_id: int) -> list[ColumnElement]:
    exact = exact_condition(target)
    family = target.family
    same_family = _family() == family if family is not None else false()
    tier = case((exact, EXACT), (same_family, SAME_FAMILY), else_=OTHER_FAMILY)
    terms = [tier, case((PromptRow.base_model_id == model_id, 0), else_=1), *_misses(target)]
    wanted = target.severity
    if wanted is not None:
        terms.append(case((and_(tier == SAME_FAMILY, _severity() > wanted), 1), else_=0))
        terms.append(case((tier == EXACT, 0.0), else_=func.abs(_severity() - wanted)))
    return terms + _by_recovery()


def _ranked(where: ColumnElement, order: list[ColumnElement], limit: int) -> Select:
    return (
        select(PromptRow, BaseModelRow)
        .join(BaseModelRow, PromptRow.base_model_id == BaseModelRow.id)
        .where(where, PromptRow.deprecated.is_(False))
        .order_by(*order)
        .limit(limit)
    )


def own_exact_statement(target: Target, model_id: int, limit: int) -> Select:
    """The target model's own exact matches, best first (tier 2, same model: the head of the ranking)."""
    where = and_(PromptRow.base_model_id == model_id, exact_condition(target))
    return _ranked(where, [*_misses(target), *_by_recovery()], limit)


def class_statement(target: Target, model_id: int, fingerprint: str, limit: int) -> Select:
    """The whole fingerprint class in ranking order."""
    class_ids = select(BaseModelRow.id).where(BaseModelRow.fingerprint == fingerprint)
    return _ranked(PromptRow.base_model_id.in_(class_ids), _order(target, model_id), limit)
