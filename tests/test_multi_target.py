"""Prompts trained on several compressions at once: artifact, publish, ranking (both backends) and migration."""

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from ctpreg.registry.artifacts import MAX_TARGETS, parse_artifact
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.db.engine import Database
from ctpreg.registry.db.migrate import downgrade, upgrade
from ctpreg.registry.errors import InvalidArtifact, InvalidInput
from ctpreg.registry.matcher import EXACT, SAME_FAMILY, Target
from ctpreg.registry.service import Registry
from helpers import artifact_bytes, metadata

FULL = 20.0
# Figures per target: recovered 60% at w3, 90% at w2, 20% at w4, 50% at sparsegpt-s50.
MULTI = {
    "gptq-w3-g128": {"ppl_full": FULL, "ppl_compressed": 70.0, "ppl_prompted": 40.0},
    "gptq-w2-g128": {"ppl_full": FULL, "ppl_compressed": 220.0, "ppl_prompted": 40.0},
    "gptq-w4-g128": {"ppl_full": FULL, "ppl_compressed": 30.0, "ppl_prompted": 28.0},
    "sparsegpt-s50": {"ppl_full": FULL, "ppl_compressed": 40.0, "ppl_prompted": 30.0},
}


def single(recovered: float, compression: str) -> bytes:
    metrics = {"ppl_full": FULL, "ppl_compressed": 40.0, "ppl_prompted": 40.0 - 20.0 * recovered}
    return artifact_bytes(seed=int(recovered * 100), model="m", compression=compression, metrics=metrics)


def test_artifact_lists_its_targets_and_their_figures() -> None:
    artifact = parse_artifact(artifact_bytes(model="m", targets=MULTI))
    meta = artifact.metadata
    assert [s.canonical for s in meta.trained_on] == list(MULTI)
    assert meta.target_metrics(parse_compression("gptq-w2-g128"))["ppl_compressed"] == 220.0
    assert meta.metrics["ppl_compressed"] == 70.0, "the top-level figures are the first target's"
    one = parse_artifact(artifact_bytes(model="m")).metadata
    assert [s.canonical for s in one.trained_on] == ["gptq-w3-g128"] and "targets" not in one.to_strings()


def _with(**changes):
    meta = metadata(model="m", targets=MULTI)
    return replace(meta, **changes)


