"""The matcher (DESIGN §7): rank compatible prompts for a compressed target, each with a one-line reason.

Tiers, best first:
  1. measured on this very target and accepted (best measured gain first);
  2. exact compression match (best recorded gap recovery first);
  3. same family at another level: equal-or-harsher severity first (prompts transfer down well), then the nearest;
  4. the other family (quantization <-> pruning, or a prompt learned on the uncompressed model).
A prompt learned on another base model of the same fingerprint class keeps its tier but ranks after the target
model's own prompts and says so. Inside a tier, a dataset/task match comes first: a recovery measured on another
dataset is not comparable. Prompts measured on this target and rejected rank last (tier 9) and are never served.
The metadata order (tiers 2-4) is written once in ``registry.rank_rules``, which the SQL path compiles; this module
adds evidence (tiers 1 and 9) and the explanations. Pure functions: no DB, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import rank_rules
from .compression import (
    FULL_PRECISION_BITS, MAX_GROUP_SIZE, METHODS, PRUNING, QUANTIZATION, CompressionSpec, method_info,
    parse_compression,
)
from .errors import InvalidInput
from .rank_rules import EXACT, MEASURED, OTHER_FAMILY, REJECTED, SAME_FAMILY, PythonOps, Shape
from .refs import check_text
from .records import Evidence, Measurement, PromptRecord

__all__ = [
    "EXACT", "MEASURED", "OTHER_FAMILY", "REJECTED", "SAME_FAMILY", "Candidate", "Target", "rank",
]
_QUANT_BITS = sorted({b for info in METHODS.values() for b in (*info.allowed_bits, info.fixed_bits) if b})


@dataclass(frozen=True)
class Target:
    """What a prompt is wanted for. Unset fields are wildcards; ``bits`` alone means any quantizer of that width."""

    model: str
    method: str | None = None
    bits: int | None = None
    sparsity: float | None = None
    group_size: int | None = None
    dataset: str | None = None
    task: str | None = None
    identity: str | None = None  # target key (``registry.identity``) of the very model, when known
    compression: str | None = None  # canonical spec when known exactly (keeps n:m patterns and the joint pruner)

    def __post_init__(self) -> None:
        if self.method is not None:
            info = method_info(self.method)
            if info.family == QUANTIZATION:
                allowed = (info.fixed_bits,) if info.fixed_bits else info.allowed_bits
                if self.bits is not None and self.bits not in allowed:
                    raise InvalidInput(f"{self.method} supports bits {list(allowed)}, got {self.bits}")
                if info.fixed_bits:
                    object.__setattr__(self, "bits", info.fixed_bits)
            elif self.bits is not None:
                raise InvalidInput(f"method {self.method!r} takes no bits")
        elif self.bits is not None and self.bits not in _QUANT_BITS:
            raise InvalidInput(f"no quantization method supports {self.bits} bits; choose from {_QUANT_BITS}")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise InvalidInput(f"sparsity must lie strictly between 0 and 1, got {self.sparsity}")
        if self.group_size is not None and not 0 < self.group_size <= MAX_GROUP_SIZE:
            raise InvalidInput(f"group size must be an integer in 1..{MAX_GROUP_SIZE}, got {self.group_size}")
        for key in ("model", "dataset", "task"):
            if getattr(self, key) not in (None, ""):
                check_text(getattr(self, key), key)

    @classmethod
    def for_spec(cls, model: str, spec: CompressionSpec, **fields: Any) -> Target:
        """The target of one fully specified compression (ranked as its method and levels; recorded exactly)."""
        bits = spec.bits if spec.family == QUANTIZATION else None
        return cls(model=model, method=spec.method, bits=bits, sparsity=spec.sparsity, group_size=spec.group_size,
                   compression=spec.canonical, **fields)

    @property
    def family(self) -> str | None:
        if self.method is not None:
            return METHODS[self.method].family
        if self.bits is not None:
            return QUANTIZATION
        if self.sparsity is not None:
            return PRUNING
        return None

    @property
    def severity(self) -> float | None:
        if self.family == PRUNING:
            return FULL_PRECISION_BITS * (1 - self.sparsity) if self.sparsity is not None else None
        if self.family == QUANTIZATION:
            return self.bits * (1 - (self.sparsity or 0.0)) if self.bits is not None else None
        return float(FULL_PRECISION_BITS) if self.method == "none" else None

    @property
    def spec(self) -> CompressionSpec | None:
        """The full spec when the target pins one down (needed to record evidence), else None."""
        if self.compression is not None:
            return parse_compression(self.compression)
        if self.method is None:
            return None
        try:
            return CompressionSpec(
                method=self.method, bits=self.bits, group_size=self.group_size, sparsity=self.sparsity
            )
        except InvalidInput:
            return None

    def describe(self) -> str:
        if self.spec is not None:
            return f"{self.model} {self.spec.canonical}"
        parts = [f"method={self.method}" if self.method else "", f"bits={self.bits}" if self.bits else ""]
        parts.append(f"sparsity={self.sparsity:g}" if self.sparsity else "")
        return " ".join([self.model, *filter(None, parts)]) if any(parts) else f"{self.model} (any compression)"

    @cached_property
    def shape(self) -> Shape:
        """Which fields are set: the structure of the ranking rules (``registry.rank_rules``) for this target."""
        return Shape(
            family=self.family, method=self.method is not None, bits=bool(self.bits),
            group_size=self.group_size is not None, sparsity=self.sparsity is not None, dataset=bool(self.dataset),
            task=bool(self.task), severity=self.severity is not None,
        )

    @cached_property
    def rank_params(self) -> dict[str, Any]:
        """The values the ranking rules compare prompts with."""
        return {
            "method": self.method, "bits": self.bits, "group_size": self.group_size, "sparsity": self.sparsity,
            "dataset": self.dataset, "task": self.task, "severity": self.severity, "model": self.model,
        }


@dataclass(frozen=True)
class Candidate:
    prompt: PromptRecord
    tier: int
    explanation: str
    other_model: bool = False
    measurement: Measurement | None = None
    sort_key: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.prompt.name,
            "version": self.prompt.version,
            "ref": self.prompt.ref,
            "sha256": self.prompt.sha256,
            "model": self.prompt.model,
            "compression": self.prompt.compression,
            "dataset": self.prompt.dataset,
            "tier": self.tier,
            "explanation": self.explanation,
            "recovery": self.prompt.recovery,
        }
        if self.measurement is not None:
            m = self.measurement
            out.update(
                ppl_without=m.ppl_without,
                ppl_with=m.ppl_with,
                relative_gain=m.relative_gain,
                eval_dataset=m.eval_dataset,
                eval_tokens=m.eval_tokens,
                eval_key=m.eval_key,
                eval_data=m.eval_data.to_dict() if m.eval_data else None,
                target_key=m.target_key,
            )
        return out


def rank(target: Target, prompts: Iterable[PromptRecord], evidence: Iterable[Evidence] = ()) -> list[Candidate]:
    """Order compatible prompts for ``target``; callers pass only prompts of the target's fingerprint class."""
    latest_evidence: dict[int, Evidence] = {}
    for item in sorted(evidence, key=lambda e: e.measured_at):
        latest_evidence[item.prompt_id] = item
    candidates = [_place(target, prompt, latest_evidence.get(prompt.id)) for prompt in prompts]
    return sorted(candidates, key=lambda c: c.sort_key)


