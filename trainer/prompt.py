"""Soft prompts: trainable vectors prepended to the token embeddings of a frozen causal LM, and their losses.

Scoring (``token_nll``, ``scored_hidden``) lives beside ``prepend_prompt`` in ``ctpreg.registry.prompted``, so the
load-time validator measures exactly what the trainer optimises and evaluates. Every loss here is taken over the same
scored positions (those predicting tokens 2..L), never over prompt positions.
"""

from __future__ import annotations

import torch
from torch import nn

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.head_loss import head_loss
from ctpreg.registry.prompted import scored_hidden, token_nll

from .train_config import LOSSES

# ce: next-token cross-entropy on the text (the paper's objective). kd: KL(teacher || prompted student) per scored
# position, the teacher being the uncompressed model on the same window, so the prompt learns to restore the base
# model's distribution rather than only its top token. ce+kd: their sum.


def init_from_vocabulary(model: nn.Module, num_tokens: int, *, seed: int = 0, top_k: int = 5000) -> torch.Tensor:
    """Copies of the embeddings of ``num_tokens`` random tokens among the first ``top_k`` ids (frequent ones in BPE)."""
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(top_k, weight.shape[0]), (num_tokens,), generator=generator)
    return weight[ids.to(weight.device)].detach().float().clone()


def mean_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Mean NLL over scored tokens of full windows (the ``ce`` objective)."""
    return token_nll(model, input_ids, prompt).mean()


def prompt_loss(
    model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor, *, loss: str = "ce",
    teacher: nn.Module | None = None,
) -> torch.Tensor:
    """The training objective ``loss`` (one of ``LOSSES``) of the prompted ``model`` on full windows.

    The kd terms take the student's and the teacher's logits chunk by chunk (``head_loss``), never whole.
    """
    if loss not in LOSSES:
        raise InvalidInput(f"unknown loss {loss!r}: use {', '.join(LOSSES)}")
    if loss == "ce":
        return mean_nll(model, input_ids, prompt)
    if teacher is None:
        raise InvalidInput(f"loss {loss} needs the uncompressed model as teacher")
    hidden = scored_hidden(model, input_ids, prompt)
    with torch.no_grad():
        teacher_hidden = scored_hidden(teacher, input_ids)
    width = hidden.shape[-1]
    return head_loss(
        hidden.reshape(-1, width), model.get_output_embeddings(), input_ids[:, 1:].reshape(-1),
        ce=1.0 if loss == "ce+kd" else 0.0, kd=1.0, teacher_hidden=teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
        teacher_head=teacher.get_output_embeddings(),
    ).mean()
