"""The trainer's jobs end to end: compress, train a prompt, evaluate — each measured on the same windows.

``train_prompt_artifact`` is what ``ctpreg train`` runs: full-model perplexity, compression (cached), compressed
perplexity, prompt training, prompted perplexity, then the DESIGN §4 artifact with those numbers in it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctpreg.registry.artifacts import PromptMetadata, read_artifact, serialize_artifact, write_artifact
from ctpreg.registry.digest import sha256_hex
from ctpreg.registry.recovery import gap_recovered
from ctpreg.registry.errors import Conflict, InvalidInput
from ctpreg.registry.identity import EvalData, file_sha256
from ctpreg.registry.prompted import window_digest
from ctpreg.registry.records import BaseModelRecord

from .catalog import locate
from .compress import CompressConfig, CompressedModel, CompressionCache, compress
from .data import Corpus, all_windows, load_corpus, make_windows
from .distributed import is_main
from .evaluate import perplexity
from .models import LoadedModel, load_model
from .train import TrainConfig, TrainResult, train_prompt, uses_autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field(default="wiki", metadata={"help": "packaged corpus, hub dataset or .txt/.jsonl file"})
    seq_len: int = field(default=256, metadata={"help": "tokens per window"})
    max_train_windows: int | None = field(default=None, metadata={"help": "cap on training windows"})
    eval_windows: int = field(default=40, metadata={"help": "validation windows for the reported perplexities"})

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.eval_windows < 1:
            raise InvalidInput("seq_len must be >= 2 and eval_windows >= 1")


def load_base(model: str, *, model_path: str | None = None, device: str = "auto") -> LoadedModel:
    return load_model(locate(model, model_path), device=device)


def calibration_windows(loaded: LoadedModel, config: CompressConfig) -> torch.Tensor | None:
    """Calibration windows from the training split of ``config.calibration`` (never the validation split)."""
    if not config.needs_calibration:
        return None
    corpus = load_corpus(config.calibration)
    windows = make_windows(
        loaded.tokenizer, corpus, seq_len=config.calibration_seq_len, max_train=config.calibration_windows,
        max_validation=1,
    )
    return windows.train


def compress_loaded(loaded: LoadedModel, config: CompressConfig, home: Path) -> CompressedModel:
    calibration = calibration_windows(loaded, config)
    return compress(
        loaded, config.spec, calibration=calibration, cache=CompressionCache(home / "compressed"),
        gptq_batch_size=config.gptq_batch_size,
    )


def save_compressed(loaded: LoadedModel, compressed: CompressedModel, config: CompressConfig, folder: Path,
                    save_format: str = "native") -> Path:
    """``ctpreg compress --save``: the compressed model as a checkpoint other tools load without ctpreg."""
    from .checkpoint import save_checkpoint

    spec = config.spec
    packed = compressed.folder / "gptq" if spec.method == "gptq" and compressed.folder is not None else None
    record = {
        "model": loaded.source.slug, "model_fingerprint": loaded.fingerprint, "source": loaded.source.describe(),
        "calibration": config.calibration if config.needs_calibration else None,
        "calibration_windows": config.calibration_windows if config.needs_calibration else None,
        "calibration_sha256": (compressed.identity or {}).get("calibration") or None,
    }
    return save_checkpoint(compressed.model, loaded.tokenizer, spec, folder, packed=packed, record=record,
                           save_format=save_format)


@dataclass
class TrainedPrompt:
    path: Path
    sha256: str
    metadata: PromptMetadata
    result: TrainResult
    compress_seconds: float


def train_prompt_artifact(
    loaded: LoadedModel,
    compress_config: CompressConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    *,
    corpus: Corpus,
    out: Path,
    home: Path,
    resume: bool = False,
) -> TrainedPrompt:
    spec = compress_config.spec
    windows = make_windows(
        loaded.tokenizer, corpus, seq_len=data_config.seq_len,
        max_train=data_config.max_train_windows, max_validation=data_config.eval_windows,
    )
    log.info("data %s: %d train / %d validation windows of %d tokens", windows.corpus, windows.train.shape[0],
             windows.validation.shape[0], windows.seq_len)
    full = perplexity(loaded.model, windows.validation, label="eval full")
    compressed = compress_loaded(loaded, compress_config, home)
    before = perplexity(compressed.model, windows.validation, label=f"eval {spec.canonical}")
    log.info("validation perplexity: full %.2f, %s %.2f (%s in %.0fs)", full.ppl, spec.canonical, before.ppl,
             "cached" if compressed.from_cache else "compressed", compressed.seconds)
    context = (
        f"{loaded.source.describe()} {loaded.fingerprint[:19]} {spec.canonical} "
        f"calibration={compress_config.calibration}x{compress_config.calibration_windows}"
    )
    result = train_prompt(
        compressed.model, windows, train_config, checkpoint=out.with_name(out.name + ".ckpt"), resume=resume,
        context=context,
    )
    after = perplexity(compressed.model, windows.validation, prompt=result.prompt, label="eval prompted")
    log.info("with the prompt (best of step %d): %.2f", result.best_step, after.ppl)
    metrics = {
        "ppl_full": full.ppl, "ppl_compressed": before.ppl, "ppl_prompted": after.ppl,
        "eval_dataset": f"{windows.corpus}/validation", "eval_tokens": after.tokens,
        "eval_data": EvalData(
            corpus=windows.corpus, split="validation", seq_len=windows.seq_len,
            windows=int(windows.validation.shape[0]),
            token_digest=window_digest(windows.validation),
        ).to_dict(),
    }
    metrics["gap_recovered"] = gap_recovered(metrics)
    if loaded.source.is_gguf:
        metrics["full_model"] = f"GGUF {loaded.source.gguf_file} dequantized by transformers"
    training = {
        **train_config.to_dict(), "seq_len": windows.seq_len, "init": "vocab", "data_hash": windows.data_hash,
        "train_windows": int(windows.train.shape[0]), "best_step": result.best_step,
        "step_seconds": result.step_seconds, "tokens_per_second": result.tokens_per_second,
        "autocast": "bf16" if uses_autocast(train_config, loaded.device) else "off",
        "calibration": compress_config.calibration if compress_config.needs_calibration else None,
        "calibration_windows": compress_config.calibration_windows if compress_config.needs_calibration else None,
    }
    metadata = PromptMetadata(
        model=loaded.source.slug, model_fingerprint=loaded.fingerprint, compression=spec, dataset=windows.corpus,
        num_virtual_tokens=train_config.num_tokens, hidden_size=loaded.hidden_size, training=training, metrics=metrics,
    )
    if is_main():  # every rank holds the same prompt; one writes it
        sha = write_artifact(out, result.prompt.numpy(), metadata)
    else:
        sha = sha256_hex(serialize_artifact(result.prompt.numpy(), metadata))
    return TrainedPrompt(out, sha, metadata, result, compressed.seconds)


def evaluate_conditions(
    loaded: LoadedModel,
    compress_config: CompressConfig,
    windows: torch.Tensor,
    *,
    home: Path,
    prompt: torch.Tensor | None = None,
) -> tuple[dict[str, Any], CompressedModel]:
    """``ppl_full``, ``ppl_compressed`` and (with a prompt) ``ppl_prompted`` on the same windows."""
    started = time.perf_counter()
    report: dict[str, Any] = {"compression": compress_config.spec.canonical}
    report["ppl_full"] = perplexity(loaded.model, windows, label="eval full").ppl
    compressed = compress_loaded(loaded, compress_config, home)
    result = perplexity(compressed.model, windows, label="eval compressed")
    report["ppl_compressed"], report["tokens"] = result.ppl, result.tokens
    if prompt is not None:
        report["ppl_prompted"] = perplexity(compressed.model, windows, prompt=prompt, label="eval prompted").ppl
        report["gap_recovered"] = gap_recovered(report)
    report["seconds"] = time.perf_counter() - started
    return report, compressed


@dataclass(frozen=True)
class EvalSet:
    """Evaluation windows and the identity of exactly those windows (what a figure measured on them names)."""

    windows: torch.Tensor
    data: EvalData


def eval_set(tokenizer: Any, *, dataset: str | None, text_file: Path | None, seq_len: int, max_windows: int) -> EvalSet:
    """A dataset's validation split, or every window of a text file."""
    if (dataset is None) == (text_file is None):
        raise InvalidInput("give exactly one of --dataset or --text-file")
    if text_file is not None:
        corpus = load_corpus(str(text_file))
        windows = all_windows(tokenizer, corpus, seq_len=seq_len, limit=max_windows)
        split, source = "all", file_sha256(text_file)
    else:
        corpus = load_corpus(dataset)
        windows = make_windows(tokenizer, corpus, seq_len=seq_len, max_train=1, max_validation=max_windows).validation
        split, source = "validation", None
    data = EvalData(corpus=corpus.name, split=split, seq_len=seq_len, windows=int(windows.shape[0]),
                    token_digest=window_digest(windows), source_sha256=source)
    return EvalSet(windows, data)


