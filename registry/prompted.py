"""A loaded model with a soft prompt in front: what ``ResolvedPrompt.apply(model)`` returns.

Imported only by ``apply`` (it needs torch), so the registry stays torch-free for resolve and fetch. ``forward``
prepends the prompt to the input embeddings, extends the attention mask with ones and the labels with -100, so
prompt positions are never scored; ``generate`` does the same and returns the input ids followed by the new tokens,
like ``generate(input_ids=...)`` on the bare model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import Conflict
from .fingerprint import embedding_fingerprint

IGNORE_INDEX = -100


def check_fits(model: nn.Module, embeddings: torch.Tensor, fingerprint: str, tokenizer: Any | None) -> None:
    """Refuse a model whose embedding space differs from the prompt's (a clear error, never a shape crash)."""
    weight = model.get_input_embeddings().weight
    vocab_size, hidden = int(weight.shape[0]), int(weight.shape[1])
    if hidden != embeddings.shape[1]:
        raise Conflict(f"prompt hidden size {embeddings.shape[1]} does not fit this model's hidden size {hidden}")
    if tokenizer is not None:
        actual = embedding_fingerprint(tokenizer.get_vocab(), vocab_size=vocab_size, hidden_size=hidden)
        if actual != fingerprint:
            raise Conflict(
                f"model fingerprint {actual[:19]}… differs from the prompt's {fingerprint[:19]}…: another tokenizer or "
                "embedding space, so the prompt does not apply"
            )


def prepend_prompt(
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


class PromptedModel(nn.Module):
    """``model`` with ``embeddings`` [num_virtual_tokens, hidden_size] prepended to every input."""

    def __init__(self, model: nn.Module, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        weight = model.get_input_embeddings().weight
        self.register_buffer("prompt", embeddings.to(device=weight.device, dtype=weight.dtype), persistent=False)

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.prompt.shape[0])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None, **kwargs: Any,
    ) -> Any:
        embeds, mask = prepend_prompt(self.model, input_ids, self.prompt, attention_mask)
        if labels is not None:
            ignore = torch.full((labels.shape[0], self.num_virtual_tokens), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = torch.cat([ignore, labels], dim=1)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        embeds, mask = prepend_prompt(self.model, input_ids, self.prompt, attention_mask)
        new_tokens = self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)
