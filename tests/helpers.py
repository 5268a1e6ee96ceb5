"""Builders shared by tests and by the worker processes that tests spawn."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np

from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.db.engine import Database
from ctpreg.registry.identity import EvalData
from ctpreg.registry.records import Measurement
from ctpreg.registry.resolver import ValidationScope
from ctpreg.registry.service import Registry
from ctpreg.registry.stores import open_store


def fingerprint(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


FP_A = fingerprint("tokenizer-a/8")
FP_B = fingerprint("tokenizer-b/8")


def metadata(
    *,
    model: str = "tiny-llama",
    fp: str = FP_A,
    compression: str = "gptq-w3-g128",
    dataset: str = "wiki",
    tokens: int = 4,
    hidden: int = 8,
    metrics: dict | None = None,
    task: str | None = None,
    targets: dict[str, dict] | None = None,
) -> PromptMetadata:
    """``targets``: a multi-target prompt's figures per compression (``compression`` among them)."""
    metrics = metrics if metrics is not None else {"ppl_full": 20.0, "ppl_compressed": 40.0, "ppl_prompted": 30.0}
    specs: tuple = ()
    if targets:
        names = [compression, *(name for name in targets if name != compression)]
        specs = tuple(parse_compression(name) for name in names)
        metrics = {**targets.get(compression, {}), "targets": targets}
    return PromptMetadata(
        model=model, model_fingerprint=fp, compression=parse_compression(compression), dataset=dataset,
        num_virtual_tokens=tokens, hidden_size=hidden, task=task,
        training={"steps": 10, "lr": 0.01, "seed": 0}, metrics=metrics, targets=specs,
    )


def artifact_bytes(seed: int = 0, **fields) -> bytes:
    meta = metadata(**fields)
    rng = np.random.default_rng(seed)
    return serialize_artifact(rng.standard_normal((meta.num_virtual_tokens, meta.hidden_size)), meta)


def write_artifact_file(path: Path, seed: int = 0, **fields) -> Path:
    path.write_bytes(artifact_bytes(seed, **fields))
    return path


def open_registry(db_url: str, store_url: str, endpoint: str | None = None) -> Registry:
    return Registry(Database(db_url), open_store(store_url, s3_endpoint_url=endpoint), user="test")


def publish_worker(db_url: str, store_url: str, endpoint: str | None, worker: int, count: int, name: str) -> list[int]:
    """Publish ``count`` distinct artifacts under one name; return the versions received."""
    registry = open_registry(db_url, store_url, endpoint)
    versions = []
    for i in range(count):
        data = artifact_bytes(seed=1000 * worker + i)
        versions.append(registry.publish_bytes(data, name=name).prompt.version)
    registry.db.dispose()
    return versions


RANKING_COMPRESSIONS = [
    "none", "gptq-w2-g128", "gptq-w3-g128", "gptq-w3-g64", "gptq-w4-g128", "gptq-w8-g128", "bnb-nf4", "bnb-fp4",
    "bnb-int8", "sparsegpt-s50", "sparsegpt-s75", "wanda-s50", "wanda-n2m4", "magnitude-s60",
    "gptq-w4-g128+sparsegpt-s50",
]
RANKING_TARGETS = [
    {}, {"bits": 3}, {"bits": 4}, {"bits": 8}, {"method": "gptq", "bits": 3},
    {"method": "gptq", "bits": 3, "group_size": 64},
    {"method": "gptq"}, {"method": "bnb-nf4"}, {"method": "sparsegpt", "sparsity": 0.5}, {"sparsity": 0.75},
    {"method": "wanda"}, {"method": "gptq", "bits": 4, "sparsity": 0.5}, {"method": "none"},
    {"method": "magnitude", "sparsity": 0.6},
]


def _random_metrics(rng: random.Random) -> dict:
    full = 20.0
    compressed = full + rng.choice([0.0, 10.0, 40.0])
    prompted = compressed - rng.random() * (compressed - full + 1)
    return rng.choice([{}, {"ppl_full": full, "ppl_compressed": compressed, "ppl_prompted": prompted}])


def populate_for_ranking(registry: Registry, rng: random.Random) -> None:
    """240 prompts over three models (two share a fingerprint), every kind of compression, one in five trained on
    2-4 compressions at once, some deprecated: the registry the ranking tests compare the SQL paths with the matcher
    on."""
    models = [("m", FP_A), ("m-chat", FP_A), ("other", FP_B)]
    for i in range(240):
        model, fp = rng.choice(models)
        compressions = rng.sample(RANKING_COMPRESSIONS, rng.choice([1, 1, 1, 1, 2, 3, 4]))
        targets = {name: _random_metrics(rng) for name in compressions} if len(compressions) > 1 else None
        data = artifact_bytes(
            seed=i, model=model, fp=fp, compression=compressions[0], dataset=rng.choice(["wiki", "news"]),
            metrics=_random_metrics(rng), task=rng.choice([None, "qa"]), targets=targets,
        )
        registry.publish_bytes(data, name=f"{model}/p{rng.randint(0, 30)}")
    for record in rng.sample(registry.list_prompts(), 25):
        if not record.deprecated:
            registry.deprecate(record.ref)


def windows_of(label: str) -> EvalData:
    return EvalData(corpus=label, split="validation", seq_len=256, windows=20, token_digest=label * 8)


class CountingValidator:
    """Measures by a table of gains, on a target identity and windows of the test's choosing."""

    def __init__(self, gains: dict[str, float], *, target_key: str = "compressed:" + "ab" * 32,
                 data: EvalData | None = None) -> None:
        self.gains = gains
        self.calls: list[str] = []
        self.target_key = target_key
        self.data = data or windows_of("news")

    def scope(self, target) -> ValidationScope:
        return ValidationScope(self.target_key, self.data)

    def __call__(self, artifact, target) -> Measurement:
        key = artifact.metadata.compression.canonical
        self.calls.append(key)
        return Measurement(ppl_without=50.0, ppl_with=50.0 * (1 - self.gains[key]), eval_dataset=self.data.label,
                           eval_tokens=1000, target_key=self.target_key, eval_data=self.data)
