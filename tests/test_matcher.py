"""Matcher tiers (pure) and the resolver's validation flow with a counting validator."""

from datetime import UTC, datetime

import pytest

from ctpreg.registry.errors import InvalidInput, NoCompatiblePrompt, NoHelpfulPrompt
from ctpreg.registry.matcher import EXACT, MEASURED, OTHER_FAMILY, REJECTED, SAME_FAMILY, Target, rank
from ctpreg.registry.records import PromptRecord
from ctpreg.registry.resolver import resolve
from ctpreg.registry.service import Registry
from helpers import FP_A, FP_B, CountingValidator, artifact_bytes, windows_of


def record(
    pid: int, compression: str, *, model: str = "m", dataset: str = "wiki", recovery: float = 0.5
) -> PromptRecord:
    return PromptRecord(
        id=pid, name=f"p{pid}", version=1, model=model, model_fingerprint=FP_A, compression=compression,
        dataset=dataset, task=None, num_virtual_tokens=4, hidden_size=8, dtype="float32", sha256=f"{pid:064x}",
        size_bytes=1, object_key="k", training={}, created_at=datetime.now(UTC), created_by="t", deprecated=False,
        metrics={"ppl_full": 10.0, "ppl_compressed": 20.0, "ppl_prompted": 20.0 - 10.0 * recovery},
    )


def order(target: Target, prompts: list[PromptRecord]) -> list[tuple[str, int]]:
    return [(c.prompt.compression, c.tier) for c in rank(target, prompts)]


def test_tiers_exact_then_same_family_harsher_first_then_other_family() -> None:
    prompts = [
        record(1, "sparsegpt-s50"), record(2, "gptq-w4-g128"), record(3, "gptq-w2-g128"),
        record(4, "gptq-w3-g128", recovery=0.4), record(5, "gptq-w8-g128"), record(6, "gptq-w3-g128", recovery=0.7),
    ]
    got = order(Target(model="m", method="gptq", bits=3), prompts)
    assert got == [
        ("gptq-w3-g128", EXACT), ("gptq-w3-g128", EXACT),      # best recovery first
        ("gptq-w2-g128", SAME_FAMILY),                         # harsher transfers down
        ("gptq-w4-g128", SAME_FAMILY), ("gptq-w8-g128", SAME_FAMILY),  # then nearest milder
        ("sparsegpt-s50", OTHER_FAMILY),
    ]
    assert rank(Target(model="m", method="gptq", bits=3), prompts)[0].prompt.id == 6


def test_bits_alone_selects_quantizers_of_that_width() -> None:
    prompts = [record(1, "bnb-nf4"), record(2, "gptq-w4-g128"), record(3, "gptq-w3-g128"), record(4, "wanda-s50")]
    got = order(Target(model="m", bits=4), prompts)
    assert {c for c, t in got if t == EXACT} == {"bnb-nf4", "gptq-w4-g128"}
    assert got[-1] == ("wanda-s50", OTHER_FAMILY)
    with pytest.raises(InvalidInput, match="no quantization method supports 5 bits"):
        Target(model="m", bits=5)


def test_pruning_target_and_joint_specs() -> None:
    prompts = [record(1, "sparsegpt-s50"), record(2, "sparsegpt-s75"), record(3, "gptq-w4-g128+sparsegpt-s50")]
    got = order(Target(model="m", method="sparsegpt", sparsity=0.5), prompts)
    assert got[0] == ("sparsegpt-s50", EXACT)
    assert got[1] == ("sparsegpt-s75", SAME_FAMILY)
    joint = order(Target(model="m", method="gptq", bits=4, sparsity=0.5), prompts)
    assert joint[0] == ("gptq-w4-g128+sparsegpt-s50", EXACT)


def test_other_model_of_the_class_ranks_after_own_and_says_so() -> None:
    prompts = [record(1, "gptq-w3-g128", model="m-chat", recovery=0.9), record(2, "gptq-w3-g128", recovery=0.1)]
    ranked = rank(Target(model="m", method="gptq", bits=3), prompts)
    assert [c.prompt.id for c in ranked] == [2, 1]
    assert "learned on m-chat" in ranked[1].explanation and ranked[1].tier == EXACT


def test_dataset_match_comes_first_inside_a_tier() -> None:
    prompts = [record(1, "gptq-w3-g128", dataset="news", recovery=0.9), record(2, "gptq-w3-g128", dataset="wiki")]
    ranked = rank(Target(model="m", method="gptq", bits=3, dataset="wiki"), prompts)
    assert [c.prompt.id for c in ranked] == [2, 1]
    assert "trained on news, not wiki" in ranked[1].explanation


def test_every_candidate_explains_itself() -> None:
    prompts = [record(i, c) for i, c in enumerate(["gptq-w3-g128", "gptq-w2-g128", "sparsegpt-s50", "none"], 1)]
    for candidate in rank(Target(model="m", method="gptq", bits=3), prompts):
        assert candidate.explanation and "\n" not in candidate.explanation


# --- resolver with evidence ----------------------------------------------------------------------------------


