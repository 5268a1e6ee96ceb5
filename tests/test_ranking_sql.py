"""The SQL ranking path returns exactly the head of the matcher's full ranking, on both backends."""

import random

import pytest

from ctpreg.registry.matcher import Target, rank
from ctpreg.registry.records import Measurement
from ctpreg.registry.service import Registry
from helpers import FP_A, RANKING_TARGETS, populate_for_ranking

def test_sql_head_equals_python_ranking(registry: Registry) -> None:
    rng = random.Random(7)
    populate_for_ranking(registry, rng)
    everything = [p for p in registry.list_prompts() if p.model_fingerprint == FP_A and not p.deprecated]
    for fields in RANKING_TARGETS:
        for dataset in (None, "news"):
            target = Target(model="m", dataset=dataset, task=rng.choice([None, "qa"]), **fields)
            spec = target.spec
            if spec is not None:  # some evidence, so tiers 1 and 9 take part
                for record in rng.sample(everything, 3):
                    gain = rng.uniform(-0.2, 0.3)
                    registry.record_evidence(
                        target, record, Measurement(50.0, 50.0 * (1 - gain), "wiki", 100), accepted=gain > 0.01
                    )
            evidence = registry.evidence("m")
            if spec is not None:
                evidence = [e for e in evidence if e.target_compression == spec.canonical]
            else:
                evidence = []
            for limit in (1, 5, 20, 80, 500):
                expected = [c.prompt.id for c in rank(target, everything, evidence)[:limit]]
                got = [c.prompt.id for c in registry.candidates(target, limit=limit)]
                assert got == expected, (fields, dataset, limit)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(registry: Registry, limit: int) -> None:
    from ctpreg.registry.errors import InvalidInput

    with pytest.raises(InvalidInput):
        registry.candidates(Target(model="m"), limit=limit)
