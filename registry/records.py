"""Domain objects the registry returns: plain frozen dataclasses, independent of the ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .compression import CompressionSpec, parse_compression
from .identity import LEGACY, EvalData, legacy_eval_key
from .recovery import gap_recovered


@dataclass(frozen=True)
class BaseModelRecord:
    name: str
    fingerprint: str
    hidden_size: int
    vocab_size: int | None = None
    architecture: str | None = None
    source: str | None = None
    created_at: datetime | None = None
    id: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "architecture": self.architecture,
            "source": self.source,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class TrainedTarget:
    """One compression a prompt was trained on, with the gap it recovered there (None when not recorded)."""

    compression: str
    recovery: float | None

    @property
    def spec(self) -> CompressionSpec:
        return parse_compression(self.compression)


@dataclass(frozen=True)
class PromptRecord:
    """One published prompt version as the registry knows it."""

    id: int
    name: str
    version: int
    model: str
    model_fingerprint: str
    compression: str
    dataset: str
    task: str | None
    num_virtual_tokens: int
    hidden_size: int
    dtype: str
    sha256: str
    size_bytes: int
    object_key: str
    metrics: dict[str, Any]
    training: dict[str, Any]
    created_at: datetime
    created_by: str
    deprecated: bool
    aliases: tuple[str, ...] = field(default=())

    @property
    def spec(self) -> CompressionSpec:
        return parse_compression(self.compression)

    @property
    def recovery(self) -> float | None:
        return gap_recovered(self.metrics)

    def figures_on(self, compression: str) -> dict[str, Any]:
        """The recorded figures on one of the compressions the prompt was trained on (``{}`` if none recorded)."""
        per_target = self.metrics.get("targets")
        if isinstance(per_target, dict) and per_target:
            figures = per_target.get(compression)
            return figures if isinstance(figures, dict) else {}
        return self.metrics if compression == self.compression else {}

    @property
    def trained_on(self) -> tuple[TrainedTarget, ...]:
        """Every compression the prompt was trained on (``compression`` first), read from its metrics."""
        per_target = self.metrics.get("targets")
        names = [self.compression]
        if isinstance(per_target, dict):
            names += [name for name in per_target if name != self.compression]
        return tuple(TrainedTarget(name, gap_recovered(self.figures_on(name))) for name in names)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptRecord:
        """Rebuild a record from ``to_dict`` output (the client cache stores records this way)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["created_at"] = datetime.fromisoformat(data["created_at"])
        fields["aliases"] = tuple(data.get("aliases", ()))
        fields.setdefault("id", 0)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "compression": self.compression,
            "dataset": self.dataset,
            "task": self.task,
            "num_virtual_tokens": self.num_virtual_tokens,
            "hidden_size": self.hidden_size,
            "dtype": self.dtype,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "object_key": self.object_key,
            "metrics": self.metrics,
            "recovery": self.recovery,
            "training": self.training,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "deprecated": self.deprecated,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class Measurement:
    """A validator's verdict on one prompt applied to one target, with what it was measured on.

    ``target_key`` and ``eval_data`` identify the model and the windows (``registry.identity``): measurements are
    comparable, and reusable as evidence, only when both match. ``ppl_full`` is the uncompressed model on the same
    windows, when the validator had it (reports draw it as the reference).
    """

    ppl_without: float
    ppl_with: float
    eval_dataset: str
    eval_tokens: int
    target_key: str = LEGACY
    eval_data: EvalData | None = None
    target_source: str | None = None
    ppl_full: float | None = None

    @property
    def relative_gain(self) -> float:
        return (self.ppl_without - self.ppl_with) / self.ppl_without

    @property
    def eval_key(self) -> str:
        return self.eval_data.key if self.eval_data is not None else legacy_eval_key(self.eval_dataset)

    def describe_data(self) -> str:
        return (
            self.eval_data.describe() if self.eval_data is not None else f"{self.eval_dataset} (windows not recorded)"
        )


@dataclass(frozen=True)
class Evidence:
    """A stored measurement of ``prompt_id`` on a target (the matcher's tier 1)."""

    prompt_id: int
    target_model: str
    target_compression: str
    measurement: Measurement
    accepted: bool
    measured_at: datetime
    prompt_ref: str = ""
