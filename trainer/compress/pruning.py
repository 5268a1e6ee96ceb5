"""SparseGPT and Wanda through llmcompressor's ``oneshot`` (runs on CPU), unstructured or N:M.

The pruned model stays dense with zeros (llmcompressor saves unstructured sparsity densely), so it trains and
evaluates like any HF model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ctpreg.registry.compression import CompressionSpec

log = logging.getLogger(__name__)


def _modifier(spec: CompressionSpec):  # type: ignore[no-untyped-def]
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    structure = f"{spec.prune_n}:{spec.prune_m}" if spec.prune_n else "0:0"
    common = dict(sparsity=spec.sparsity, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])
    if spec.prune_method == "sparsegpt":
        return SparseGPTModifier(**common, dampening_frac=0.01, block_size=128)
    return WandaPruningModifier(**common)


def prune_oneshot(model: nn.Module, tokenizer: Any, spec: CompressionSpec, calibration: torch.Tensor) -> nn.Module:
    """Prune ``model`` in place with ``spec.prune_method`` using ``calibration`` windows [N, L]."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    rows = calibration.tolist()
    with _config_on_disk(model):
        _run_oneshot(model, tokenizer, spec, rows, calibration.shape[1])
    return model


@contextlib.contextmanager
def _config_on_disk(model: nn.Module) -> Iterator[None]:
    """llmcompressor 0.14's ``validate_model`` re-reads ``config.name_or_path`` from disk, which an in-memory model
    (e.g. one loaded from GGUF) does not have; point it at a temporary copy of the config for the call."""
    original = model.config.name_or_path
    with tempfile.TemporaryDirectory(prefix="ctpreg-config-") as folder:
        model.config.save_pretrained(folder)
        model.config.name_or_path = folder
        try:
            yield
        finally:
            model.config.name_or_path = original


def _run_oneshot(model: nn.Module, tokenizer: Any, spec: CompressionSpec, rows: list[list[int]], seq_len: int) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot

    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    log.info("%s: %d calibration windows of %d tokens", spec.canonical, len(rows), seq_len)
    oneshot(
        model=model, tokenizer=tokenizer, dataset=dataset, recipe=_modifier(spec), num_calibration_samples=len(rows),
        max_seq_length=seq_len,
    )
