"""The trainer's jobs end to end: compress, train a prompt, evaluate — each measured on the same windows.

``train_prompt_artifact`` is what ``ctpreg train`` runs: full-model perplexity, compression (cached), compressed
perplexity, prompt training, prompted perplexity, then the DESIGN §4 artifact with those numbers in it. Training
reads the ``train`` split, picks its best step on ``select``, and every figure in the artifact is measured on
``test``, which chose nothing.
"""

from __future__ import annotations

import copy
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
from ctpreg.registry.files import write_output
from ctpreg.registry.lineage import state_beside
from ctpreg.registry.optimizer_state import serialize_state
from ctpreg.registry.records import BaseModelRecord

from .catalog import locate
from .compounding import Origin
from .compress import CompressConfig, CompressedModel, CompressionCache, compress
from .data import SELECT, TEST, Corpus, all_windows, load_corpus, make_windows, split_windows
from .distributed import is_main
from .evaluate import perplexity
from .models import LoadedModel, load_model
from .train import TrainConfig, TrainResult, train_prompt, uses_autocast

log = logging.getLogger(__name__)
NO_PARENT = Origin()


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field(default="wiki", metadata={"help": "packaged corpus, hub dataset or .txt/.jsonl file"})
    seq_len: int = field(default=256, metadata={"help": "tokens per window"})
    max_train_windows: int | None = field(default=None, metadata={"help": "cap on training windows"})
    eval_windows: int = field(default=40, metadata={"help": "select windows (best step) and test windows (figures)"})

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.eval_windows < 1:
            raise InvalidInput("seq_len must be >= 2 and eval_windows >= 1")


def load_base(
    model: str, *, model_path: str | None = None, device: str = "auto", home: Path | None = None
) -> LoadedModel:
    """The base model; with ``home``, a GGUF file is converted once into ``home / "models"`` (gguf_cache)."""
    return load_model(locate(model, model_path), device=device, converted=home / "models" if home else None)


