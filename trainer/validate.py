"""The validator ``ctpreg resolve --validate`` passes to the registry's resolver.

For a target (model, compression) it loads the base model once, compresses a copy of it to the target spec (reusing
the compression cache), and measures perplexity on validation windows without and with each candidate prompt, on
the same windows. The registry stays torch-free: it only ever sees this object as a callable.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctpreg.registry.artifacts import PromptArtifact
from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.matcher import Target
from ctpreg.registry.records import Measurement

from .compress import CompressConfig
from .evaluate import perplexity
from .models import LoadedModel
from .pipeline import check_compatible, compress_loaded, eval_windows_for, load_base

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationConfig:
    dataset: str | None = "news"
    text_file: Path | None = None
    seq_len: int = 256
    max_windows: int = 20
    calibration: str = "wiki"
    calibration_windows: int = 32
    model_path: str | None = None
    device: str = "auto"

    @property
    def label(self) -> str:
        return str(self.text_file) if self.text_file else f"{self.dataset}/validation"


@dataclass
class _Prepared:
    key: str
    model: Any
    baseline: float


@dataclass
class TargetValidator:
    """Callable ``(artifact, target) -> Measurement``; keeps the base model and the current target in memory."""

    config: ValidationConfig
    home: Path
    base: LoadedModel | None = None
    calls: int = 0
    _windows: torch.Tensor | None = None
    _prepared: _Prepared | None = None
    _full: dict[str, float] = field(default_factory=dict)

    def __call__(self, artifact: PromptArtifact, target: Target) -> Measurement:
        prepared = self._prepare(target)
        check_compatible(self._base(target.model), artifact.metadata)
        prompt = torch.from_numpy(artifact.embeddings.astype("float32"))
        with_prompt = perplexity(prepared.model, self.windows(target.model), prompt=prompt, label="validate prompted")
        self.calls += 1
        return Measurement(
            ppl_without=prepared.baseline, ppl_with=with_prompt.ppl, eval_dataset=self.config.label,
            eval_tokens=with_prompt.tokens,
        )

    def full_perplexity(self, model_name: str) -> float:
        """The uncompressed base model on the same windows (for reports)."""
        if model_name not in self._full:
            base = self._base(model_name)
            self._full[model_name] = perplexity(base.model, self.windows(model_name), label="validate full").ppl
        return self._full[model_name]

    def windows(self, model_name: str) -> torch.Tensor:
        if self._windows is None:
            cfg = self.config
            self._windows = eval_windows_for(
                self._base(model_name), dataset=None if cfg.text_file else cfg.dataset, text_file=cfg.text_file,
                seq_len=cfg.seq_len, max_windows=cfg.max_windows,
            )
        return self._windows

    def _base(self, model_name: str) -> LoadedModel:
        if self.base is None:
            self.base = load_base(model_name, model_path=self.config.model_path, device=self.config.device)
        if self.base.source.slug != model_name:
            raise InvalidInput(f"this validator holds {self.base.source.slug}, not {model_name}")
        return self.base

    def _prepare(self, target: Target) -> _Prepared:
        spec = target.spec
        if spec is None:
            raise InvalidInput("validation needs a fully specified target compression")
        key = f"{target.model}/{spec.canonical}"
        if self._prepared is None or self._prepared.key != key:
            self._prepared = None  # free the previous target before compressing the next
            working = copy.deepcopy(self._base(target.model))
            cfg = self.config
            compressed = compress_loaded(
                working, CompressConfig(spec, calibration=cfg.calibration, calibration_windows=cfg.calibration_windows),
                self.home,
            )
            baseline = perplexity(compressed.model, self.windows(target.model), label=f"validate {spec.canonical}").ppl
            self._prepared = _Prepared(key, compressed.model, baseline)
        return self._prepared
