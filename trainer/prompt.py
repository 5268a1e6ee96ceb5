"""Soft prompts: prepend trainable vectors to the token embeddings of a frozen causal LM.

Only what is scored is computed: the decoder runs over prompt + tokens, but the LM head sees just the positions
that predict tokens 2..L of each window. Token 1 has no context without a prompt, so it is never scored in any
condition; full, compressed and prompted perplexities therefore cover the same tokens, and prompt positions never
count (the paper's code averages them in, which biases prompted perplexity low).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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


def prepend(
    model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs_embeds and attention mask with the prompt in front (the prompt always attends)."""
    embeds = model.get_input_embeddings()(input_ids)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if prompt is None:
        return embeds, mask
    batch = input_ids.shape[0]
    prefix = prompt.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
    prefix_mask = torch.ones(batch, prompt.shape[0], dtype=mask.dtype, device=mask.device)
    return torch.cat([prefix, embeds], dim=1), torch.cat([prefix_mask, mask], dim=1)


def next_token_logits(
    model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [B, L-1, V] at the positions that predict ``input_ids[:, 1:]``; none for prompt positions."""
    embeds, mask = prepend(model, input_ids, prompt, attention_mask)
    hidden = _decoder(model)(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    offset = 0 if prompt is None else prompt.shape[0]
    return model.get_output_embeddings()(hidden[:, offset : offset + input_ids.shape[1] - 1])


def token_nll(
    model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token negative log-likelihood [B, L-1] of ``input_ids[:, 1:]`` (float32; masked targets get 0)."""
    logits = next_token_logits(model, input_ids, prompt, attention_mask).float()
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view_as(targets)
    if attention_mask is not None:
        nll = nll * attention_mask[:, 1:].to(nll.dtype)
    return nll


def mean_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss: mean NLL over scored tokens of full windows."""
    return token_nll(model, input_ids, prompt).mean()


def count_scored(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> int:
    if attention_mask is None:
        return int(input_ids.shape[0] * (input_ids.shape[1] - 1))
    return int(attention_mask[:, 1:].sum())


def prompt_tensor(value: Any) -> torch.Tensor:
    """Accept a tensor or an array-like [T, H] and return a float32 tensor."""
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if tensor.ndim != 2:
        raise ValueError(f"a prompt is [num_virtual_tokens, hidden_size], got shape {list(tensor.shape)}")
    return tensor.float()
