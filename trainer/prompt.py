"""Soft prompts: prepend trainable vectors to the token embeddings of a frozen causal LM.

Scoring (``token_nll``) lives beside ``prepend_prompt`` in ``ctpreg.registry.prompted``, so the load-time validator
measures exactly what the trainer optimises and evaluates.
"""

from __future__ import annotations

import torch
from torch import nn

from ctpreg.registry.prompted import token_nll


def init_from_vocabulary(model: nn.Module, num_tokens: int, *, seed: int = 0, top_k: int = 5000) -> torch.Tensor:
    """Copies of the embeddings of ``num_tokens`` random tokens among the first ``top_k`` ids (frequent ones in BPE)."""
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(top_k, weight.shape[0]), (num_tokens,), generator=generator)
    return weight[ids.to(weight.device)].detach().float().clone()


def mean_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean NLL over scored tokens of full windows."""
    return token_nll(model, input_ids, prompt).mean()
