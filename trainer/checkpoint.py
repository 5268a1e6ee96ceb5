"""A user's compressed checkpoint, loaded as it is (never re-compressed), and the standard checkpoints ctpreg writes.

Loading: GPTQ folders (GPTQModel's format, or transformers + optimum's: ``quantization_config`` in ``config.json``)
through GPTQModel, then each packed layer is dequantized once into a dense fp32 Linear holding exactly its quantized
values, as training does (the packed kernel computes in bf16, which CPUs without AVX512-BF16 emulate ~25x slower;
a test checks both forms give the same logits up to bf16 rounding). Everything else (compressed-tensors,
bitsandbytes, plain pruned weights) goes through ``AutoModelForCausalLM``, which decompresses compressed-tensors.
What the checkpoint is (fingerprint, compression, identity) is read from it by ``registry.load_time.describe_loaded``,
the same code the load-time attach uses.

Writing (``ctpreg compress --save``): GPTQ as GPTQModel's packed checkpoint, pruning as a dense HF folder with zeros;
both with the tokenizer and a ``ctpreg.json`` recording the canonical spec, model and calibration, so nothing about
the target has to be restated later.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctpreg.registry.load_time import LoadedTarget, describe_loaded
from ctpreg.registry.compression import QUANTIZATION, CompressionSpec
from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.inference import (
    RECORD_FILE, CheckpointFacts, NeedsMeasurement, infer_compression, quant_method_of,
)

from .models import freeze, resolve_device

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    model: Any
    tokenizer: Any
    target: LoadedTarget
    path: Path


def _absolute(path: str | Path, option: str) -> Path:
    """``path`` made absolute, or a one-line error for what cannot be (symlink loops, unreadable parents)."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:
        raise InvalidInput(f"{option} {path}: {exc}") from None