def calibration_windows(loaded: LoadedModel, config: CompressConfig) -> torch.Tensor | None:
    """Calibration windows from the training split of ``config.calibration`` (never select or test)."""
    if not config.needs_calibration:
        return None
    corpus = load_corpus(config.calibration)
    return split_windows(
        loaded.tokenizer, corpus, "train", seq_len=config.calibration_seq_len, limit=config.calibration_windows
    )


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
    compress_configs: CompressConfig | list[CompressConfig],
    data_config: DataConfig,
    train_config: TrainConfig,
    *,
    corpus: Corpus,
    out: Path,
    home: Path,
    resume: bool = False,
    origin: Origin = NO_PARENT,
) -> TrainedPrompt:
    """Train one prompt for one compression, or across several (``compress_configs`` a list: one prompt, every
    compressed model in memory, figures per target in the artifact). ``origin`` is what the run builds on (a warm
    start or a continued prompt, ``trainer.compounding``); a WSD run writes its stable state beside ``out``."""
    configs = compress_configs if isinstance(compress_configs, list) else [compress_configs]
    windows = make_windows(
        loaded.tokenizer, corpus, seq_len=data_config.seq_len, max_train=data_config.max_train_windows,
        max_select=data_config.eval_windows, max_test=data_config.eval_windows,
    )
    log.info("data %s: %d train / %d select / %d test windows of %d tokens", windows.corpus, windows.train.shape[0],
             windows.select.shape[0], windows.test.shape[0], windows.seq_len)
    full = perplexity(loaded.model, windows.test, label="test full")
    keep_base = train_config.needs_teacher or len(configs) > 1  # compression may work in place
    compressed = [compress_loaded(copy.deepcopy(loaded) if keep_base else loaded, cfg, home) for cfg in configs]
    before = [perplexity(c.model, windows.test, label=f"test {c.spec.canonical}") for c in compressed]
    for c, ppl in zip(compressed, before):
        log.info("test perplexity: full %.2f, %s %.2f (%s in %.0fs)", full.ppl, c.spec.canonical, ppl.ppl,
                 "cached" if c.from_cache else "compressed", c.seconds)
    context = (
        f"{loaded.source.describe()} {loaded.fingerprint[:19]} {'+'.join(c.spec.canonical for c in compressed)} "
        f"calibration={configs[0].calibration}x{configs[0].calibration_windows}"
    )
    result = train_prompt(
        [c.model for c in compressed], windows, train_config, checkpoint=out.with_name(out.name + ".ckpt"),
        resume=resume, context=context, teacher=loaded.model if train_config.needs_teacher else None,
        init=origin.init, start=origin.start,
    )
    state = _write_state(result, out)
    test_data = split_data(windows.corpus, TEST, windows.test)
    per_target = {}
    for c, without in zip(compressed, before):
        after = perplexity(c.model, windows.test, prompt=result.prompt, label=f"test {c.spec.canonical} prompted")
        figures = {"ppl_full": full.ppl, "ppl_compressed": without.ppl, "ppl_prompted": after.ppl}
        per_target[c.spec.canonical] = {**figures, "gap_recovered": gap_recovered(figures)}
        log.info("test perplexity of %s with the prompt (step %d, best on select): %.2f", c.spec.canonical,
                 result.best_step, after.ppl)
    metrics = {
        **per_target[configs[0].spec.canonical], "eval_dataset": test_data.label,
        "eval_tokens": int(windows.test.shape[0] * (windows.seq_len - 1)), "eval_data": test_data.to_dict(),
    }
    if len(configs) > 1:
        metrics["targets"] = per_target
    if loaded.source.is_gguf:
        metrics["full_model"] = f"GGUF {loaded.source.gguf_file} dequantized by transformers"
    calibrated = any(cfg.needs_calibration for cfg in configs)
    training = {
        **train_config.to_dict(), "seq_len": windows.seq_len, "init": origin.label, "data_hash": windows.data_hash,
        "train_windows": int(windows.train.shape[0]), "best_step": result.best_step,
        "select_data": split_data(windows.corpus, SELECT, windows.select).to_dict(),
        "step_seconds": result.step_seconds, "tokens_per_second": result.tokens_per_second,
        "autocast": "bf16" if uses_autocast(train_config, loaded.device) else "off",
        "calibration": configs[0].calibration if calibrated else None,
        "calibration_windows": configs[0].calibration_windows if calibrated else None,
        **origin.lineage(train_config, result, state).to_training(),
    }
    metadata = PromptMetadata(
        model=loaded.source.slug, model_fingerprint=loaded.fingerprint, compression=configs[0].spec,
        dataset=windows.corpus, num_virtual_tokens=train_config.num_tokens, hidden_size=loaded.hidden_size,
        training=training, metrics=metrics, targets=tuple(c.spec for c in configs) if len(configs) > 1 else (),
    )
    if is_main():  # every rank holds the same prompt; one writes it
        sha = write_artifact(out, result.prompt.numpy(), metadata)
    else:
        sha = sha256_hex(serialize_artifact(result.prompt.numpy(), metadata))
    return TrainedPrompt(out, sha, metadata, result, sum(c.seconds for c in compressed))


def _write_state(result: TrainResult, out: Path) -> tuple[str, int] | None:
    """Write the run's stable-phase state beside the artifact (``registry.lineage.state_beside``; one rank
    writes); its sha256 and size go into the artifact, which is what makes the prompt continuable."""
    if result.stable_state is None:
        return None
    data = serialize_state(*result.stable_state.to_arrays())
    if is_main():
        write_output(state_beside(out), data)
    return sha256_hex(data), len(data)


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


def split_data(corpus: str, split: str, windows: torch.Tensor) -> EvalData:
    """The identity of one split's windows (what a figure measured on them names)."""
    return EvalData(corpus=corpus, split=split, seq_len=int(windows.shape[1]), windows=int(windows.shape[0]),
                    token_digest=window_digest(windows))


def eval_set(
    tokenizer: Any, *, dataset: str | None, text_file: Path | None, seq_len: int, max_windows: int, split: str = TEST,
) -> EvalSet:
    """A dataset's ``split`` (test for figures, select for decisions), or every window of a text file."""
    if (dataset is None) == (text_file is None):
        raise InvalidInput("give exactly one of --dataset or --text-file")
    if text_file is not None:
        corpus = load_corpus(str(text_file))
        windows = all_windows(tokenizer, corpus, seq_len=seq_len, limit=max_windows)
        split, source = "all", file_sha256(text_file)
    else:
        corpus = load_corpus(dataset)
        windows = split_windows(tokenizer, corpus, split, seq_len=seq_len, limit=max_windows)
        source = None
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
