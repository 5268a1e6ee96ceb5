"""The SQL ranking path returns exactly the head of the matcher's full ranking, on both backends."""

import random

import pytest

from ctpreg.registry.matcher import Target, rank
from ctpreg.registry.records import Measurement
from ctpreg.registry.service import Registry
from helpers import FP_A, FP_B, artifact_bytes

COMPRESSIONS = [
    "none", "gptq-w2-g128", "gptq-w3-g128", "gptq-w3-g64", "gptq-w4-g128", "gptq-w8-g128", "bnb-nf4", "bnb-fp4",
    "bnb-int8", "sparsegpt-s50", "sparsegpt-s75", "wanda-s50", "wanda-n2m4", "magnitude-s60",
    "gptq-w4-g128+sparsegpt-s50",
]
TARGETS = [
    {}, {"bits": 3}, {"bits": 4}, {"bits": 8}, {"method": "gptq", "bits": 3},
    {"method": "gptq", "bits": 3, "group_size": 64},
    {"method": "gptq"}, {"method": "bnb-nf4"}, {"method": "sparsegpt", "sparsity": 0.5}, {"sparsity": 0.75},
    {"method": "wanda"}, {"method": "gptq", "bits": 4, "sparsity": 0.5}, {"method": "none"},
    {"method": "magnitude", "sparsity": 0.6},
]


def _populate(registry: Registry, rng: random.Random) -> None:
    models = [("m", FP_A), ("m-chat", FP_A), ("other", FP_B)]
    for i in range(240):
        model, fp = rng.choice(models)
        full = 20.0
        compressed = full + rng.choice([0.0, 10.0, 40.0])
        prompted = compressed - rng.random() * (compressed - full + 1)
        metrics = rng.choice([{}, {"ppl_full": full, "ppl_compressed": compressed, "ppl_prompted": prompted}])
        data = artifact_bytes(
            seed=i, model=model, fp=fp, compression=rng.choice(COMPRESSIONS), dataset=rng.choice(["wiki", "news"]),
            metrics=metrics, task=rng.choice([None, "qa"]),
        )
        registry.publish_bytes(data, name=f"{model}/p{rng.randint(0, 30)}")
    for record in rng.sample(registry.list_prompts(), 25):
        if not record.deprecated:
            registry.deprecate(record.ref)


def test_sql_head_equals_python_ranking(registry: Registry) -> None:
    rng = random.Random(7)
    _populate(registry, rng)
    everything = [p for p in registry.list_prompts() if p.model_fingerprint == FP_A and not p.deprecated]
    for fields in TARGETS:
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
