"""The matcher's metadata order (tiers 2-4 of DESIGN §7), written once and read two ways.

The rules are written against a handful of operations (``Ops``). ``PythonOps`` evaluates them on one prompt, which
is how ``registry.matcher`` ranks; ``registry.db.ranking`` implements the same operations over SQL columns, so
resolve reads only the rows it shows in exactly the matcher's order. A change of order is a change here only; the
interpreters are what ``tests/test_ranking_sql.py`` compares.

A prompt is ranked once per compression it was trained on (a multi-target prompt has several) and placed by the
best of them: the SQL readers order ``prompt_target`` rows and keep each prompt's first row (``distinct_head``), the
matcher takes the least sort key over the prompt's targets. Tier 1 (evidence measured on the very target) and tier 9
(rejected there) depend on evidence rows, which the resolver re-ranks in Python over the short list this order yields
(``registry.resolver``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .compression import METHODS, PRUNING, QUANTIZATION, CompressionSpec

MEASURED, EXACT, SAME_FAMILY, OTHER_FAMILY, REJECTED = 1, 2, 3, 4, 9
QUANTIZERS = tuple(m for m, info in METHODS.items() if info.family == QUANTIZATION)
PRUNERS = tuple(m for m, info in METHODS.items() if info.family == PRUNING)

V = TypeVar("V")
R = TypeVar("R")


@dataclass(frozen=True)
class Shape:
    """Which target fields are set: all the rules' structure depends on (the values are ``Ops.param``)."""

    family: str | None
    method: bool
    bits: bool
    group_size: bool
    sparsity: bool
    dataset: bool
    task: bool
    severity: bool


class Ops(Protocol[V]):
    """What the rules may do. Prompt fields: method, bits, group_size, sparsity, dataset, task, model, recovery,
    version, name. Target fields: the same names where the target has them, plus severity."""

    def column(self, name: str) -> V: ...
    def param(self, name: str) -> V: ...
    def const(self, value: Any) -> V: ...
    def eq(self, left: V, right: V) -> V: ...
    def near(self, left: V, right: V) -> V: ...  # both set and equal within 1e-9
    def greater(self, left: V, right: V) -> V: ...
    def is_in(self, value: V, options: Sequence[str]) -> V: ...
    def is_null(self, value: V) -> V: ...
    def all_of(self, conditions: Sequence[V]) -> V: ...
    def case(self, whens: Sequence[tuple[V, Any]], otherwise: Any) -> V: ...
    def severity(self) -> V: ...  # effective bits per weight (``CompressionSpec.severity``)
    def distance(self, left: V, right: V) -> V: ...  # |left - right|
    def descending(self, value: V) -> V: ...


def exact(shape: Shape, x: Ops[V]) -> V:
    """Tier 2's condition: the prompt's compression is what the target asks (unset target fields are wildcards)."""
    if shape.family is None:
        return x.all_of([])
    method = x.column("method")
    clauses = []
    if shape.method:
        clauses.append(x.eq(method, x.param("method")))
    if shape.family == QUANTIZATION:
        clauses.append(x.is_in(method, QUANTIZERS))
        if shape.bits:
            clauses.append(x.eq(x.column("bits"), x.param("bits")))
    if shape.group_size:
        clauses.append(x.eq(x.column("group_size"), x.param("group_size")))
    if shape.sparsity:
        clauses.append(x.near(x.column("sparsity"), x.param("sparsity")))
    elif shape.family != PRUNING:
        clauses.append(x.is_null(x.column("sparsity")))
    return x.all_of(clauses)


def tier(shape: Shape, x: Ops[V]) -> V:
    method = x.column("method")
    family = x.case([(x.is_in(method, QUANTIZERS), QUANTIZATION), (x.is_in(method, PRUNERS), PRUNING)], "none")
    same_family = x.eq(family, x.const(shape.family)) if shape.family is not None else x.const(False)
    return x.case([(exact(shape, x), EXACT), (same_family, SAME_FAMILY)], OTHER_FAMILY)


