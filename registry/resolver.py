"""Resolve a target to a served prompt: rank (``matcher``), then optionally validate on the target itself.

The registry never imports torch: validation is a callable passed in (the trainer provides one) that measures
perplexity of the target without and with a prompt. Every measurement is stored as evidence naming the target and
the windows (``registry.identity``), so the next resolve of the same target on the same windows ranks by it (tier 1)
without measuring again; a request on other windows or another checkpoint measures anew.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from .errors import InvalidInput, NoHelpfulPrompt
from .identity import EvalData
from .matcher import MEASURED, REJECTED, Candidate, Target
from .records import Measurement, PromptRecord
from .service import Registry

if TYPE_CHECKING:
    from .artifacts import PromptArtifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationScope:
    """What a validator would measure on, known before measuring: the target's identity and the windows."""

    target_key: str
    eval_data: EvalData
    target_source: str | None = None


class Validator(Protocol):
    """Measures perplexity of a target without and with a prompt (the trainer provides implementations)."""

    def scope(self, target: Target) -> ValidationScope: ...

    def __call__(self, artifact: PromptArtifact, target: Target) -> Measurement: ...


DEFAULT_TOP_K = 3
DEFAULT_MIN_GAIN = 0.01


@dataclass(frozen=True)
class Resolution:
    target: Target
    served: Candidate
    candidates: list[Candidate]
    measured: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target.describe(),
            "served": self.served.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "measured": len(self.measured),
        }


def resolve(
    registry: Registry,
    target: Target,
    *,
    validator: Validator | None = None,
    top_k: int = DEFAULT_TOP_K,
    min_gain: float = DEFAULT_MIN_GAIN,
    revalidate: bool = False,
) -> Resolution:
    """Rank candidates; with a validator, measure the top ``top_k`` on the target and serve the best that helps."""
    if top_k < 1:
        raise InvalidInput("top-k must be at least 1")
    if validator is None:
        ranked = registry.candidates(target)
        return Resolution(target=target, served=_first_servable(target, ranked), candidates=ranked)
    if target.spec is None:
        raise InvalidInput("--validate needs a fully specified target: --method and its level (bits or sparsity)")
    registry.candidates(target, limit=1)  # no compatible prompt: say so before loading anything to measure
    scope = validator.scope(target)
    target = replace(target, identity=scope.target_key)
    eval_key = scope.eval_data.key
    ranked = registry.candidates(target, eval_key=eval_key)
    if ranked[0].tier == MEASURED and not revalidate:
        return Resolution(target=target, served=_first_servable(target, ranked), candidates=ranked)
    from .artifacts import parse_artifact

    to_measure = [c for c in ranked if revalidate or c.tier != REJECTED][:top_k]
    measured = []
    for candidate in to_measure:
        artifact = parse_artifact(registry.fetch_record(candidate.prompt), source=candidate.prompt.ref)
        measurement = validator(artifact, target)
        accepted = measurement.relative_gain >= min_gain
        registry.record_evidence(target, candidate.prompt, measurement, accepted=accepted)
        log.info(
            "validated %s on %s: gain %.2f%%", candidate.prompt.ref, target.describe(), 100 * measurement.relative_gain
        )
        measured.append(candidate.prompt.id)
    reranked = registry.candidates(target, eval_key=eval_key)
    accepted_first = [c for c in reranked if c.tier == MEASURED]
    return Resolution(
        target=target,
        served=_first_servable(target, accepted_first or [c for c in reranked if c.prompt.id in measured]),
        candidates=reranked,
        measured=[c for c in reranked if c.prompt.id in measured],
    )


def _first_servable(target: Target, ranked: list[Candidate]) -> Candidate:
    for candidate in ranked:
        if candidate.tier != REJECTED:
            return _with_newer_versions(candidate, ranked)
    best = ranked[0].measurement if ranked else None
    detail = f" (best: {best.ppl_without:.2f} -> {best.ppl_with:.2f})" if best else ""
    raise NoHelpfulPrompt(f"no compatible prompt improves {target.describe()} enough when measured on it{detail}")


def _with_newer_versions(served: Candidate, ranked: list[Candidate]) -> Candidate:
    """Say why newer versions of the served prompt's name are not served: versions are immutable history, and one
    that measured worse (a continued or warm-started run that did not pay off) is kept but ranked below."""
    newer = [c for c in ranked if c.prompt.name == served.prompt.name and c.prompt.version > served.prompt.version]
    if not newer:
        return served
    windows = _windows_key(served.prompt)
    notes = []
    for candidate in newer[:3]:
        recovery = candidate.prompt.recovery
        shown = f"{recovery:.0%}" if recovery is not None else "no recorded recovery"
        same = windows is not None and _windows_key(candidate.prompt) == windows
        notes.append(f"{candidate.prompt.ref} recovered {shown} "
                     f"{'on the same windows' if same else 'on other windows (not compared)'}")
    return replace(served, explanation=f"{served.explanation}; served over newer {', '.join(notes)}: kept, not served")


def _windows_key(prompt: PromptRecord) -> str | None:
    """The identity of the test windows a prompt's recorded figures were measured on, if recorded."""
    data = prompt.metrics.get("eval_data")
    return data.get("key") if isinstance(data, dict) else None
