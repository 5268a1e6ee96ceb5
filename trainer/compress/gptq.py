"""GPTQ through GPTQModel (the maintained successor of auto-gptq, which fails with transformers >= 4.54 and refuses
to quantize without CUDA).

The packed checkpoint GPTQModel writes is the cached artifact. For prompt training it is loaded with the torch
kernel and each ``TorchLinear`` is dequantized once into a dense fp32 ``nn.Linear`` holding exactly the
quantized values ("fake quant"): same function, faster forward and backward on CPU. A test checks the logits of both
forms agree.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import torch
from torch import nn

from ctpreg.registry.compression import CompressionSpec

from .modules import replace_module

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_gptqmodel():
    """GPTQModel prints banners to stdout on import; keep stdout clean for --json output.

    Its native packing extension is JIT-compiled on a machine's first quantization (35-60 s here); its torch
    fallback writes a bitwise identical checkpoint (SmolLM2-135M at 4 bits) in no measurable extra time, so the
    fallback is the default. Setting ``GPTQMODEL_DISABLE_PACK_EXT=0`` brings the extension back."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))  # native quantize crashes without it
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def _log_folder(folder: Path):
    """GPTQModel's quantization log folder (a module-level relative path in GPTQModel 7.6), for one call."""
    from gptqmodel.looper import loop_processor

    previous = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = folder
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = previous


def quantize_gptq(
    checkpoint: Path, spec: CompressionSpec, calibration: torch.Tensor, output: Path, *, batch_size: int = 16
) -> Path:
    """Quantize the HF checkpoint folder ``checkpoint`` (it must hold a tokenizer) into ``output``.

    GPTQModel writes a per-layer quantization log to ``./logs``; pointing that folder beside ``output`` keeps the
    log with the model it describes, without changing the process's working directory.
    """
    checkpoint, output = checkpoint.resolve(), output.resolve()
    with _quiet_gptqmodel(), _log_folder(output.parent / "logs"):
        from gptqmodel import GPTQModel, QuantizeConfig

        config = QuantizeConfig(
            bits=spec.bits, group_size=spec.group_size, sym=True, desc_act=False, true_sequential=False
        )
        model = GPTQModel.load(str(checkpoint), config, dtype=torch.float32)
        samples = [{"input_ids": row.tolist(), "attention_mask": [1] * row.shape[0]} for row in calibration]
        log.info("gptq %s: %d calibration windows of %d tokens", spec.canonical, len(samples), calibration.shape[1])
        model.quantize(samples, batch_size=batch_size)
        model.save(str(output))
    return output


def load_packed(folder: Path) -> nn.Module:
    """The quantized model with GPTQModel's torch kernel (bf16), as GPTQModel serves it on CPU."""
    with _quiet_gptqmodel():
        from gptqmodel import BACKEND, GPTQModel

        return GPTQModel.load(str(folder), device="cpu", backend=BACKEND.GPTQ_TORCH).model


@torch.no_grad()
def dequantize_dense(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every GPTQ ``TorchLinear`` with a dense ``nn.Linear`` holding its dequantized weights, plus its LoRA
    adapter's product when it carries one (EoRA: the kernel computes ``x Wq + (x A) B``, with A [in, r], B [r, out])."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    for name, module in list(model.named_modules()):
        if isinstance(module, TorchLinear):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            weight = module.dequantize_weight().T.float()
            adapter = getattr(module, "adapter", None)
            if getattr(adapter, "lora_A", None) is not None:
                weight = weight + (adapter.lora_A.float() @ adapter.lora_B.float()).T
            dense.weight.data = weight.contiguous().to(dtype)
            if module.bias is not None:
                dense.bias.data = module.bias.detach().to(dtype)
            replace_module(model, name, dense)
    model.to(dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model