def _config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise InvalidInput(f"--target-path {path} is not a folder holding a checkpoint (config.json + weights)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidInput(f"{path} has no config.json: not a transformers/GPTQModel checkpoint folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{config_file} must hold a JSON object")
    if not any(path.glob("*.safetensors")):
        raise InvalidInput(f"{path} holds no .safetensors weights (ctpreg loads weights through safetensors only)")
    return config


def precheck(path: str | Path, *, method_hint: str | None = None) -> CompressionSpec | None:
    """The checkpoint's compression from its files alone (no weights loaded), or None when only measuring the
    weights can tell; refuses what is not a checkpoint before anything heavy runs."""
    folder = _absolute(path, "--target-path")
    facts = CheckpointFacts.from_folder(folder, config=_config(folder))
    try:
        return infer_compression(facts, method_hint=method_hint)
    except NeedsMeasurement:
        return None


def load_checkpoint(path: str | Path, *, device: str = "auto", method_hint: str | None = None) -> LoadedCheckpoint:
    """Load ``path`` as it is and describe it; a clear ``InvalidInput`` for anything that is not a checkpoint."""
    from transformers import AutoTokenizer

    folder = _absolute(path, "--target-path")
    config = _config(folder)
    quantization = CheckpointFacts.from_folder(folder, config=config).quantization_config
    quant_method = quant_method_of(quantization)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{folder} has no usable tokenizer (the fingerprint needs it): {exc}") from None
    log.info("loading %s as it is (%s)", folder, quant_method or "no quantization_config")
    try:
        model = _load_model(folder, quant_method, device)
    except (ValueError, KeyError, RuntimeError) as exc:  # transformers/GPTQModel say "cannot load this" this way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"cannot load {folder} as a causal LM checkpoint: {first}") from None
    freeze(model)
    # What the model runs is what the folder's config says (a dense GPTQ copy still holds the quantized values), and
    # it was loaded from these very files a moment ago.
    described = describe_loaded(model, tokenizer, folder=folder, method_hint=method_hint,
                                quantization_config=quantization, verify_files=False)
    return LoadedCheckpoint(model, tokenizer, described, folder)


def _load_model(folder: Path, quant_method: str | None, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    if quant_method == "gptq":
        from .compress.gptq import dequantize_dense, load_packed

        return dequantize_dense(load_packed(folder)).to(target)
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if not quant_method:
        kwargs["dtype"] = torch.float32 if target.type == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    # bitsandbytes places its quantized layers itself; everything else is dense once loaded and can move
    return model if quant_method == "bitsandbytes" else model.to(target)


def check_savable(spec: CompressionSpec, folder: Path) -> Path:
    """Refuse a ``--save`` that cannot be written, before any compression runs; the absolute folder."""
    if spec.family == QUANTIZATION and spec.prune_method is not None:
        raise InvalidInput(f"--save does not support joint {spec.canonical}: GPTQ's packed format cannot keep the mask")
    if spec.method.startswith("bnb-"):
        raise InvalidInput("--save does not write bitsandbytes models: bitsandbytes quantizes at load time; save the "
                           "base model and load it with transformers' BitsAndBytesConfig")
    if spec.method == "none":
        raise InvalidInput("--save writes compressed models; the base model needs no ctpreg to be saved")
    folder = _absolute(folder, "--save")
    if folder == Path.cwd() or folder == folder.parent:
        raise InvalidInput(f"--save {folder}: name a new folder, not the current directory or a root")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidInput(f"--save {folder} exists and is not an empty folder; nothing written")
    if not folder.parent.is_dir():
        raise InvalidInput(f"--save {folder}: the folder {folder.parent} does not exist")
    return folder


SAVE_FORMATS = ("native", "hf")
DENSE_NOTE = """# Dense copy of a {spec} model

The weights here are the {spec} model's quantized values, dequantized once into {dtype}: the same function as the
packed checkpoint (same logits up to the packed kernel's rounding), in the plain transformers layout any engine loads
(vLLM's CPU backend has no GPTQ kernel). It is not smaller than the base model. `ctpreg.json` records the
compression, so ctpreg treats this folder as the {spec} target it is.
"""


def save_checkpoint(model: Any, tokenizer: Any, spec: CompressionSpec, folder: Path, *, packed: Path | None,
                    record: dict[str, Any], save_format: str = "native") -> Path:
    """Write the compressed model to ``folder`` as a standard checkpoint (temp folder, then rename).

    ``native``: GPTQ copies GPTQModel's packed checkpoint (``packed``); pruning saves the dense weights with their
    zeros. ``hf``: dense transformers weights for every method (for GPTQ the dequantized values, said so in the
    folder's README.md), which serving engines without a kernel for the packed format load. Joint quantization +
    pruning and bitsandbytes have no such form here: joint specs run as dense fake-quant weights with a mask GPTQ's
    packing does not keep, and bitsandbytes quantizes at load time (load the base checkpoint with a
    ``BitsAndBytesConfig``).
    """
    if save_format not in SAVE_FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(SAVE_FORMATS)}")
    folder = check_savable(spec, folder)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    dense_copy = packed is not None and save_format == "hf"
    try:
        if packed is not None and not dense_copy:
            shutil.copytree(packed, tmp)
        else:
            _plain_copy(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        layout = "hf-dense" if dense_copy else ("gptqmodel-packed" if packed is not None else "hf")
        (tmp / RECORD_FILE).write_text(json.dumps({"compression": spec.canonical, "format": layout, **record},
                                                  indent=2) + "\n")
        if dense_copy:
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            (tmp / "README.md").write_text(DENSE_NOTE.format(spec=spec.canonical, dtype=dtype))
        _modes_like(tmp, tmp / RECORD_FILE)
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _modes_like(folder: Path, written: Path) -> None:
    """Give every file in ``folder`` the mode ``written`` got from the umask: safetensors creates its files 0600
    whatever the umask (safetensors/safetensors#782; transformers and GPTQModel save through it), which would leave
    a saved model unreadable to the users and serving engines it is saved for."""
    mode = stat.S_IMODE(written.stat().st_mode)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def _plain_copy(model: Any) -> Any:
    """The model rebuilt from its config with the same tensors, so it saves as a plain transformers checkpoint
    (a model read from a GGUF file remembers that origin and will not ``save_pretrained`` as it is)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        raise InvalidInput("cannot write a quantized in-memory model as dense weights")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    fresh.load_state_dict(model.state_dict(), assign=True)
    return fresh
