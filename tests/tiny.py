"""Tiny random-weight Llama models with a real (byte-level BPE) tokenizer, built in-process for fast tests.

Random weights: fine for mechanics (shapes, gradients, bookkeeping), never for claims about quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctpreg.trainer.catalog import ModelSource
from ctpreg.trainer.models import LoadedModel, wrap_loaded

TEXT = (
    "The quick brown fox jumps over the lazy dog. Soft prompts recover compressed language models. "
    "Quantization to three bits loses accuracy; a learned prompt wins some of it back. "
) * 20


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(*, seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int | None = None) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab or len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).float()
    return wrap_loaded(model, tokenizer, ModelSource("tiny-llama", f"random-seed-{seed}"))


def text_file(folder: Path, documents: int = 30) -> Path:
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i}. " + TEXT[: 400 + 7 * i] for i in range(documents)))
    return path
