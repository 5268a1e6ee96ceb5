"""Load causal LMs (hub id, local folder or GGUF file), pick devices, and fingerprint their embedding space."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.fingerprint import embedding_fingerprint

from .catalog import ModelSource

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model with its tokenizer, the source it came from and its embedding-space fingerprint."""

    model: Any
    tokenizer: Any
    source: ModelSource
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``; asking for a GPU that is not there is an error, not a
    silent fallback to the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::([0-9]{1,2}))?", device)
    if match is None:
        raise InvalidInput(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device != "cpu":
        index = int(match[1] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise InvalidInput(f"{device} is not available here ({torch.cuda.device_count()} CUDA devices)")
    return torch.device(device)


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware. On CPUs without AVX512-BF16/AMX (e.g. AVX2-only EPYCs) oneDNN
    emulates bf16 and a training step is ~25x slower than fp32 (measured: 220 s vs 8 s on SmolLM2-135M)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs; fp32 on CPU, where the weights are small and exact evaluation matters more than speed."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def model_fingerprint(tokenizer: Any, model: nn.Module) -> str:
    """DESIGN §3: the tokenizer's vocabulary, vocab size and hidden size; never the weights or their dtype."""
    weight = model.get_input_embeddings().weight
    return embedding_fingerprint(
        tokenizer.get_vocab(), vocab_size=int(weight.shape[0]), hidden_size=int(weight.shape[1])
    )


def load_model(
    source: ModelSource, *, device: str = "auto", dtype: torch.dtype | None = None, converted: Path | None = None
) -> LoadedModel:
    """Load a frozen causal LM in eval mode; large models on a GPU are spread with ``device_map="auto"``.

    With ``converted`` (``$CTPREG_HOME/models``) a GGUF file is dequantized once and kept there as a plain
    checkpoint (``gguf_cache``); ``source`` still names the GGUF file, so cache keys and artifacts are unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import gguf_cache

    target = resolve_device(device)
    dtype = dtype or default_dtype(target)
    location, gguf_file, folder = source.location, source.gguf_file, None
    if gguf_file and converted is not None:
        folder = gguf_cache.converted_folder(source, converted)
        if gguf_cache.verified(folder):
            location, gguf_file = str(folder), None
    kwargs: dict[str, Any] = {"dtype": dtype, **({"gguf_file": gguf_file} if gguf_file else {})}
    if target.type == "cuda":
        kwargs["device_map"] = "auto"
    log.info("loading %s%s", source.describe(), "" if location == source.location else f" from {location}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **({"gguf_file": gguf_file} if gguf_file else {}))
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:  # no such folder or hub id, not a model, a malformed id
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"cannot load {source.describe()}: {reason}") from exc
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        # transformers dequantizes GGUF into plain Linear layers but keeps the GGUF quantizer tag, which makes
        # save_pretrained refuse; the weights are ordinary tensors, so drop the tag.
        model.hf_quantizer.remove_quantization_config(model)
    if gguf_file and folder is not None and dtype == torch.float32:  # only full precision is kept for every dtype
        try:
            gguf_cache.save_converted(model, tokenizer, source, folder)
        except OSError as exc:  # a full disk or read-only home costs the next load its time, nothing else
            log.warning("could not keep the converted checkpoint in %s: %s", folder, exc)
    if target.type != "cuda":
        model.to(target)
    return wrap_loaded(model, tokenizer, source)


def wrap_loaded(model: nn.Module, tokenizer: Any, source: ModelSource) -> LoadedModel:
    freeze(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, fingerprint=model_fingerprint(tokenizer, model))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients for any weight: only the prompt ever trains."""
    model.eval()
    model.requires_grad_(False)
    return model


def export_checkpoint(loaded: LoadedModel, folder: Path) -> Path:
    """Save as a normal HF checkpoint (safetensors + tokenizer); GPTQModel and llmcompressor want a folder."""
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    loaded.model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
