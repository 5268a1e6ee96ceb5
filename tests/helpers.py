"""Builders shared by tests and by the worker processes that tests spawn."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.db.engine import Database
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
) -> PromptMetadata:
    return PromptMetadata(
        model=model, model_fingerprint=fp, compression=parse_compression(compression), dataset=dataset,
        num_virtual_tokens=tokens, hidden_size=hidden, task=task,
        training={"steps": 10, "lr": 0.01, "seed": 0},
        metrics=metrics if metrics is not None else {"ppl_full": 20.0, "ppl_compressed": 40.0, "ppl_prompted": 30.0},
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
