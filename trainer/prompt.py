"""Soft prompts: trainable vectors prepended to the token embeddings of a frozen causal LM, and their losses.

Scoring (``token_nll``, ``next_token_logits``) lives beside ``prepend_prompt`` in ``ctpreg.registry.prompted``, so the
load-time validator measures exactly what the trainer optimises and evaluates. Every loss here is taken over the same
scored positions (those predicting tokens 2..L), never over prompt positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.prompted import next_token_logits, token_nll

# ce: next-token cross-entropy on the text (the paper's objective). kd: KL(teacher || prompted student) per scored
# position, the teacher being the uncompressed model on the same window, so the prompt learns to restore the base
# model's distribution rather than only its top token. ce+kd: their sum.
LOSSES = ("ce", "kd", "ce+kd")


def init_from_vocabulary(model: nn.Module, num_tokens: int, *, seed: int = 0, top_k: int = 5000) -> torch.Tensor:
    """Copies of the embeddings of ``num_tokens`` random tokens among the first ``top_k`` ids (frequent ones in BPE)."""
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(top_k, weight.shape[0]), (num_tokens,), generator=generator)
    return weight[ids.to(weight.device)].detach().float().clone()


def mean_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Mean NLL over scored tokens of full windows (the ``ce`` objective)."""
    return token_nll(model, input_ids, prompt).mean()


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), both given as logits [..., V] (computed in float32)."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab), dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def prompt_loss(
    model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor, *, loss: str = "ce",
    teacher: nn.Module | None = None,
) -> torch.Tensor:
    """The training objective ``loss`` (one of ``LOSSES``) of the prompted ``model`` on full windows."""
    if loss not in LOSSES:
        raise InvalidInput(f"unknown loss {loss!r}: use {', '.join(LOSSES)}")
    if loss == "ce":
        return mean_nll(model, input_ids, prompt)
    if teacher is None:
        raise InvalidInput(f"loss {loss} needs the uncompressed model as teacher")
    logits = next_token_logits(model, input_ids, prompt)
    with torch.no_grad():
        teacher_logits = next_token_logits(teacher, input_ids)
    total = kl_to_teacher(logits, teacher_logits)
    if loss == "ce+kd":
        targets = input_ids[:, 1:].reshape(-1)
        total = total + F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets)
    return total
