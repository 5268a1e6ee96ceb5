"""The prompt artifact (DESIGN §4): one safetensors file that describes itself without the DB.

Tensor ``prompt_embeddings`` [num_virtual_tokens, hidden_size] (PEFT's key), float32 by default. ``__metadata__`` holds
``format=ctpreg-prompt/1``, ``model``, ``model_fingerprint``, ``compression``, ``dataset``, ``num_virtual_tokens``,
``hidden_size``, ``training`` (JSON), ``metrics`` (JSON) and optionally ``task``. A prompt trained on several
compressed versions of its base model also has ``targets`` (JSON list of canonical specs, ``compression`` first) and
its figures per target in ``metrics.targets``; a single-target artifact has neither, so its bytes are as before.
Reading goes through safetensors' numpy loader only, never pickle, so this module stays torch-free; every check
fails with one clear line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from . import strict_json
from .compression import CompressionSpec, parse_compression
from .digest import sha256_hex
from .errors import InvalidArtifact, InvalidInput
from .files import write_output
from .lineage import Lineage
from .limits import MAX_ARTIFACT_BYTES, MAX_HIDDEN_SIZE, MAX_VIRTUAL_TOKENS, SUPPORTED_DTYPE_NAMES
from .recovery import is_perplexity
from .refs import check_fingerprint, check_model_name, check_text
from .safetensors_header import canonical, header_metadata, read_header

FORMAT = "ctpreg-prompt/1"
TENSOR_NAME = "prompt_embeddings"
REQUIRED_KEYS = (
    "format", "model", "model_fingerprint", "compression", "dataset", "num_virtual_tokens", "hidden_size",
    "training", "metrics",
)
SUPPORTED_DTYPES = {name: getattr(np, name) for name in sorted(SUPPORTED_DTYPE_NAMES)}
# Limits (README, "Prompt artifact"): the DB columns' sizes, and sizes no real prompt comes near.
MAX_JSON_BYTES = 64 * 1024
MAX_TARGETS = 16
PERPLEXITY_KEYS = ("ppl_full", "ppl_compressed", "ppl_prompted")


@dataclass(frozen=True)
class PromptMetadata:
    """What a prompt was learned for and how well it did; round-trips through ``__metadata__``."""

    model: str
    model_fingerprint: str
    compression: CompressionSpec
    dataset: str
    num_virtual_tokens: int
    hidden_size: int
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    targets: tuple[CompressionSpec, ...] = ()  # every compression trained on (first = ``compression``) if several

    def __post_init__(self) -> None:
        """Every limit is checked here, where metadata is built or read, so both DB backends see the same values
        and nothing is uploaded that a column would refuse."""
        check_model_name(self.model)
        check_fingerprint(self.model_fingerprint)
        check_text(self.dataset, "dataset")
        if self.task is not None:
            check_text(self.task, "task")
        for key, value, limit in (("num_virtual_tokens", self.num_virtual_tokens, MAX_VIRTUAL_TOKENS),
                                  ("hidden_size", self.hidden_size, MAX_HIDDEN_SIZE)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise InvalidInput(f"{key} must be an integer in 1..{limit}, got {value!r}")
        for key, value in (("training", self.training), ("metrics", self.metrics)):
            if not isinstance(value, dict):
                raise InvalidInput(f"{key} must be a JSON object")
            strict_json.dumps(value, key, max_bytes=MAX_JSON_BYTES)
        _check_perplexities(self.metrics, "metrics")
        if self.targets or "targets" in self.metrics:
            self._check_targets()
        self.lineage  # noqa: B018 - a malformed parent, state or curve is refused where metadata is built or read

    @property
    def lineage(self) -> Lineage:
        return Lineage.from_training(self.training)

    def _check_targets(self) -> None:
        names = [spec.canonical for spec in self.targets]
        if not 2 <= len(names) <= MAX_TARGETS or len(set(names)) != len(names):
            raise InvalidInput(f"targets must list 2..{MAX_TARGETS} distinct compressions, got {names}")
        if names[0] != self.compression.canonical:
            raise InvalidInput(f"targets must start with the compression {self.compression.canonical}, got {names[0]}")
        per_target = self.metrics.get("targets")
        if not isinstance(per_target, dict) or sorted(per_target) != sorted(names):
            raise InvalidInput(f"metrics.targets must hold the figures of exactly the targets {names}")
        for name, figures in per_target.items():
            if not isinstance(figures, dict):
                raise InvalidInput(f"metrics.targets.{name} must be a JSON object")
            _check_perplexities(figures, f"metrics.targets.{name}")

    @property
    def trained_on(self) -> tuple[CompressionSpec, ...]:
        return self.targets or (self.compression,)

    def target_metrics(self, spec: CompressionSpec) -> dict[str, Any]:
        """The figures measured on one of the targets trained on (the top-level metrics for a single target)."""
        if not self.targets:
            return self.metrics
        return self.metrics["targets"][spec.canonical]

    def to_strings(self) -> dict[str, str]:
        strings = {
            "format": FORMAT,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "compression": self.compression.canonical,
            "dataset": self.dataset,
            "num_virtual_tokens": str(self.num_virtual_tokens),
            "hidden_size": str(self.hidden_size),
            "training": strict_json.dumps(self.training, "training", max_bytes=MAX_JSON_BYTES),
            "metrics": strict_json.dumps(self.metrics, "metrics", max_bytes=MAX_JSON_BYTES),
        }
        if self.task:
            strings["task"] = self.task
        if self.targets:
            strings["targets"] = json.dumps([spec.canonical for spec in self.targets])
        return strings

    @classmethod
    def from_strings(cls, strings: Mapping[str, str]) -> PromptMetadata:
        missing = [key for key in REQUIRED_KEYS if key not in strings]
        if missing:
            raise InvalidArtifact(f"artifact metadata is missing keys: {', '.join(missing)}")
        if strings["format"] != FORMAT:
            raise InvalidArtifact(f"unsupported artifact format {strings['format']!r}; expected {FORMAT!r}")
        try:
            return cls(
                model=strings["model"],
                model_fingerprint=strings["model_fingerprint"],
                compression=parse_compression(strings["compression"]),
                dataset=strings["dataset"],
                num_virtual_tokens=_positive_int(strings, "num_virtual_tokens"),
                hidden_size=_positive_int(strings, "hidden_size"),
                training=_json_object(strings, "training"),
                metrics=_json_object(strings, "metrics"),
                task=strings.get("task") or None,
                targets=_targets(strings),
            )
        except InvalidInput as exc:
            raise InvalidArtifact(f"artifact metadata: {exc}") from None


def _check_perplexities(figures: dict[str, Any], where: str) -> None:
    for key in PERPLEXITY_KEYS:
        value = figures.get(key)
        if value is not None and not is_perplexity(value):
            raise InvalidInput(f"{where}.{key} must be a perplexity (a number >= 1), got {value!r}")


def _targets(strings: Mapping[str, str]) -> tuple[CompressionSpec, ...]:
    if "targets" not in strings:
        return ()
    value = strict_json.loads(strings["targets"], "artifact metadata targets", max_bytes=MAX_JSON_BYTES)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput("targets must be a JSON list of compression specs")
    return tuple(parse_compression(item) for item in value)


def _positive_int(strings: Mapping[str, str], key: str) -> int:
    value = strings[key]
    if not (value.isascii() and value.isdigit() and len(value) <= 9) or int(value) < 1:
        raise InvalidArtifact(f"artifact metadata {key}={value[:20]!r} is not a positive integer (at most 9 digits)")
    return int(value)


def _json_object(strings: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = strict_json.loads(strings[key], f"artifact metadata {key}", max_bytes=MAX_JSON_BYTES)
    except InvalidInput as exc:
        raise InvalidArtifact(str(exc)) from None
    if not isinstance(value, dict):
        raise InvalidArtifact(f"artifact metadata {key} must be a JSON object")
    return value


@dataclass(frozen=True)
class PromptArtifact:
    embeddings: np.ndarray
    metadata: PromptMetadata

    @property
    def dtype(self) -> str:
        return str(self.embeddings.dtype)


def serialize_artifact(embeddings: np.ndarray, metadata: PromptMetadata, *, dtype: str = "float32") -> bytes:
    """Validate and encode a prompt as safetensors bytes."""
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInput(f"unsupported dtype {dtype!r}; use one of {sorted(SUPPORTED_DTYPES)}")
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=SUPPORTED_DTYPES[dtype]))
    _check_embeddings(array, metadata)
    return canonical(save_safetensors({TENSOR_NAME: array}, metadata=metadata.to_strings()))


def write_artifact(
    path: str | Path, embeddings: np.ndarray, metadata: PromptMetadata, *, dtype: str = "float32"
) -> str:
    """Write the artifact whole (``files.write_output``: a regular file, temp file + rename) and return its sha256."""
    data = serialize_artifact(embeddings, metadata, dtype=dtype)
    write_output(Path(path), data)
    return sha256_hex(data)


def parse_artifact(data: bytes, *, source: str = "artifact") -> PromptArtifact:
    """Decode and check artifact bytes; raise ``InvalidArtifact`` with one line naming ``source`` on any flaw."""
    try:
        return _parse(data)
    except InvalidArtifact as exc:
        raise InvalidArtifact(f"{source}: {exc}") from None


def read_artifact(path: str | Path) -> tuple[PromptArtifact, bytes]:
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    if path.stat().st_size > MAX_ARTIFACT_BYTES:
        raise InvalidArtifact(f"{path}: larger than {MAX_ARTIFACT_BYTES} bytes; not a prompt artifact")
    data = path.read_bytes()
    return parse_artifact(data, source=str(path)), data


def _parse(data: bytes) -> PromptArtifact:
    if not data:
        raise InvalidArtifact("empty file")
    header = read_header(data)
    strings = header_metadata(header)
    _check_header_dtypes(header)
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise InvalidArtifact(f"not a readable safetensors file ({exc})") from None
    if set(tensors) != {TENSOR_NAME}:
        raise InvalidArtifact(f"expected exactly one tensor named {TENSOR_NAME!r}, found {sorted(tensors)}")
    metadata = PromptMetadata.from_strings(strings)
    embeddings = tensors[TENSOR_NAME]
    _check_embeddings(embeddings, metadata)
    return PromptArtifact(embeddings=embeddings, metadata=metadata)


_NUMPY_DTYPES = {"F32", "F16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def _check_header_dtypes(header: dict[str, Any]) -> None:
    """Name tensors numpy cannot hold (bf16, fp8) instead of failing inside the loader."""
    for name, info in header.items():
        if name != "__metadata__" and isinstance(info, dict) and info.get("dtype") not in _NUMPY_DTYPES:
            raise InvalidArtifact(f"tensor {name!r} has dtype {info.get('dtype')}; store prompts as float32 or float16")


def _check_embeddings(array: np.ndarray, metadata: PromptMetadata) -> None:
    if array.ndim != 2:
        raise InvalidArtifact(
            f"{TENSOR_NAME} must be 2-D [num_virtual_tokens, hidden_size], got shape {list(array.shape)}"
        )
    if str(array.dtype) not in SUPPORTED_DTYPES:
        raise InvalidArtifact(f"{TENSOR_NAME} dtype {array.dtype} unsupported; use float32 or float16")
    expected = (metadata.num_virtual_tokens, metadata.hidden_size)
    if array.shape != expected:
        raise InvalidArtifact(f"{TENSOR_NAME} shape {list(array.shape)} disagrees with metadata {list(expected)}")
    if not np.isfinite(array).all():
        raise InvalidArtifact(f"{TENSOR_NAME} contains NaN or Inf values")
