"""EoRA through GPTQModel: a training-free low-rank compensation of GPTQ's quantization error, the alternative to a
soft prompt that a user would try first.

``GPTQModel.adapter.generate`` measures each quantized layer's error ``W - Wq`` in the space of its calibration
activations and keeps its best rank-``r`` correction ``B @ A``, saved as a PEFT LoRA adapter
(``adapter_config.json`` + ``adapter_model.safetensors``). ``load_with_eora`` loads the packed model with that
adapter and folds it into dense weights (``gptq.dequantize_dense``), so ctpreg evaluates it and trains prompts on it
exactly like any other compressed model.

GPTQModel 7.6 asserts that the dequantized weights are fp16 or bf16 while it builds the adapter
(``looper/eora_processor.py``), so generation runs in bf16; its torch kernel compiles dequantization with
``torch.compile`` per weight shape, which costs more than it saves for one pass on a CPU, so dynamo is off for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import LoadedModel, export_checkpoint
from .gptq import _log_folder, _quiet_gptqmodel, dequantize_dense

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class EoraAdapter:
    folder: Path
    rank: int
    seconds: float

    @property
    def size_bytes(self) -> int:
        return (self.folder / ADAPTER_FILE).stat().st_size


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    previous = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCHDYNAMO_DISABLE")
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = previous


def build_eora(
    loaded: LoadedModel, packed: Path, calibration: torch.Tensor, *, rank: int, folder: Path
) -> EoraAdapter:
    """The rank-``rank`` EoRA adapter of the packed GPTQ checkpoint ``packed`` of ``loaded`` (cached in ``folder``)."""
    started = time.perf_counter()
    if (folder / ADAPTER_FILE).is_file():
        return EoraAdapter(folder, rank, 0.0)
    base = export_checkpoint(loaded, folder.with_name(folder.name + "-base"))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    samples = [{"input_ids": row.tolist(), "attention_mask": [1] * row.shape[0]} for row in calibration]
    with _quiet_gptqmodel(), _eager(), _log_folder(folder.parent / "logs"):
        from gptqmodel import GPTQModel
        from gptqmodel.adapter.adapter import Lora

        GPTQModel.adapter.generate(
            adapter=Lora(rank=rank, path=str(tmp.resolve())), model_id_or_path=str(base.resolve()),
            quantized_model_id_or_path=str(packed.resolve()), calibration_dataset=samples,
            calibration_dataset_concat_size=None, batch_size=1, dtype=torch.bfloat16, device="cpu",
        )
    tmp.rename(folder)
    shutil.rmtree(base, ignore_errors=True)
    return EoraAdapter(folder, rank, time.perf_counter() - started)


def load_with_eora(packed: Path, adapter: EoraAdapter) -> nn.Module:
    """The packed model with the adapter applied, as dense fp32 weights ``Wq + (A^T B^T)^T``."""
    with _quiet_gptqmodel():
        from gptqmodel import BACKEND, GPTQModel
        from gptqmodel.adapter.adapter import Lora

        model = GPTQModel.load(str(packed), device="cpu", backend=BACKEND.GPTQ_TORCH,
                               adapter=Lora(rank=adapter.rank, path=str(adapter.folder.resolve()))).model
    return dequantize_dense(model)
