"""The validators ``ctpreg resolve --validate`` passes to the registry's resolver.

Each measures perplexity of one target without and with a candidate prompt on the same windows, and says up front
(``scope``) what it measures on, so the resolver reuses evidence only for the same target and the same windows.
Validation decides what is served, so it measures a corpus' ``select`` split by default; figures a user is shown as
results (``ctpreg eval``, the demo's table) come from ``test``, which chose nothing.

- ``TargetValidator``: the target is a compression of the base model that ctpreg makes itself (compression cache
  reused); its identity is the source model, spec and calibration tokens.
- ``CheckpointValidator``: the target is a checkpoint the user gave (``--target-path``), loaded as it is; its
  identity is the digest of its weight and config files.

The registry stays torch-free: it only ever sees these objects through the ``Validator`` protocol.
"""

from __future__ import annotations

import abc
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctpreg.registry.artifacts import PromptArtifact
from ctpreg.registry.errors import Conflict, InvalidInput
from ctpreg.registry.identity import COMPRESSED, target_key
from ctpreg.registry.matcher import Target
from ctpreg.registry.records import Measurement
from ctpreg.registry.resolver import ValidationScope

from .checkpoint import LoadedCheckpoint
from .compress import CompressConfig, CompressionCache
from .evaluate import perplexity
from .models import LoadedModel
from .data import SELECT
from .pipeline import EvalSet, calibration_windows, check_compatible, compress_loaded, eval_set, load_base

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationConfig:
    dataset: str | None = "news"
    text_file: Path | None = None
    seq_len: int = 256
    max_windows: int = 20
    split: str = SELECT
    calibration: str = "wiki"
    calibration_windows: int = 32
    model_path: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.max_windows < 1:
            raise InvalidInput("validation needs --seq-len >= 2 and --max-windows >= 1")


@dataclass
class _Baseline:
    key: str
    model: Any
    ppl: float


class _PerplexityValidator(abc.ABC):
    """Shared measuring: one target model in memory at a time, its unprompted perplexity measured once."""

    config: ValidationConfig
    calls: int
    _eval: EvalSet | None
    _current: _Baseline | None

    @abc.abstractmethod
    def _tokenizer(self, target: Target) -> Any: ...

    @abc.abstractmethod
    def _target_key(self, target: Target) -> tuple[str, str | None]: ...

    @abc.abstractmethod
    def _target_model(self, target: Target) -> Any: ...

    @abc.abstractmethod
    def _check(self, artifact: PromptArtifact, target: Target) -> None: ...

    def full_perplexity(self, model_name: str) -> float | None:
        """The uncompressed model on the same windows, where this validator has it (recorded for reports)."""
        return None

    def eval_set(self, target: Target) -> EvalSet:
        if self._eval is None:
            cfg = self.config
            self._eval = eval_set(
                self._tokenizer(target), dataset=None if cfg.text_file else cfg.dataset, text_file=cfg.text_file,
                seq_len=cfg.seq_len, max_windows=cfg.max_windows, split=cfg.split,
            )
            log.info("validating on %s", self._eval.data.describe())
        return self._eval

    def scope(self, target: Target) -> ValidationScope:
        key, source = self._target_key(target)
        return ValidationScope(key, self.eval_set(target).data, source)

    def __call__(self, artifact: PromptArtifact, target: Target) -> Measurement:
        self._check(artifact, target)
        key, source = self._target_key(target)
        evaluation = self.eval_set(target)
        if self._current is None or self._current.key != key:
            self._current = None  # free the previous target before loading the next
            model = self._target_model(target)
            baseline = perplexity(model, evaluation.windows, label=f"validate {target.describe()}").ppl
            self._current = _Baseline(key, model, baseline)
        prompt = torch.from_numpy(artifact.embeddings.astype("float32"))
        with_prompt = perplexity(self._current.model, evaluation.windows, prompt=prompt, label="validate prompted")
        self.calls += 1
        return Measurement(
            ppl_without=self._current.ppl, ppl_with=with_prompt.ppl, eval_dataset=evaluation.data.label,
            eval_tokens=with_prompt.tokens, target_key=key, eval_data=evaluation.data, target_source=source,
            ppl_full=self.full_perplexity(target.model),
        )


@dataclass
class TargetValidator(_PerplexityValidator):
    """Validates on a compression of the base model made here; keeps the base model and one target in memory."""

    config: ValidationConfig
    home: Path
    base: LoadedModel | None = None
    calls: int = 0
    _eval: EvalSet | None = None
    _current: _Baseline | None = None
    _keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    _full: dict[str, float] = field(default_factory=dict)

    def full_perplexity(self, model_name: str) -> float:
        """The uncompressed base model on the same windows, measured once."""
        if model_name not in self._full:
            target = Target(model=model_name)
            windows = self.eval_set(target).windows
            self._full[model_name] = perplexity(self._base(model_name).model, windows, label="validate full").ppl
        return self._full[model_name]

    def _compress_config(self, target: Target) -> CompressConfig:
        spec = target.spec
        if spec is None:
            raise InvalidInput("validation needs a fully specified target compression")
        return CompressConfig(
            spec, calibration=self.config.calibration, calibration_windows=self.config.calibration_windows
        )

    def _tokenizer(self, target: Target) -> Any:
        return self._base(target.model).tokenizer

    def _target_key(self, target: Target) -> tuple[str, str | None]:
        config = self._compress_config(target)
        if config.spec.canonical not in self._keys:
            base = self._base(target.model)
            parts = CompressionCache.identity(base, config.spec, calibration_windows(base, config))
            source = (f"{parts['source']} compressed to {parts['spec']} here, calibration "
                      f"{config.calibration} x{config.calibration_windows} ({parts['calibration'][:12] or 'none'})")
            self._keys[config.spec.canonical] = (target_key(COMPRESSED, parts), source)
        return self._keys[config.spec.canonical]

    def _target_model(self, target: Target) -> Any:
        working = copy.deepcopy(self._base(target.model))
        return compress_loaded(working, self._compress_config(target), self.home).model

    def _check(self, artifact: PromptArtifact, target: Target) -> None:
        check_compatible(self._base(target.model), artifact.metadata)

    def _base(self, model_name: str) -> LoadedModel:
        if self.base is None:
            self.base = load_base(
                model_name, model_path=self.config.model_path, device=self.config.device, home=self.home
            )
        if self.base.source.slug != model_name:
            raise InvalidInput(f"this validator holds {self.base.source.slug}, not {model_name}")
        return self.base


@dataclass
class CheckpointValidator(_PerplexityValidator):
    """Validates on a checkpoint the user gave, loaded as it is (see ``trainer.checkpoint``)."""

    config: ValidationConfig
    checkpoint: LoadedCheckpoint
    calls: int = 0
    _eval: EvalSet | None = None
    _current: _Baseline | None = None

    def _tokenizer(self, target: Target) -> Any:
        return self.checkpoint.tokenizer

    def _target_key(self, target: Target) -> tuple[str, str | None]:
        return self.checkpoint.target.identity, str(self.checkpoint.path)

    def _target_model(self, target: Target) -> Any:
        return self.checkpoint.model

    def _check(self, artifact: PromptArtifact, target: Target) -> None:
        if artifact.metadata.model_fingerprint != self.checkpoint.target.fingerprint:
            raise Conflict(f"prompt learned for {artifact.metadata.model} does not share the embedding space of "
                           f"{self.checkpoint.path}")
