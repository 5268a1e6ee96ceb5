"""Small helpers for swapping and inspecting layers."""

from __future__ import annotations

import torch
from torch import nn


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()
