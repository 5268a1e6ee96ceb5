"""Soft prompts: prepend trainable vectors to the token embeddings of a frozen causal LM.

Only what is scored is computed: the decoder runs over prompt + tokens, but the LM head sees just the positions
that predict tokens 2..L of each window. Token 1 has no context without a prompt, so it is never scored in any
condition; full, compressed and prompted perplexities therefore cover the same tokens, and prompt positions never
count (the paper's code averages them in, which biases prompted perplexity low).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctpreg.registry.prompted import prepend_prompt


def init_from_vocabulary(model: nn.Module, num_tokens: int, *, seed: int = 0, top_k: int = 5000) -> torch.Tensor:
    """Copies of the embeddings of ``num_tokens`` random tokens among the first ``top_k`` ids (frequent ones in BPE)."""
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(top_k, weight.shape[0]), (num_tokens,), generator=generator)
    return weight[ids.to(weight.device)].detach().float().clone()


def _decoder(model: nn.Module) -> nn.Module:
    decoder = model.get_decoder()
    if decoder is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder; ctpreg needs a decoder-only causal LM")
    return decoder


def next_token_logits(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, L-1, V] at the positions that predict ``input_ids[:, 1:]``; none for prompt positions."""
    embeds, mask = prepend_prompt(model, input_ids, prompt)
    hidden = _decoder(model)(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    offset = 0 if prompt is None else prompt.shape[0]
    return model.get_output_embeddings()(hidden[:, offset : offset + input_ids.shape[1] - 1])


def token_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token negative log-likelihood [B, L-1] of ``input_ids[:, 1:]`` (float32)."""
    logits = next_token_logits(model, input_ids, prompt).float()
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view_as(targets)


def mean_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean NLL over scored tokens of full windows."""
    return token_nll(model, input_ids, prompt).mean()