def _populate(registry: Registry) -> None:
    registry.publish_bytes(artifact_bytes(1, compression="gptq-w3-g128"))
    registry.publish_bytes(artifact_bytes(2, compression="gptq-w2-g128"))
    registry.publish_bytes(artifact_bytes(3, compression="sparsegpt-s50"))


def test_validation_records_evidence_and_the_next_resolve_reuses_it(registry: Registry) -> None:
    _populate(registry)
    target = Target(model="tiny-llama", method="gptq", bits=4)
    validator = CountingValidator({"gptq-w3-g128": 0.05, "gptq-w2-g128": 0.20, "sparsegpt-s50": 0.0})
    first = resolve(registry, target, validator=validator, top_k=3)
    assert len(validator.calls) == 3
    assert first.served.prompt.compression == "gptq-w2-g128" and first.served.tier == MEASURED
    assert first.served.measurement.relative_gain == pytest.approx(0.20)
    second = resolve(registry, target, validator=validator)
    assert len(validator.calls) == 3, "evidence must be reused, not re-measured"
    assert second.served.prompt.compression == "gptq-w2-g128"
    tiers = {c.prompt.compression: c.tier for c in second.candidates}
    assert tiers == {"gptq-w2-g128": MEASURED, "gptq-w3-g128": MEASURED, "sparsegpt-s50": REJECTED}
    resolve(registry, target, validator=validator, revalidate=True)
    assert len(validator.calls) == 6


def test_evidence_is_reused_only_on_the_same_windows(registry: Registry) -> None:
    _populate(registry)
    target = Target(model="tiny-llama", method="gptq", bits=4)
    gains = {"gptq-w3-g128": 0.05, "gptq-w2-g128": 0.20, "sparsegpt-s50": 0.0}
    on_news = CountingValidator(gains)
    resolve(registry, target, validator=on_news)
    on_text = CountingValidator(gains, data=windows_of("my-text"))
    again = resolve(registry, target, validator=on_text)
    assert len(on_text.calls) == 3, "evidence measured on news must not stand in for other windows"
    assert again.served.measurement.eval_data == windows_of("my-text")
    assert "my-text/validation, 20x256 tokens" in again.served.explanation
    keys = {e.measurement.eval_key for e in registry.evidence("tiny-llama")}
    assert keys == {windows_of("news").key, windows_of("my-text").key}


def test_evidence_on_a_checkpoint_serves_that_checkpoint_only(registry: Registry) -> None:
    _populate(registry)
    spec_target = Target(model="tiny-llama", method="gptq", bits=4)
    checkpoint = "checkpoint:" + "cd" * 32
    gains = {"gptq-w3-g128": 0.05, "gptq-w2-g128": 0.20, "sparsegpt-s50": 0.0}
    validator = CountingValidator(gains, target_key=checkpoint)
    served = resolve(registry, spec_target, validator=validator).served
    assert served.tier == MEASURED and served.measurement.target_key == checkpoint
    mine = resolve(registry, Target(model="tiny-llama", method="gptq", bits=4, identity=checkpoint))
    assert mine.served.tier == MEASURED and mine.served.prompt.compression == "gptq-w2-g128"
    theirs = resolve(registry, spec_target)
    assert all(c.tier != MEASURED for c in theirs.candidates), "a user's checkpoint is not every gptq-w4 model"
    other = resolve(registry, Target(model="tiny-llama", method="gptq", bits=4, identity="checkpoint:" + "ef" * 32))
    assert all(c.tier != MEASURED for c in other.candidates)


def test_a_prompt_that_hurts_is_never_served(registry: Registry) -> None:
    _populate(registry)
    target = Target(model="tiny-llama", method="gptq", bits=3)
    validator = CountingValidator({"gptq-w3-g128": -0.10, "gptq-w2-g128": 0.001, "sparsegpt-s50": -0.2})
    with pytest.raises(NoHelpfulPrompt) as info:
        resolve(registry, target, validator=validator, top_k=3, min_gain=0.01)
    assert info.value.exit_code == 4
    with pytest.raises(NoHelpfulPrompt):
        resolve(registry, target)  # unvalidated resolve must not serve what was measured and rejected


def test_no_compatible_prompt_is_exit_code_3(registry: Registry) -> None:
    with pytest.raises(NoCompatiblePrompt) as info:
        resolve(registry, Target(model="unknown-model", bits=3))
    assert info.value.exit_code == 3
    registry.publish_bytes(artifact_bytes(1, model="other", fp=FP_B))
    registry.publish_bytes(artifact_bytes(2, model="lonely", fp=FP_A))
    registry.deprecate("lonely/gptq-w3-g128/wiki:1")
    with pytest.raises(NoCompatiblePrompt, match="no prompt shares the embedding space"):
        resolve(registry, Target(model="lonely", bits=3))


def test_validation_needs_a_full_target(registry: Registry) -> None:
    _populate(registry)
    with pytest.raises(InvalidInput, match="fully specified"):
        resolve(registry, Target(model="tiny-llama", bits=3), validator=CountingValidator({}))