def preferences(shape: Shape, x: Ops[V]) -> list[V]:
    """Inside a tier: the target model's own prompts, then a dataset match, then a task match (DESIGN §7)."""
    terms = [x.case([(x.eq(x.column("model"), x.param("model")), 0)], 1)]
    for field, wanted in (("dataset", shape.dataset), ("task", shape.task)):
        if wanted:  # only what the target asks: a constant term would read as a column number in SQL
            terms.append(x.case([(x.eq(x.column(field), x.param(field)), 0)], 1))
    return terms


def by_recovery(x: Ops[V]) -> list[V]:
    """Best recorded recovery first, prompts without one last; then the newest version, then the name."""
    recovery = x.column("recovery")
    return [x.case([(x.is_null(recovery), 1)], 0), x.descending(recovery), x.descending(x.column("version")),
            x.column("name")]


def order(shape: Shape, x: Ops[V]) -> list[V]:
    """The full metadata order: tier, preferences, then (same family) equal-or-harsher severity and the nearest."""
    placed = tier(shape, x)
    terms = [placed, *preferences(shape, x)]
    if shape.severity:
        wanted = x.param("severity")
        milder = x.all_of([x.eq(placed, x.const(SAME_FAMILY)), x.greater(x.severity(), wanted)])
        terms.append(x.case([(milder, 1)], 0))
        terms.append(x.case([(x.eq(placed, x.const(EXACT)), 0.0)], x.distance(x.severity(), wanted)))
    return terms + by_recovery(x)


def own_exact_order(shape: Shape, x: Ops[V]) -> list[V]:
    """The order among the target model's own exact matches (tier and model already fixed)."""
    return preferences(shape, x)[1:] + by_recovery(x)


def distinct_head(fetch: Callable[[int], list[R]], limit: int, key: Callable[[R], Any]) -> list[R]:
    """The first ``limit`` distinct items of an ordered query that may repeat an item (a prompt once per target).

    ``fetch(n)`` returns the first ``n`` rows; an item's first row is its best, so keeping first occurrences keeps
    the order. Rows are fetched again, twice as many, only while repeats leave fewer than ``limit`` items.
    """
    size = limit
    while True:
        rows = fetch(size)
        seen: dict[Any, R] = {}
        for row in rows:
            seen.setdefault(key(row), row)
        if len(seen) >= limit or len(rows) < size:
            return list(seen.values())[:limit]
        size *= 2


class PythonOps:
    """Evaluates the rules on one prompt: ``fields`` are the prompt's, ``params`` the target's."""

    def __init__(self, fields: dict[str, Any], params: dict[str, Any]) -> None:
        self.fields, self.params = fields, params

    @classmethod
    def for_spec(cls, spec: CompressionSpec, params: dict[str, Any], **fields: Any) -> PythonOps:
        compression = {"method": spec.method, "bits": spec.bits, "group_size": spec.group_size,
                       "sparsity": spec.sparsity, "severity": spec.severity}
        return cls({**compression, **fields}, params)

    def column(self, name: str) -> Any:
        return self.fields[name]

    def param(self, name: str) -> Any:
        return self.params[name]

    def const(self, value: Any) -> Any:
        return value

    def eq(self, left: Any, right: Any) -> bool:
        return left is not None and right is not None and left == right

    def near(self, left: Any, right: Any) -> bool:
        return left is not None and right is not None and abs(left - right) < 1e-9

    def greater(self, left: Any, right: Any) -> bool:
        return left > right

    def is_in(self, value: Any, options: Sequence[str]) -> bool:
        return value in options

    def is_null(self, value: Any) -> bool:
        return value is None

    def all_of(self, conditions: Sequence[Any]) -> bool:
        return all(conditions)

    def case(self, whens: Sequence[tuple[Any, Any]], otherwise: Any) -> Any:
        return next((then for condition, then in whens if condition), otherwise)

    def severity(self) -> float:
        return self.fields["severity"]

    def distance(self, left: Any, right: Any) -> float:
        return abs(left - right)

    def descending(self, value: Any) -> Any:
        return -value if value is not None else 0
