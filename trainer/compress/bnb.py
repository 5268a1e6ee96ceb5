"""bitsandbytes NF4 / FP4 / int8 through ``bnb.nn.Linear4bit`` and ``Linear8bitLt`` (both run on CPU).

On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights for a faster kernel on the first eval-mode forward
whose input needs no gradient, and that kernel has no autograd: after one validation pass, the prompt would silently
stop receiving gradients. ``support_avx512bf16_for_cpu = False`` on every layer keeps the differentiable path.
"""

from __future__ import annotations

import torch
from torch import nn

from ctpreg.registry.compression import CompressionSpec
from ctpreg.registry.prompted import decoder_linears

from .modules import replace_module


def quantize_bnb(model: nn.Module, spec: CompressionSpec) -> nn.Module:
    import bitsandbytes as bnb

    for name, linear in decoder_linears(model).items():
        device = linear.weight.device
        weight = linear.weight.data.float().cpu()
        if spec.method == "bnb-int8":
            layer = bnb.nn.Linear8bitLt(
                linear.in_features, linear.out_features, bias=linear.bias is not None,
                has_fp16_weights=False, threshold=6.0,
            )
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            quant_type = spec.method.removeprefix("bnb-")
            layer = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, bias=linear.bias is not None,
                compute_dtype=torch.float32, quant_type=quant_type,
            )
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant_type)
            layer.support_avx512bf16_for_cpu = False
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data.float().cpu(), requires_grad=False)
        replace_module(model, name, layer.to(device))
    return model