def _metrics_with(name: str, figures: object) -> dict:
    meta = metadata(model="m", targets=MULTI)
    return {**meta.metrics, "targets": {**meta.metrics["targets"], name: figures}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (lambda: {"compression": parse_compression("sparsegpt-s50")}, "must start with the compression"),
        (lambda: {"targets": (parse_compression("gptq-w3-g128"),)}, "2..16 distinct"),
        (lambda: {"targets": (parse_compression("gptq-w3-g128"),) * 2}, "2..16 distinct"),
        (lambda: {"targets": tuple(parse_compression(n) for n in list(MULTI)[:2])}, "exactly the targets"),
        (lambda: {"targets": (parse_compression("gptq-w3-g128"),
                              *(parse_compression(f"sparsegpt-s{s}") for s in range(10, 11 + MAX_TARGETS)))},
         "2..16 distinct"),
        (lambda: {"metrics": _metrics_with("gptq-w4-g128", {"ppl_full": 0.5})}, "must be a perplexity"),
        (lambda: {"metrics": _metrics_with("sparsegpt-s50", "good")}, "must be a JSON object"),
    ],
)
def test_bad_target_lists_are_refused(changes, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        _with(**changes())


@pytest.mark.parametrize(("targets", "message"), [('["gptq-w3-g128"', "targets"), ('["gptq-w9-g128"]', "bits"),
                                                  ('{"a": 1}', "JSON list")])
def test_unreadable_target_lists_in_an_artifact_are_refused(targets: str, message: str) -> None:
    import numpy as np
    from safetensors.numpy import save

    strings = {**metadata(model="m", targets=MULTI).to_strings(), "targets": targets}
    data = save({"prompt_embeddings": np.zeros((4, 8), np.float32)}, strings)
    with pytest.raises(InvalidArtifact, match=message):
        parse_artifact(data)


def test_a_multi_target_prompt_is_an_exact_match_for_each_of_its_targets_only(registry: Registry) -> None:
    multi = registry.publish_bytes(artifact_bytes(model="m", targets=MULTI), name="m/multi").prompt
    registry.publish_bytes(single(0.75, "gptq-w3-g128"), name="m/w3")
    registry.publish_bytes(single(0.30, "gptq-w4-g128"), name="m/w4")
    registry.publish_bytes(single(0.10, "gptq-w8-g128"), name="m/w8")
    order = {}
    for canonical in (*MULTI, "gptq-w8-g128"):
        ranked = registry.candidates(Target.for_spec("m", parse_compression(canonical)), limit=10)
        order[canonical] = [c.prompt.name for c in ranked]
        mine = next(c for c in ranked if c.prompt.id == multi.id)
        if canonical in MULTI:
            assert mine.tier == EXACT and f"exact match {canonical}" in mine.explanation, canonical
            assert "one of the 4 compressions it was trained on" in mine.explanation
        else:
            assert mine.tier == SAME_FAMILY, "gptq-w8 is not among its targets: a transfer, not an exact match"
    assert order["gptq-w3-g128"][:2] == ["m/w3", "m/multi"], "ranked by its recovery on w3 (60% < 75%)"
    assert order["gptq-w4-g128"][:2] == ["m/w4", "m/multi"], "20% at w4 < the w4 prompt's 30%"
    assert order["gptq-w2-g128"][0] == "m/multi" and order["sparsegpt-s50"][0] == "m/multi"
    assert order["gptq-w8-g128"][0] == "m/w8"
    # A partial target (--bits 3) matches it once, not once per target.
    partial = registry.candidates(Target(model="m", bits=3), limit=10)
    assert [c.prompt.name for c in partial].count("m/multi") == 1
    registry.deprecate(multi.ref)
    for canonical in MULTI:
        ranked = registry.candidates(Target.for_spec("m", parse_compression(canonical)), limit=10)
        assert multi.id not in [c.prompt.id for c in ranked], "a deprecated prompt is gone for every target"


def test_a_prompt_repeated_across_targets_still_fills_the_limit(registry: Registry) -> None:
    """The head is read as rows (a prompt once per target); repeats must not leave the list short."""
    for i in range(3):
        targets = {name: {**figures, "ppl_prompted": figures["ppl_prompted"] - i} for name, figures in MULTI.items()}
        registry.publish_bytes(artifact_bytes(seed=i, model="m", targets=targets), name=f"m/multi{i}")
    registry.publish_bytes(single(0.05, "bnb-nf4"), name="m/nf4")
    names = [c.prompt.name for c in registry.candidates(Target(model="m", method="gptq"), limit=4)]
    assert sorted(names) == ["m/multi0", "m/multi1", "m/multi2", "m/nf4"]


def test_upgrade_to_0005_gives_every_old_prompt_its_one_target(empty_db_url: str, tmp_path: Path) -> None:
    from ctpreg.registry.stores.local import LocalStore

    db = Database(empty_db_url)
    upgrade(db.engine, "0004_evidence_full_perplexity")
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO base_model (name, fingerprint, hidden_size, created_at)"
            " VALUES ('m', 'sha256:x', 8, '2026-11-29 00:00:00+00:00')"
        ))
        for version, recovery, deprecated in ((1, 0.5, False), (2, None, True)):
            conn.execute(text(
                "INSERT INTO prompt (name, version, base_model_id, compression, method, bits, group_size, dataset,"
                " num_virtual_tokens, hidden_size, dtype, sha256, size_bytes, object_key, metrics, recovery,"
                " training, created_at, created_by, deprecated)"
                " VALUES ('p', :v, 1, 'gptq-w3-g128', 'gptq', 3, 128, 'wiki', 4, 8, 'float32', :sha, 1, 'k', '{}',"
                " :recovery, '{}', '2026-11-29 00:00:00+00:00', 't', :deprecated)"
            ), {"v": version, "sha": f"{version:064x}", "recovery": recovery, "deprecated": deprecated})
    upgrade(db.engine)
    with db.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT prompt_id, compression, method, bits, group_size, recovery, version, deprecated FROM prompt_target"
            " ORDER BY prompt_id"
        )).all()
    assert [tuple(r) for r in rows] == [(1, "gptq-w3-g128", "gptq", 3, 128, 0.5, 1, False),
                                        (2, "gptq-w3-g128", "gptq", 3, 128, None, 2, True)]
    registry = Registry(Database(empty_db_url), LocalStore(tmp_path / "objects"))
    [served] = registry.candidates(Target(model="m", method="gptq", bits=3))
    assert served.prompt.ref == "p:1" and served.tier == EXACT
    registry.db.dispose()
    downgrade(db.engine, "0004_evidence_full_perplexity")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM prompt")).scalar() == 2
    upgrade(db.engine)
    db.dispose()


def test_the_report_draws_each_trained_target_with_its_own_figures(registry: Registry) -> None:
    from ctpreg.registry.identity import EvalData
    from ctpreg.registry.report import summarize

    test = EvalData(corpus="wiki", split="test", seq_len=256, windows=20, token_digest="ab" * 32).to_dict()
    targets = {name: figures for name, figures in MULTI.items()}
    data = artifact_bytes(model="m", targets=targets)
    meta = parse_artifact(data).metadata
    meta = replace(meta, metrics={**meta.metrics, "eval_data": test})
    from ctpreg.registry.artifacts import serialize_artifact

    record = registry.publish_bytes(serialize_artifact(parse_artifact(data).embeddings, meta), name="m/multi").prompt
    points = {p.target: p for p in summarize("m", [], [record])}
    assert set(points) == set(MULTI)
    for name, figures in MULTI.items():
        assert (points[name].ppl_compressed, points[name].ppl_prompted) == (
            figures["ppl_compressed"], figures["ppl_prompted"])
        assert "test split, which chose nothing" in points[name].explanation
