"""Domain objects the registry returns: plain frozen dataclasses, independent of the ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .compression import CompressionSpec, parse_compression
from .errors import InvalidInput
from .identity import LEGACY, EvalData, legacy_eval_key
from .lineage import Lineage
from .limits import MAX_ARTIFACT_BYTES, MAX_HIDDEN_SIZE, MAX_VIRTUAL_TOKENS, SUPPORTED_DTYPE_NAMES
from .record_checks import MAX_ID, Fields, check_sha256
from .recovery import gap_recovered
from .refs import PromptRef, check_alias, check_fingerprint, check_model_name, check_name, check_text
from .stores.base import object_key as object_key_for

MAX_VERSION = 999_999_999  # what a reference may name (``refs``: at most 9 digits)
MAX_ALIASES = 1024


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

    @property
    def lineage(self) -> Lineage:
        """Parent, cumulative steps, optimizer state and curve, as its artifact's ``training`` records them."""
        return Lineage.from_training(self.training)

    def answers(self, ref: PromptRef) -> bool:
        """Whether this record is what ``ref`` names: an answer for another reference is never taken for it."""
        if ref.sha_prefix is not None:
            return self.sha256.startswith(ref.sha_prefix)
        if ref.version is not None:
            return self.name == ref.name and self.version == ref.version
        return self.name == ref.name and ref.alias in self.aliases

    @classmethod
    def from_dict(cls, data: object, what: str = "prompt") -> PromptRecord:
        """A record from ``to_dict`` output that came from outside (an HTTP answer, a cache entry), every field
        checked: ``InvalidInput`` names the first one that is not what a registry writes."""
        fields = Fields(data, what)
        sha256 = fields.checked("sha256", check_sha256)
        object_key = fields.text("object_key", max_chars=128)
        if object_key != object_key_for(sha256):
            raise InvalidInput(f"{what}.object_key is not the content address of its sha256")
        compression = fields.checked("compression", canonical_compression)
        return cls(
            id=fields.integer("id", 0, MAX_ID, optional=True) or 0,
            name=fields.checked("name", check_name),
            version=fields.integer("version", 1, MAX_VERSION),
            model=fields.checked("model", check_model_name),
            model_fingerprint=fields.checked("model_fingerprint", check_fingerprint),
            compression=compression,
            dataset=fields.checked("dataset", lambda v: check_text(v, "dataset")),
            task=fields.checked("task", lambda v: check_text(v, "task"), optional=True),
            num_virtual_tokens=fields.integer("num_virtual_tokens", 1, MAX_VIRTUAL_TOKENS),
            hidden_size=fields.integer("hidden_size", 1, MAX_HIDDEN_SIZE),
            dtype=fields.checked("dtype", _dtype),
            sha256=sha256,
            size_bytes=fields.integer("size_bytes", 1, MAX_ARTIFACT_BYTES),
            object_key=object_key,
            metrics=fields.mapping("metrics"),
            training=_with_lineage(fields.mapping("training"), what),
            created_at=fields.moment("created_at"),
            created_by=fields.text("created_by"),
            deprecated=fields.boolean("deprecated"),
            aliases=tuple(fields.strings("aliases", check_alias, max_items=MAX_ALIASES)),
        )

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
            "parent": ({"ref": self.lineage.parent_ref, "sha256": self.lineage.parent_sha256}
                       if self.lineage.parent_ref else None),
            "steps_total": self.lineage.steps_total,
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


def canonical_compression(text: str) -> str:
    if parse_compression(text).canonical != text:
        raise InvalidInput(f"{text!r} is not a canonical compression string")
    return text


def _with_lineage(training: dict[str, Any], what: str) -> dict[str, Any]:
    """``training`` once its lineage fields are checked: a state digest from outside names no path until then."""
    try:
        Lineage.from_training(training)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}.{exc}") from None
    return training


def _dtype(text: str) -> str:
    if text not in SUPPORTED_DTYPE_NAMES:
        raise InvalidInput(f"dtype must be one of {sorted(SUPPORTED_DTYPE_NAMES)}")
    return text
