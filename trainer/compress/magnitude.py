"""Magnitude pruning in plain torch (no library offers it as a one-shot pass over a causal LM).

Unstructured: in each Linear, zero the ``sparsity`` fraction of weights with the smallest |w| (ties broken by
index, so the count is exact). N:M: in every group of M consecutive input weights of a row, zero the N smallest.
Tested against a NumPy reference.
"""

from __future__ import annotations

import torch
from torch import nn

from ctpreg.registry.compression import CompressionSpec
from ctpreg.registry.prompted import decoder_linears


def magnitude_mask(
    weight: torch.Tensor, *, sparsity: float | None = None, n: int | None = None, m: int | None = None
) -> torch.Tensor:
    """Boolean keep-mask for one weight matrix [out, in]."""
    magnitude = weight.detach().abs().float()
    if n is not None and m is not None:
        rows, cols = magnitude.shape
        if cols % m:
            raise ValueError(f"input size {cols} is not divisible by m={m}")
        groups = magnitude.view(rows, cols // m, m)
        drop = groups.argsort(dim=-1, stable=True)[..., :n]
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return keep.view(rows, cols)
    assert sparsity is not None
    count = int(round(sparsity * magnitude.numel()))
    drop = magnitude.flatten().argsort(stable=True)[:count]
    keep = torch.ones(magnitude.numel(), dtype=torch.bool, device=weight.device)
    keep[drop] = False
    return keep.view_as(weight)


@torch.no_grad()
def prune_magnitude(model: nn.Module, spec: CompressionSpec) -> nn.Module:
    for layer in decoder_linears(model).values():
        mask = magnitude_mask(layer.weight, sparsity=spec.sparsity, n=spec.prune_n, m=spec.prune_m)
        layer.weight.mul_(mask.to(layer.weight.dtype))
    return model
