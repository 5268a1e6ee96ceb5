"""A loaded model with a soft prompt in front: what ``ResolvedPrompt.apply(model)`` returns, and how it is scored.

Imported only by ``apply`` (it needs torch), so the registry stays torch-free for resolve and fetch. ``forward``
prepends the prompt to the input embeddings, extends the attention mask with ones and the labels with -100, so
prompt positions are never scored; ``generate`` does the same and returns the input ids followed by the new tokens,
like ``generate(input_ids=...)`` on the bare model.

Scoring computes only what counts: the decoder runs over prompt + tokens, but the LM head sees just the positions
that predict tokens 2..L of each window. Token 1 has no context without a prompt, so it is never scored in any
condition; with and without a prompt the same tokens are scored, and prompt positions never count (the paper's code
averages them in, which biases prompted perplexity low). The trainer and the load-time validator share these.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import Conflict, InvalidInput
from .fingerprint import embedding_fingerprint
from .head_loss import head_loss

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


def embeds_with_prompt(prompt: torch.Tensor | None, input_ids: Any, embedding_weight: torch.Tensor) -> torch.Tensor:
    """``cat(prompt, embedding_weight[input_ids])`` as [P + L, H] in the table's dtype: what a serving engine that
    takes ``prompt_embeds`` needs to run the prompted model exactly as ``PromptedModel`` runs it."""
    if embedding_weight.dim() != 2:
        raise InvalidInput(f"embedding table must be 2-D [vocab, hidden], got shape {tuple(embedding_weight.shape)}")
    ids = torch.as_tensor(input_ids)
    if ids.dim() != 1 or ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise InvalidInput("input_ids must be a non-empty 1-D sequence of token ids")
    vocab, hidden = embedding_weight.shape
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise InvalidInput(f"token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
    tokens = embedding_weight[ids.to(device=embedding_weight.device, dtype=torch.long)]
    if prompt is None:
        return tokens
    if prompt.dim() != 2 or prompt.shape[1] != hidden:
        raise Conflict(f"prompt of shape {tuple(prompt.shape)} does not fit an embedding table of hidden size {hidden}")
    return torch.cat([prompt.to(device=tokens.device, dtype=tokens.dtype), tokens], dim=0)


def _decoder(model: nn.Module) -> nn.Module:
    decoder = model.get_decoder()
    if decoder is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder; ctpreg needs a decoder-only causal LM")
    return decoder


def scored_hidden(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states [B, L-1, H] at the positions that predict ``input_ids[:, 1:]``; none for prompt positions."""
    embeds, mask = prepend_prompt(model, input_ids, prompt)
    hidden = _decoder(model)(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    offset = 0 if prompt is None else prompt.shape[0]
    return hidden[:, offset : offset + input_ids.shape[1] - 1]


def next_token_logits(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, L-1, V] at the positions that predict ``input_ids[:, 1:]``; none for prompt positions."""
    return model.get_output_embeddings()(scored_hidden(model, input_ids, prompt))


def token_nll(model: nn.Module, input_ids: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token negative log-likelihood [B, L-1] of ``input_ids[:, 1:]`` (float32).

    A plain linear head goes through ``head_loss`` (chunked, never the full logits); any other head through its
    logits and ``F.cross_entropy``, with the same values.
    """
    targets = input_ids[:, 1:]
    head = model.get_output_embeddings()
    if type(head) is nn.Linear:
        hidden = scored_hidden(model, input_ids, prompt)
        nll = head_loss(hidden.reshape(-1, hidden.shape[-1]), head, targets.reshape(-1))
        return nll.view_as(targets)
    logits = next_token_logits(model, input_ids, prompt).float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view_as(targets)


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the transformer blocks (what compression touches; never embeddings or LM head)."""
    head = model.get_output_embeddings()
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head and ".layers." in f".{name}":
            layers[name] = module
    return layers


def window_digest(windows: torch.Tensor) -> str:
    """sha256 of the token ids (int64, row-major): two measurements are comparable only on equal digests."""
    return hashlib.sha256(windows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def cut_windows(tokenizer: Any, documents: list[str], seq_len: int, limit: int | None, label: str) -> torch.Tensor:
    """Documents joined with EOS and cut into non-overlapping windows [N, seq_len] (at most ``limit``)."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.extend(separator)
        if limit is not None and len(ids) >= limit * seq_len:
            break
    count = len(ids) // seq_len
    if count == 0:
        raise InvalidInput(f"{label} has {len(ids)} tokens, fewer than one window of {seq_len}")
    if limit is not None:
        count = min(count, limit)
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


@torch.no_grad()
def perplexity_sums(
    model: nn.Module, windows: torch.Tensor, prompt: torch.Tensor | None, batch_size: int = 4
) -> tuple[float, int]:
    """Total NLL and scored-token count of ``windows`` (tokens 2..L of each), with ``prompt`` in front if given."""
    device = model.get_input_embeddings().weight.device
    nll, tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        nll += float(token_nll(model, batch, prompt).double().sum())
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    return nll, tokens


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
            # Prompt positions and token 1 are never scored, as everywhere in ctpreg (module docstring): the loss
            # is the mean NLL of tokens 2..L, comparable with the same model's loss without a prompt.
            ignore = torch.full((labels.shape[0], self.num_virtual_tokens + 1), IGNORE_INDEX, dtype=labels.dtype,
                                device=labels.device)
            labels = torch.cat([ignore, labels[:, 1:]], dim=1)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        embeds, mask = prepend_prompt(self.model, input_ids, self.prompt, attention_mask)
        new_tokens = self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)
