"""PEFT prompt-tuning interop: our artifact <-> a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors`` holding ``prompt_embeddings``), which ``PeftModel.from_pretrained`` loads.

Torch-free: tensors go through safetensors' numpy API. Adapters saved as pickle (``adapter_model.bin``) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from .artifacts import TENSOR_NAME, PromptArtifact, PromptMetadata
from .compression import CompressionSpec
from . import strict_json
from .errors import InvalidArtifact, InvalidInput
from .files import OUTPUT, atomic_write
from .records import BaseModelRecord

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def export_peft(artifact: PromptArtifact, folder: Path, *, base_model_name_or_path: str) -> Path:
    """Write a PEFT PROMPT_TUNING adapter; PEFT fills ``num_layers`` and ``num_attention_heads`` from the model."""
    meta = artifact.metadata
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": meta.num_virtual_tokens,
        "token_dim": meta.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": None,
        "num_layers": None,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "revision": None,
    }
    # Bytes written by atomic_write: safetensors' own save_file makes every file 0600 whatever the umask
    # (safetensors/safetensors#782), unreadable to the other users a user exports for.
    tensors = {TENSOR_NAME: np.ascontiguousarray(artifact.embeddings, dtype=np.float32)}
    weights = save(tensors, metadata={"format": "pt", "ctpreg_compression": meta.compression.canonical,
                                      "ctpreg_model": meta.model})
    atomic_write(folder / WEIGHTS_FILE, weights, mode=OUTPUT)
    atomic_write(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode(), mode=OUTPUT)
    return folder


def import_peft(
    folder: Path, *, model: BaseModelRecord, compression: CompressionSpec, dataset: str, task: str | None = None
) -> tuple[np.ndarray, PromptMetadata]:
    """Read a PEFT prompt-tuning adapter as our embeddings + metadata, checked against the registered model."""
    config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = (
            " (adapter_model.bin is pickle and is never loaded)" if (folder / "adapter_model.bin").exists() else ""
        )
        raise InvalidArtifact(f"{folder}: no {WEIGHTS_FILE}{pickled}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidArtifact(f"{weights}: not a readable safetensors file ({exc})") from None
    except (TypeError, KeyError) as exc:  # numpy has no bfloat16: the loader fails on its dtype name
        raise InvalidArtifact(f"{weights}: unsupported tensor dtype ({exc}); save the adapter in float32") from None
    if TENSOR_NAME not in tensors:
        raise InvalidArtifact(f"{weights}: no {TENSOR_NAME!r} tensor, found {sorted(tensors)}")
    embeddings = tensors[TENSOR_NAME].astype(np.float32)
    expected = (config["num_virtual_tokens"], config["token_dim"])
    if embeddings.shape != expected:
        raise InvalidArtifact(f"{weights}: {TENSOR_NAME} shape {list(embeddings.shape)} != config {list(expected)}")
    if config["token_dim"] != model.hidden_size:
        raise InvalidArtifact(
            f"adapter token_dim {config['token_dim']} != {model.name} hidden size {model.hidden_size}"
        )
    metadata = PromptMetadata(
        model=model.name, model_fingerprint=model.fingerprint, compression=compression, dataset=dataset,
        num_virtual_tokens=int(config["num_virtual_tokens"]), hidden_size=model.hidden_size, task=task,
        training={"source": "peft", "peft_base_model": config.get("base_model_name_or_path")},
        metrics={},
    )
    return embeddings, metadata


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise InvalidInput(f"{folder} is not a PEFT adapter folder (no {CONFIG_FILE})")
    try:
        config = strict_json.loads(path.read_bytes(), str(path), max_bytes=1024 * 1024)
    except InvalidInput as exc:
        raise InvalidArtifact(str(exc)) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise InvalidArtifact(f"{path} must hold a JSON object")
    if config.get("peft_type") != "PROMPT_TUNING":
        raise InvalidArtifact(f"{path}: peft_type {config.get('peft_type')!r}; only PROMPT_TUNING adapters are prompts")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise InvalidArtifact(f"{path}: task_type {config.get('task_type')!r}; ctpreg serves causal LMs")
    if config.get("num_transformer_submodules", 1) != 1:
        raise InvalidArtifact(f"{path}: num_transformer_submodules must be 1 for a decoder-only model")
    for key in ("num_virtual_tokens", "token_dim"):
        if isinstance(config.get(key), bool) or not isinstance(config.get(key), int) or config[key] < 1:
            raise InvalidArtifact(f"{path}: {key} must be a positive integer")
    return config
