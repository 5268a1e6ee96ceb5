"""Compress a loaded model by a ``CompressionSpec``, caching calibrated results on disk.

Methods: ``gptq`` (GPTQModel), ``bnb-nf4`` / ``bnb-fp4`` / ``bnb-int8`` (bitsandbytes), ``sparsegpt`` / ``wanda``
(llmcompressor), ``magnitude`` (plain torch), and joint ``gptq`` + pruning (prune, then quantize the pruned model,
then re-apply the pruning mask, since GPTQ's error feedback would otherwise refill pruned weights).

Cache layout (``$CTPREG_HOME/compressed``)::

    <model>/<canonical>-<key>/
        pruned.safetensors     decoder Linear weights after calibrated pruning
        gptq/                  GPTQModel's packed checkpoint
    <model>/hf-<key>/          the base (or pruned) model as an HF folder, which GPTQModel needs

``key`` hashes the model's source and fingerprint, the spec and the calibration tokens, so validation and
evaluation reuse exactly what training compressed. Folders are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctpreg.registry.compression import QUANTIZATION, CompressionSpec
from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.prompted import decoder_linears

from ..models import LoadedModel, export_checkpoint, freeze

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompressConfig:
    """How to compress: the spec plus the calibration budget (calibration windows come from ``calibration``)."""

    spec: CompressionSpec
    calibration: str = "wiki"
    calibration_windows: int = 32
    calibration_seq_len: int = 256
    gptq_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.calibration_windows < 1 or self.calibration_seq_len < 16 or self.gptq_batch_size < 1:
            raise InvalidInput("calibration needs >= 1 window of >= 16 tokens and a batch size >= 1")

    @property
    def needs_calibration(self) -> bool:
        return self.spec.method == "gptq" or self.spec.prune_method in {"sparsegpt", "wanda"}


@dataclass
class CompressedModel:
    model: nn.Module
    spec: CompressionSpec
    seconds: float
    from_cache: bool
    folder: Path | None = None  # the cache folder (GPTQ's packed checkpoint is ``folder / "gptq"``)
    identity: dict[str, str] | None = None  # what the cache key hashes: source, fingerprint, spec, calibration


class CompressionCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def identity(loaded: LoadedModel, spec: CompressionSpec, calibration: torch.Tensor | None) -> dict[str, str]:
        """What decides a compressed model's weights: the base model, the spec and the calibration tokens."""
        return {
            "model": loaded.source.slug, "source": loaded.source.describe(), "fingerprint": loaded.fingerprint,
            "spec": spec.canonical,
            "calibration": hashlib.sha256(calibration.numpy().tobytes()).hexdigest() if calibration is not None else "",
        }

    def folder(self, loaded: LoadedModel, spec: CompressionSpec, calibration: torch.Tensor | None) -> Path:
        parts = self.identity(loaded, spec, calibration)
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / loaded.source.slug / f"{spec.canonical}-{key}"


def compress(
    loaded: LoadedModel, spec: CompressionSpec, *, calibration: torch.Tensor | None, cache: CompressionCache,
    gptq_batch_size: int = 16,
) -> CompressedModel:
    """Compress ``loaded.model`` in place (or replace it, for GPTQ) and return the frozen result."""
    started = time.perf_counter()
    identity = cache.identity(loaded, spec, calibration)
    if spec.method == "none":
        return CompressedModel(loaded.model, spec, 0.0, False, identity=identity)
    folder = cache.folder(loaded, spec, calibration)
    from_cache = (folder / "done").is_file()
    folder.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    if spec.prune_method is not None:
        model = _prune(loaded, spec, calibration, folder)
    if spec.family == QUANTIZATION:
        model = _quantize(loaded, spec, calibration, folder, gptq_batch_size)
    (folder / "done").touch()
    return CompressedModel(freeze(model), spec, time.perf_counter() - started, from_cache, folder, identity)


def _prune(loaded: LoadedModel, spec: CompressionSpec, calibration: torch.Tensor | None, folder: Path) -> nn.Module:
    from safetensors.torch import load_file, save_file

    model = loaded.model
    if spec.prune_method == "magnitude":
        from .magnitude import prune_magnitude

        return prune_magnitude(model, spec)
    cached = folder / "pruned.safetensors"
    expected = {f"{name}.weight": layer.weight for name, layer in decoder_linears(model).items()}
    if cached.is_file():
        weights = load_file(str(cached), device=str(loaded.device))
        if weights.keys() == expected.keys() and all(w.shape == expected[k].shape for k, w in weights.items()):
            model.load_state_dict(weights, strict=False)  # exactly the decoder's Linear weights, checked above
            return model
        log.warning("cached pruned weights %s do not match the model's layers; pruning again", cached)
        cached.unlink()
    if calibration is None:
        raise InvalidInput(f"{spec.prune_method} needs calibration data")
    from .pruning import prune_oneshot

    prune_oneshot(model, loaded.tokenizer, spec, calibration)
    weights = {
        f"{name}.weight": layer.weight.detach().cpu().contiguous() for name, layer in decoder_linears(model).items()
    }
    tmp = folder / ".pruned.safetensors.tmp"
    save_file(weights, str(tmp))
    tmp.replace(cached)
    return model


def _quantize(
    loaded: LoadedModel, spec: CompressionSpec, calibration: torch.Tensor | None, folder: Path, batch_size: int
) -> nn.Module:
    if spec.method.startswith("bnb-"):
        from .bnb import quantize_bnb

        return quantize_bnb(loaded.model, spec)
    from .gptq import dequantize_dense, load_packed, quantize_gptq

    packed = folder / "gptq"
    if not (packed / "quantize_config.json").is_file():
        if calibration is None:
            raise InvalidInput("gptq needs calibration data")
        checkpoint = export_checkpoint(loaded, folder / "hf")
        tmp = folder / "gptq.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        quantize_gptq(checkpoint, spec, calibration, tmp, batch_size=batch_size)
        tmp.rename(packed)
        shutil.rmtree(checkpoint, ignore_errors=True)
    pruned_masks = _masks(loaded.model) if spec.prune_method is not None else None
    dense = dequantize_dense(load_packed(packed)).to(loaded.device)
    if pruned_masks is not None:
        _apply_masks(dense, pruned_masks)
    return dense


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight != 0 for name, layer in decoder_linears(model).items()}


@torch.no_grad()
def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = decoder_linears(model)
    for name, mask in masks.items():
        layers[name].weight.mul_(mask.to(layers[name].weight.dtype))


__all__ = ["CompressConfig", "CompressedModel", "CompressionCache", "compress"]
