"""Load-time attach: from a loaded model and its tokenizer to that model with the right prompt in front, no flags.

    from ctpreg.registry import attach
    model = AutoModelForCausalLM.from_pretrained("my-gptq-3bit")      # any checkpoint of a registered base model
    prompted = attach(model, tokenizer)                                # fingerprint + compression read from the model
    prompted.generate(input_ids=ids, max_new_tokens=40)

What the model is comes from the model itself (``describe_loaded``): the embedding-space fingerprint from the
tokenizer and the embedding shape, the compression from ``config.quantization_config`` / the checkpoint folder's
records / the measured sparsity (``registry.inference``), and its identity from its files (or, with no files, its
tensors). The registry then says which base model of that fingerprint class it is, resolves, and the client fetches
into its verified cache; afterwards ``CTPREG_OFFLINE=1`` answers the same attach with no socket. ``validate=True``
measures the top candidates on this very in-memory model with ``texts`` before serving one, and records what it
measured as evidence for this model's identity and those windows.

Imports torch only through the model it is given (and ``prompted``, imported here lazily).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compression import CompressionSpec
from .errors import Conflict, InvalidInput
from .fingerprint import embedding_fingerprint
from .identity import EvalData, checkpoint_key, digest_json, memory_key
from .inference import CheckpointFacts, config_from_layers, infer_compression, measure_sparsity, quant_method_of
from .records import Measurement
from .resolver import DEFAULT_MIN_GAIN, DEFAULT_TOP_K, ValidationScope

if TYPE_CHECKING:
    from .artifacts import PromptArtifact
    from .client import Client
    from .matcher import Target

DEFAULT_SEQ_LEN = 256
DEFAULT_MAX_WINDOWS = 20


@dataclass(frozen=True)
class LoadedTarget:
    """What a loaded model is, as far as prompts care: its embedding space, compression and identity."""

    fingerprint: str
    vocab_size: int
    hidden_size: int
    spec: CompressionSpec
    identity: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "compression": self.spec.canonical, "identity": self.identity, "source": self.source,
        }


def _quantization_config(model: Any) -> dict[str, Any] | None:
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def _local_folder(model: Any) -> Path | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None
    path = Path(str(name)).expanduser()
    return path if (path / "config.json").is_file() else None


def describe_loaded(
    model: Any, tokenizer: Any, *, folder: Path | None = None, method_hint: str | None = None,
    quantization_config: dict[str, Any] | None = None, verify_files: bool = True,
) -> LoadedTarget:
    """Fingerprint, compression and identity of ``model`` as loaded (``folder``: where its files are, if not in
    ``model.name_or_path``; ``quantization_config``: how it was loaded, if not in ``model.config``).

    The model is identified by its folder's files only when its tensors still equal them (``verify_files``): a
    model changed after loading (merged adapters, further training) is identified by its own tensors instead.
    """
    from .prompted import decoder_linears

    weight = model.get_input_embeddings().weight
    vocab_size, hidden = int(weight.shape[0]), int(weight.shape[1])
    fingerprint = embedding_fingerprint(tokenizer.get_vocab(), vocab_size=vocab_size, hidden_size=hidden)
    folder = folder or _local_folder(model)
    loaded_config = quantization_config if quantization_config is not None else _quantization_config(model)
    if loaded_config is None:
        loaded_config = config_from_layers(model.modules())
    facts, same_load = CheckpointFacts(quantization_config=loaded_config), False
    if folder is not None:
        on_disk = CheckpointFacts.from_folder(folder)
        same_load = quant_method_of(on_disk.quantization_config) == quant_method_of(loaded_config)
        # The folder's records describe its files; a model quantized differently at load time is something else.
        facts = on_disk if same_load else CheckpointFacts(loaded_config, recipe_methods=on_disk.recipe_methods)
    spec = infer_compression(
        facts, sparsity=lambda: measure_sparsity(layer.weight for layer in decoder_linears(model).values()),
        method_hint=method_hint,
    )
    if same_load and any(folder.glob("*.safetensors")) and (
        not verify_files or _same_as_files(model, folder)
    ):
        identity, source = checkpoint_key(folder, spec.canonical), str(folder)
    else:
        named = [*model.state_dict().items()]
        identity, source = memory_key(named, spec.canonical), f"in-memory {type(model).__name__}"
    return LoadedTarget(fingerprint, vocab_size, hidden, spec, identity, source)


def describe_folder(folder: Path, tokenizer: Any, *, vocab_size: int, hidden_size: int,
                    method_hint: str | None = None) -> LoadedTarget:
    """What the checkpoint in ``folder`` is, from its files alone (no model is built): the serving path's
    counterpart of ``describe_loaded``, for an engine that loads the weights itself. ``vocab_size`` and
    ``hidden_size`` are the shape of its input embedding table."""
    fingerprint = embedding_fingerprint(tokenizer.get_vocab(), vocab_size=vocab_size, hidden_size=hidden_size)
    spec = infer_compression(CheckpointFacts.from_folder(folder), sparsity=lambda: _stored_sparsity(folder),
                             method_hint=method_hint)
    return LoadedTarget(fingerprint, vocab_size, hidden_size, spec, checkpoint_key(folder, spec.canonical), str(folder))


def _stored_sparsity(folder: Path) -> Any:
    """Zeros in the decoder's Linear weights as stored, read tensor by tensor (a pruned folder that does not say
    how it was pruned)."""
    from safetensors import safe_open

    def weights() -> Any:
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    if ".layers." in f".{name}" and name.endswith(".weight"):
                        yield handle.get_tensor(name)

    return measure_sparsity(weights())


def _same_as_files(model: Any, folder: Path) -> bool:
    """Whether every floating-point tensor the folder's safetensors files share with the model's state dict is
    unchanged. Integer tensors are skipped: GPTQModel rewrites packed zero-points into its internal format on load."""
    import torch
    from safetensors import safe_open

    state = model.state_dict()
    compared = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = state.get(name)
                if tensor is None or not tensor.is_floating_point():
                    continue
                stored = handle.get_tensor(name)
                if stored.shape != tensor.shape or not torch.equal(stored.to(tensor.dtype), tensor.detach().cpu()):
                    return False
                compared += 1
    return compared > 0


@dataclass
class InMemoryValidator:
    """Perplexity of a loaded model without and with a prompt, on windows cut from ``texts`` (the resolver's
    ``Validator``). The baseline is measured once."""

    model: Any
    tokenizer: Any
    texts: list[str]
    target: LoadedTarget
    seq_len: int = DEFAULT_SEQ_LEN
    max_windows: int = DEFAULT_MAX_WINDOWS
    _windows: Any = field(default=None, repr=False)
    _baseline: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.texts, str) or not self.texts or not all(isinstance(t, str) for t in self.texts):
            raise InvalidInput("validation texts must be a non-empty list of strings")
        if self.seq_len < 2 or self.max_windows < 1:
            raise InvalidInput("validation needs seq_len >= 2 and at least one window")

    @property
    def windows(self) -> Any:
        if self._windows is None:
            from .prompted import cut_windows

            self._windows = cut_windows(self.tokenizer, list(self.texts), self.seq_len, self.max_windows, "texts")
        return self._windows

    def eval_data(self) -> EvalData:
        from .prompted import window_digest

        return EvalData(
            corpus="texts", split="given", seq_len=self.seq_len, windows=int(self.windows.shape[0]),
            token_digest=window_digest(self.windows), source_sha256=digest_json(list(self.texts)),
        )

    def scope(self, target: Target) -> ValidationScope:
        return ValidationScope(self.target.identity, self.eval_data(), self.target.source)

    def __call__(self, artifact: PromptArtifact, target: Target) -> Measurement:
        import math

        import torch

        from .prompted import perplexity_sums

        if artifact.metadata.model_fingerprint != self.target.fingerprint:
            raise Conflict(f"{artifact.metadata.model}'s prompt does not share this model's embedding space")
        if self._baseline is None:
            nll, tokens = perplexity_sums(self.model, self.windows, None)
            self._baseline = math.exp(nll / tokens)
        prompt = torch.from_numpy(artifact.embeddings.astype("float32"))
        nll, tokens = perplexity_sums(self.model, self.windows, prompt)
        data = self.eval_data()
        return Measurement(
            ppl_without=self._baseline, ppl_with=math.exp(nll / tokens), eval_dataset=data.label, eval_tokens=tokens,
            target_key=self.target.identity, eval_data=data, target_source=self.target.source,
        )


def attach(
    model: Any,
    tokenizer: Any,
    *,
    client: Client | None = None,
    model_name: str | None = None,
    method: str | None = None,
    folder: str | Path | None = None,
    validate: bool = False,
    texts: list[str] | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    max_windows: int = DEFAULT_MAX_WINDOWS,
    top_k: int = DEFAULT_TOP_K,
    min_gain: float = DEFAULT_MIN_GAIN,
) -> Any:
    """Resolve, fetch and apply the best prompt for ``model``; returns a ``PromptedModel`` whose ``resolved``
    attribute says which prompt it carries and why.

    ``model_name`` picks the base model when several registered ones share the fingerprint; ``method`` names the
    pruner when a pruned checkpoint does not record it. ``validate=True`` needs ``texts`` (for a packaged corpus's
    select documents, the split meant for decisions: ``ctpreg.trainer.data.load_corpus("news").split().select``).
    """
    from .client import Client

    client = client or Client.from_env()
    described = describe_loaded(model, tokenizer, folder=Path(folder) if folder else None, method_hint=method)
    validator = None
    if validate:
        if texts is None:
            raise InvalidInput("validate=True needs texts=[...] to measure on, e.g. the select documents "
                               "ctpreg.trainer.data.load_corpus('news').split().select")
        validator = InMemoryValidator(
            model, tokenizer, list(texts), described, seq_len=seq_len, max_windows=max_windows
        )
    resolved = client.resolve_loaded(described, model_name=model_name, validator=validator, top_k=top_k,
                                     min_gain=min_gain)
    prompted = resolved.apply(model, tokenizer)
    prompted.resolved = resolved
    return prompted
