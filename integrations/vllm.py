"""A resolved ctpreg prompt as vLLM's ``prompt_embeds`` input, offline (``LLM.generate``) and over HTTP
(``/v1/completions``).

vLLM dropped prompt adapters; it takes ``prompt_embeds`` instead, ``[P + L, H]`` in the model's dtype (start the
server with ``--enable-prompt-embeds``). Here that tensor is ``cat(prompt, embed_tokens[ids])``, built exactly as
``ResolvedPrompt.apply`` runs the prompt, from the served checkpoint's own embedding table: read alone from its
safetensors (memory-mapped by safetensors), never by loading the model.

    prompt = Client.from_env().fetch("smollm2-135m/gptq-w3-g128/wiki:1")
    inputs = VllmPrompt.from_checkpoint("./smollm2-gptq-w3-hf", prompt)
    llm.generate(inputs.offline_input("The capital of France is"), SamplingParams(max_tokens=20))
    httpx.post(f"{vllm}/v1/completions", json=inputs.completion_body("The capital of France is", model=name))

Tokenization is explicit: ``add_special_tokens`` (default True, what vLLM itself does with a text prompt) decides
whether the tokenizer's BOS goes in front of the text; it always goes after the prompt rows, as with ``apply``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ctpreg.registry.errors import Conflict, InvalidInput
from ctpreg.registry.prompted import embeds_with_prompt

from .openai_body import TextOrIds, as_batch

if TYPE_CHECKING:
    from ctpreg.registry.client import ResolvedPrompt

#: Names the input embedding table has in the architectures transformers and vLLM share.
EMBEDDING_NAMES = (
    "model.embed_tokens.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight",
    "model.decoder.embed_tokens.weight", "transformer.word_embeddings.weight",
    "transformer.embedding.word_embeddings.weight",
)
INDEX_FILE = "model.safetensors.index.json"


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> file, from the shard index when there is one, else every safetensors file's header."""
    from safetensors import safe_open

    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{index} is not a safetensors shard index: {exc}") from None
        return {name: folder / Path(file).name for name, file in weight_map.items()}
    names: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names.update(dict.fromkeys(handle.keys(), path))
    return names


def read_embedding_table(folder: str | Path) -> torch.Tensor:
    """The input embedding table [vocab, hidden] of the checkpoint in ``folder``, and nothing else of it."""
    from safetensors import SafetensorError, safe_open

    root = Path(folder)
    if not root.is_dir() or not any(root.glob("*.safetensors")):
        raise InvalidInput(f"{root} holds no .safetensors weights (ctpreg reads weights through safetensors only)")
    try:
        files = _tensor_files(root)
    except SafetensorError as exc:
        raise InvalidInput(f"{root}: unreadable safetensors file: {exc}") from None
    found = [name for name in EMBEDDING_NAMES if name in files]
    if not found:
        raise InvalidInput(
            f"{root}: no input embedding table among its tensors (looked for {', '.join(EMBEDDING_NAMES)})"
        )
    with safe_open(str(files[found[0]]), framework="pt") as handle:
        table = handle.get_tensor(found[0])
    if table.dim() != 2 or not table.is_floating_point():
        raise InvalidInput(
            f"{root}: {found[0]} has shape {tuple(table.shape)} {table.dtype}, not a float [vocab, hidden]"
        )
    if not bool(torch.isfinite(table).all()):
        raise InvalidInput(f"{root}: {found[0]} holds NaN or Inf")
    return table


def encode_embeds(embeds: torch.Tensor) -> str:
    """base64 of ``torch.save(embeds)``: the form vLLM's ``/v1/completions`` takes (it loads it with
    ``weights_only=True``). ctpreg only produces these bytes; it never unpickles."""
    buffer = io.BytesIO()
    torch.save(embeds.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class VllmPrompt:
    """Builds vLLM inputs for one served checkpoint: its tokenizer and embedding table, with ``prompt`` (rows
    [P, H]) in front, or nothing in front when ``prompt`` is None (the same inputs the plain model gets)."""

    table: torch.Tensor
    tokenizer: Any
    prompt: torch.Tensor | None = None
    add_special_tokens: bool = True

    @classmethod
    def from_checkpoint(cls, folder: str | Path, resolved: ResolvedPrompt | None, *, tokenizer: Any = None,
                        add_special_tokens: bool = True, dtype: torch.dtype | None = None) -> VllmPrompt:
        """From the served checkpoint folder (its tokenizer unless one is given); ``dtype`` is the dtype the engine
        runs the model in, when it is not the stored one (``vllm serve --dtype``)."""
        table = read_embedding_table(folder)
        if dtype is not None:
            table = table.to(dtype)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        bare = cls(table=table, tokenizer=tokenizer, add_special_tokens=add_special_tokens)
        return bare if resolved is None else bare.carrying(resolved)

    @property
    def fingerprint(self) -> str:
        """The served model's embedding-space fingerprint (its tokenizer's vocabulary and the table's shape)."""
        from ctpreg.registry.fingerprint import embedding_fingerprint

        vocab_size, hidden = (int(n) for n in self.table.shape)
        return embedding_fingerprint(self.tokenizer.get_vocab(), vocab_size=vocab_size, hidden_size=hidden)

    @cached_property
    def longest_token_chars(self) -> int:
        """Characters of the longest entry in the tokenizer's vocabulary: no token stands for more text than that
        (SmolLM2's longest is 81, a newline and 80 spaces), so ``n`` positions hold at most ``n`` times this."""
        return max(len(token) for token in self.tokenizer.get_vocab())

    def carrying(self, resolved: ResolvedPrompt) -> VllmPrompt:
        """The same builder with ``resolved`` in front; refused unless the prompt shares this embedding space."""
        if resolved.metadata.model_fingerprint != self.fingerprint:
            raise Conflict(f"{resolved.record.ref} was trained for another embedding space than the served model's "
                           "(tokenizer or embedding shape differ); it does not apply")
        return replace(self, prompt=resolved.tensor().to(self.table.dtype))

    def token_ids(self, text_or_ids: TextOrIds) -> list[int]:
        if isinstance(text_or_ids, str):
            ids = self.tokenizer(text_or_ids, add_special_tokens=self.add_special_tokens)["input_ids"]
        else:
            ids = list(text_or_ids)
        if not ids:
            raise InvalidInput("the prompt text tokenizes to no tokens")
        return ids

    def embeds(self, text_or_ids: TextOrIds) -> torch.Tensor:
        """[P + L, H] in the table's dtype."""
        return embeds_with_prompt(self.prompt, self.token_ids(text_or_ids), self.table)

    def offline_input(self, text_or_ids: TextOrIds) -> dict[str, torch.Tensor]:
        """The input for ``LLM(model, enable_prompt_embeds=True).generate(...)``."""
        return {"prompt_embeds": self.embeds(text_or_ids)}

    def completion_body(self, text_or_ids: TextOrIds | Sequence[TextOrIds], *, model: str,
                        **sampling: Any) -> dict[str, Any]:
        """A ``/v1/completions`` request body for one prompt or a batch (a list of texts or of id lists)."""
        batch = as_batch(text_or_ids)
        encoded = [encode_embeds(self.embeds(item)) for item in batch]
        return {"model": model, "prompt_embeds": encoded if len(encoded) > 1 else encoded[0], **sampling}
