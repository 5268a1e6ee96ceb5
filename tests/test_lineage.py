"""Lineage in the registry: a prompt names its parent, its cumulative steps and its optimizer state object; the state
is published first, verified on read, kept by gc while named, and nothing malformed gets in."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ctpreg.registry.artifacts import serialize_artifact
from ctpreg.registry.errors import IntegrityError, InvalidArtifact, InvalidInput
from ctpreg.registry.lineage import Lineage, downsample, state_key
from ctpreg.registry.optimizer_state import parse_state, serialize_state
from ctpreg.registry.service import Registry
from helpers import metadata


def _state(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {key: rng.standard_normal((4, 8)).astype(np.float32) for key in ("prompt", "exp_avg", "exp_avg_sq")}
    return serialize_state(arrays, {"step": 8, "adam_step": 8.0})


def _artifact(training_extra: dict, seed: int = 1) -> bytes:
    meta = metadata()
    meta = type(meta)(**{**meta.__dict__, "training": {**meta.training, **training_extra}})
    return serialize_artifact(np.random.default_rng(seed).standard_normal((4, 8)), meta)


def _lineage(state_sha: str, parent: str | None = None) -> dict:
    fields: dict = {"steps_total": 40, "state": {"sha256": state_sha, "size_bytes": 100},
                    "curve": {"loss": [[1, 3.5], [2, 3.1]], "select": [[0, 50.0], [40, 30.0]]}}
    if parent:
        fields["parent"] = {"ref": parent, "sha256": "ab" * 32}
    return fields


def test_a_prompt_naming_a_state_the_registry_lacks_is_refused_and_nothing_is_written(registry: Registry) -> None:
    missing = "cd" * 32
    with pytest.raises(InvalidArtifact, match="publish the state first"):
        registry.publish_bytes(_artifact(_lineage(missing)))
    assert registry.list_prompts() == []


def test_state_then_prompt_publishes_with_its_lineage(registry: Registry) -> None:
    sha = registry.publish_state(_state())
    assert registry.publish_state(_state()) == sha  # content-addressed, idempotent
    parent = registry.publish_bytes(_artifact({}, seed=2)).prompt
    child = registry.publish_bytes(_artifact(_lineage(sha, parent.ref), seed=3)).prompt
    lineage = child.lineage
    assert (lineage.state_sha256, lineage.steps_total, lineage.parent_ref) == (sha, 40, parent.ref)
    assert lineage.select_curve == ((0, 50.0), (40, 30.0))
    shown = registry.get(child.ref).to_dict()
    assert shown["parent"] == {"ref": parent.ref, "sha256": "ab" * 32} and shown["steps_total"] == 40
    assert registry.fetch_state(sha) == _state()


def test_a_tampered_state_object_is_refused_on_read(registry: Registry, store_dir: Path) -> None:
    sha = registry.publish_state(_state())
    path = store_dir / state_key(sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        registry.fetch_state(sha)


def test_gc_keeps_a_named_state_and_collects_one_no_prompt_names(registry: Registry) -> None:
    kept = registry.publish_state(_state(0))
    orphan = registry.publish_state(_state(1))
    registry.publish_bytes(_artifact(_lineage(kept)))
    removed = {item.key for item in registry.gc(grace_seconds=0)}
    assert state_key(orphan) in removed and state_key(kept) not in removed
    assert registry.fetch_state(kept) == _state(0)


@pytest.mark.parametrize("extra,match", [
    ({"parent": {"ref": "a/b", "sha256": "ab" * 32}}, "NAME:VERSION"),
    ({"parent": {"ref": "a/b:1", "sha256": "../x"}}, "sha256"),
    ({"state": {"sha256": "/etc/passwd", "size_bytes": 1}}, "sha256"),
    ({"state": {"sha256": "ab" * 32, "size_bytes": -1}}, "size_bytes"),
    ({"steps_total": 0}, "steps_total"),
    ({"curve": {"loss": [[2, 1.0], [1, 1.0]], "select": []}}, "step order"),
    ({"curve": {"loss": [[1, "x"]], "select": []}}, "finite"),
])
def test_malformed_lineage_is_refused_before_anything_is_stored(registry: Registry, extra, match) -> None:
    with pytest.raises(InvalidInput, match=match):
        _artifact(extra)
    with pytest.raises(InvalidInput, match=match):
        Lineage.from_training(extra)


@pytest.mark.parametrize("damage", ["pickle", "float64", "nan", "shapes", "format", "truncated"])
def test_state_bytes_are_checked_structurally_and_never_unpickled(damage) -> None:
    from safetensors.numpy import save

    ok = {key: np.ones((4, 8), np.float32) for key in ("prompt", "exp_avg")}
    bad = {
        "pickle": pickle.dumps(ok),
        "float64": save({k: v.astype(np.float64) for k, v in ok.items()}, metadata={"format": "ctpreg-state/1",
                                                                                   "state": "{}"}),
        "nan": save({**ok, "exp_avg": np.full((4, 8), np.nan, np.float32)}, metadata={"format": "ctpreg-state/1",
                                                                                     "state": "{}"}),
        "shapes": save({**ok, "exp_avg": np.ones((4, 9), np.float32)}, metadata={"format": "ctpreg-state/1",
                                                                                "state": "{}"}),
        "format": save(ok, metadata={"format": "ctpreg-prompt/1", "state": "{}"}),
        "truncated": serialize_state(ok, {})[:-5],
    }[damage]
    with pytest.raises(InvalidArtifact):
        parse_state(bad)


def test_downsampling_keeps_the_last_step_and_the_mean() -> None:
    losses = [(step, float(step)) for step in range(1, 1001)]
    points = downsample(losses, limit=100)
    assert len(points) == 100 and points[-1][0] == 1000
    assert points[0] == (10, 5.5)


def test_a_newer_version_that_measures_worse_is_kept_but_not_served(registry: Registry) -> None:
    from ctpreg.registry.matcher import Target
    from ctpreg.registry.resolver import resolve
    from helpers import artifact_bytes, windows_of

    windows = windows_of("wiki-test").to_dict()

    def version(prompted: float, seed: int) -> str:
        metrics = {"ppl_full": 20.0, "ppl_compressed": 40.0, "ppl_prompted": prompted, "eval_data": windows}
        return registry.publish_bytes(artifact_bytes(seed=seed, metrics=metrics), name="m/w3/wiki").prompt.ref

    target = Target(model="tiny-llama", method="gptq", bits=3)
    first = version(30.0, 1)  # 50% of the gap
    worse = version(35.0, 2)  # 25%: a continued run that did not pay off
    served = resolve(registry, target).served
    assert served.prompt.ref == first
    assert f"served over newer {worse} recovered 25% on the same windows: kept, not served" in served.explanation
    assert {c.prompt.ref for c in resolve(registry, target).candidates} >= {first, worse}  # history stays
    better = version(25.0, 3)  # 75%
    served = resolve(registry, target).served
    assert served.prompt.ref == better and "served over newer" not in served.explanation


def test_publishing_a_file_publishes_the_state_beside_it_first(registry: Registry, tmp_path: Path) -> None:
    from ctpreg.registry.digest import sha256_hex
    from ctpreg.registry.lineage import state_beside

    state = _state(4)
    artifact = tmp_path / "p.safetensors"
    artifact.write_bytes(_artifact(_lineage(sha256_hex(state))))
    state_beside(artifact).write_bytes(_state(5))  # another state than the one named
    with pytest.raises(InvalidInput, match="is not the optimizer state"):
        registry.publish(artifact)
    assert registry.list_prompts() == []
    state_beside(artifact).write_bytes(state)
    published = registry.publish(artifact).prompt
    assert state_beside(artifact).name == "p.state.safetensors"
    assert registry.fetch_state(published.lineage.state_sha256) == state