def load_prompt_for(loaded: LoadedModel, prompt: str, client: Any) -> torch.Tensor:
    """A prompt from a file path or a registry reference, refused unless it was learned in this embedding space."""
    path = Path(prompt)
    artifact = (
        read_artifact(path)[0] if path.suffix == ".safetensors" or path.exists() else client.fetch(prompt).artifact
    )
    check_compatible(loaded, artifact.metadata)
    return torch.from_numpy(artifact.embeddings.astype("float32"))


def check_compatible(loaded: LoadedModel, metadata: PromptMetadata) -> None:
    if metadata.model_fingerprint != loaded.fingerprint:
        raise Conflict(
            f"prompt was learned for {metadata.model} ({metadata.model_fingerprint[:19]}…) "
            f"but {loaded.source.slug} has "
            f"fingerprint {loaded.fingerprint[:19]}…: different tokenizer or hidden size, the prompt cannot apply"
        )


def register_and_publish(registry: Any, loaded: LoadedModel, path: Path, *, name: str | None = None) -> Any:
    """Register the base model with everything known about it, then publish the artifact."""
    registry.add_model(
        BaseModelRecord(
            name=loaded.source.slug, fingerprint=loaded.fingerprint, hidden_size=loaded.hidden_size,
            vocab_size=loaded.vocab_size, architecture=loaded.architecture, source=loaded.source.describe(),
        )
    )
    return registry.publish(path, name=name)
