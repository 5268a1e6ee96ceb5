"""Per-token losses through a linear LM head, in row chunks, so the [tokens, vocab] logits never exist at once.

Written here because no library that runs on a CPU fuses the head with the loss (Liger's fused linear cross-entropy is
Triton, for GPUs). Each chunk's logits are taken in float32 for the log-softmax, as ``F.cross_entropy`` on
``logits.float()`` does; when the hidden states need a gradient, the chunk's gradient ``(dloss/dlogits) @ W`` is
computed right there, so backward is one multiply. That keeps the two head matmuls of a plain step and drops the
softmax backward over the whole vocabulary and the full-size float32 copy of the logits (``bench/train_throughput.py``
measures what that buys). The distillation term is fused the same way: the teacher's logits are taken chunk by chunk
beside the student's. ``tests/test_head_loss.py`` checks values and gradients against ``F.cross_entropy`` and
``F.kl_div`` on the full logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROWS_PER_CHUNK = 256  # 256 x 49k float32 logits = 50 MB; 1,024-row chunks measured slower on 2 cores


def head_loss(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, *, ce: float = 1.0, kd: float = 0.0,
    teacher_hidden: torch.Tensor | None = None, teacher_head: nn.Linear | None = None,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> torch.Tensor:
    """``ce * NLL + kd * KL(teacher || student)`` per row [N] (float32), the teacher being ``teacher_head`` applied
    to ``teacher_hidden`` [N, H'] (needed when ``kd`` is not 0; it gets no gradient).

    Under autocast the matmuls run in the autocast dtype, with each head's weight cast once per call instead of once
    per chunk. The heads get no gradient: with grad enabled, a head that requires one is refused rather than silently
    left without it.
    """
    heads = [head] + ([teacher_head] if teacher_head is not None else [])
    if torch.is_grad_enabled() and any(p.requires_grad for h in heads for p in h.parameters()):
        raise ValueError("head_loss computes no gradient for the head: freeze the model first")
    if kd and (teacher_hidden is None or teacher_head is None):
        raise ValueError("the kd term needs the teacher's hidden states and head")
    teacher = (teacher_hidden.detach(), teacher_head.weight, teacher_head.bias) if kd else None
    return _HeadLoss.apply(hidden, head.weight, head.bias, targets, ce, kd, teacher, rows_per_chunk)


def _compute_dtype(device: str, weight: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ce, kd, teacher, rows_per_chunk):  # type: ignore[override]
        device = hidden.device.type
        dtype = _compute_dtype(device, weight)
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            if teacher is not None:
                teacher_hidden, teacher_weight, teacher_bias = teacher
                teacher_dtype = _compute_dtype(device, teacher_weight)
                tw = teacher_weight.to(teacher_dtype)
                tb = teacher_bias.to(teacher_dtype) if teacher_bias is not None else None
            loss = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            needs_grad = ctx.needs_input_grad[0]
            grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if needs_grad else None
            for start in range(0, hidden.shape[0], rows_per_chunk):
                rows = slice(start, start + rows_per_chunk)
                log_probs = F.log_softmax(F.linear(hidden[rows].to(dtype), w, b).float(), dim=-1)
                chosen = targets[rows].unsqueeze(1)
                loss[rows] = -ce * log_probs.gather(1, chosen).squeeze(1)
                if teacher is not None:
                    teacher_log_probs = F.log_softmax(
                        F.linear(teacher_hidden[rows].to(teacher_dtype), tw, tb).float(), dim=-1
                    )
                    teacher_probs = teacher_log_probs.exp()
                    loss[rows] += kd * (teacher_probs * (teacher_log_probs - log_probs)).sum(dim=-1)
                if grad is not None:  # d loss / d logits = (ce + kd) * softmax - ce * onehot - kd * teacher softmax
                    dlogits = log_probs.exp_().mul_(ce + kd)
                    dlogits.scatter_add_(1, chosen, torch.full_like(chosen, -ce, dtype=dlogits.dtype))
                    if teacher is not None:
                        dlogits.sub_(teacher_probs, alpha=kd)
                    grad[rows] = (dlogits.to(dtype) @ w).float()
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss.unsqueeze(1)).to(ctx.hidden_dtype), None, None, None, None, None, None, None