def _place(target: Target, prompt: PromptRecord, evidence: Evidence | None) -> Candidate:
    """A prompt trained on several compressions is placed by the one that ranks it best for ``target``."""
    shape = target.shape
    placements = []
    for trained in prompt.trained_on:
        ops = PythonOps.for_spec(
            trained.spec, target.rank_params, model=prompt.model, dataset=prompt.dataset, task=prompt.task,
            recovery=trained.recovery, version=prompt.version, name=prompt.name,
        )
        placements.append((tuple(rank_rules.order(shape, ops)), trained, ops))
    metadata_key, trained, ops = min(placements, key=lambda placement: placement[0])
    spec, recovery = trained.spec, trained.recovery
    other_model = prompt.model != target.model
    if evidence is not None:
        m = evidence.measurement
        tier = MEASURED if evidence.accepted else REJECTED
        verdict = "accepted" if evidence.accepted else "rejected: too little gain"
        reason = (
            f"measured on this target: ppl {m.ppl_without:.2f} -> {m.ppl_with:.2f} "
            f"({-m.relative_gain:+.1%}) on {m.describe_data()}, {verdict}"
        )
        sort_key = (tier, *rank_rules.preferences(shape, ops), -m.relative_gain, *rank_rules.by_recovery(ops))
    else:
        sort_key = metadata_key
        tier = sort_key[0]
        reason = _explain(tier, target, spec, recovery, prompt.dataset)
        if len(placements) > 1:
            reason += f" (one of the {len(placements)} compressions it was trained on)"
    if other_model:
        reason += f"; learned on {prompt.model} (same tokenizer and hidden size): validate before use"
    if target.dataset and prompt.dataset != target.dataset and tier != MEASURED:
        reason += f"; trained on {prompt.dataset}, not {target.dataset}"
    return Candidate(
        prompt=prompt, tier=tier, explanation=reason, other_model=other_model,
        measurement=evidence.measurement if evidence else None, sort_key=sort_key,
    )


def _explain(tier: int, target: Target, spec: CompressionSpec, recovery: float | None, dataset: str) -> str:
    """The one-line reason for a placement without evidence (the order itself is ``rank_rules.order``)."""
    if tier == EXACT:
        shown = f"{recovery:.0%} of the gap" if recovery is not None else "no recorded recovery"
        return f"exact match {spec.canonical}; recovered {shown} on {dataset}"
    wanted = target.severity
    level = f"{spec.canonical} ({spec.severity:g} bits/weight"
    if wanted is None:
        return f"{level}) for a partial target"
    if tier == SAME_FAMILY:
        direction = "equal or harsher, transfers down well" if spec.severity <= wanted else "milder"
        return f"same family at {level} vs {wanted:g}: {direction})"
    return f"other family {level} vs {wanted:g})"
