"""Python client used where a model is loaded: resolve a target, fetch the prompt, keep working offline.

    from ctpreg.registry import Client
    client = Client.from_env()
    prompt = client.resolve("smollm2-135m", method="gptq", bits=3)
    embeddings = prompt.tensor()

or, from a loaded model that carries its own compression, ``ctpreg.registry.attach(model, tokenizer)``.

Online, answers come from the registry and are remembered in the cache (``registry.cache``). With
``CTPREG_OFFLINE=1`` the client never builds an engine or a store client and opens no socket: it answers from the
cache's ``refs/`` and verified blobs, or says the target was never resolved here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import PromptCache
from .errors import CtpregError, IntegrityError, MalformedAnswer, OfflineMiss
from .matcher import Target
from .records import PromptRecord
from .refs import parse_ref
from .resolver import DEFAULT_MIN_GAIN, DEFAULT_TOP_K, Validator, resolve
from .service import Registry, open_registry
from .settings import Settings

if TYPE_CHECKING:
    from .artifacts import PromptArtifact, PromptMetadata
    from .load_time import LoadedTarget
    from .remote import RemoteRegistry


@dataclass(frozen=True)
class ResolvedPrompt:
    """A prompt chosen for a target (or named by reference), with its verified bytes on local disk."""

    record: PromptRecord
    path: Path
    tier: int | None = None
    explanation: str | None = None
    data: bytes = field(repr=False, default=b"")

    @cached_property
    def artifact(self) -> PromptArtifact:
        """The parsed bytes, which must describe the prompt its record says: a registry cannot pair real bytes
        with a record of another embedding space or shape."""
        from .artifacts import parse_artifact

        artifact = parse_artifact(self.data, source=self.record.ref)
        meta, record = artifact.metadata, self.record
        if (meta.model_fingerprint, meta.num_virtual_tokens, meta.hidden_size) != (
                record.model_fingerprint, record.num_virtual_tokens, record.hidden_size):
            raise IntegrityError(f"the artifact of {record.ref} does not describe the prompt its record names "
                                 "(fingerprint or shape differ)")
        return artifact

    @property
    def metadata(self) -> PromptMetadata:
        return self.artifact.metadata

    def numpy(self) -> Any:
        return self.artifact.embeddings

    def tensor(self, *, dtype: Any = None, device: Any = None) -> Any:
        """The embeddings as a torch tensor [num_virtual_tokens, hidden_size] (torch is imported only here)."""
        import torch

        tensor = torch.from_numpy(self.artifact.embeddings.copy())
        return tensor.to(dtype=dtype or tensor.dtype, device=device or "cpu")

    def prompt_embeds(self, input_ids: Any, embedding_weight: Any) -> Any:
        """``[P + L, H]``: this prompt followed by the rows of ``embedding_weight`` (the served model's input
        embedding table) for ``input_ids``, in the table's dtype: vLLM's ``prompt_embeds`` input."""
        from .prompted import embeds_with_prompt

        return embeds_with_prompt(self.tensor(), input_ids, embedding_weight)

    def prompt_embeds_batch(self, batch: Any, embedding_weight: Any) -> list[Any]:
        """``prompt_embeds`` for each sequence of ids in ``batch`` (lengths may differ, so a list, not a stack)."""
        from .prompted import embeds_with_prompt

        prompt = self.tensor()
        return [embeds_with_prompt(prompt, ids, embedding_weight) for ids in batch]

    def apply(self, model: Any, tokenizer: Any = None) -> Any:
        """Wrap a loaded HF causal LM so ``forward`` and ``generate`` prepend this prompt.

        With ``tokenizer`` the model's full embedding-space fingerprint must equal the prompt's; without one, only
        the hidden size can be checked.
        """
        from .prompted import PromptedModel, check_fits

        embeddings = self.tensor()
        check_fits(model, embeddings, self.metadata.model_fingerprint, tokenizer)
        return PromptedModel(model, embeddings)


class Client:
    def __init__(self, settings: Settings, *, registry: Registry | RemoteRegistry | None = None) -> None:
        self.settings = settings
        self.cache = PromptCache(settings.cache_dir)
        self._registry = registry

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Client:
        return cls(Settings.from_env(environ))

    @property
    def registry(self) -> Registry | RemoteRegistry:
        if self.settings.offline:
            raise OfflineMiss("CTPREG_OFFLINE=1: the registry is not contacted")
        if self._registry is None:
            self._registry = open_registry(self.settings)
        return self._registry

    def resolve(
        self,
        model: str,
        *,
        method: str | None = None,
        bits: int | None = None,
        sparsity: float | None = None,
        group_size: int | None = None,
        dataset: str | None = None,
        task: str | None = None,
        identity: str | None = None,
        validator: Validator | None = None,
        top_k: int = DEFAULT_TOP_K,
        min_gain: float = DEFAULT_MIN_GAIN,
    ) -> ResolvedPrompt:
        target = Target(
            model=model, method=method, bits=bits, sparsity=sparsity, group_size=group_size, dataset=dataset, task=task,
            identity=identity,
        )
        # Keys written before targets carried identity/compression must keep matching: leave unset fields out.
        fields = {k: v for k, v in target.__dict__.items() if v is not None or k not in ("identity", "compression")}
        return self._resolve_target(target, {"target": fields}, validator, top_k, min_gain)

    def resolve_loaded(
        self, loaded: LoadedTarget, *, model_name: str | None = None, validator: Validator | None = None,
        top_k: int = DEFAULT_TOP_K, min_gain: float = DEFAULT_MIN_GAIN,
    ) -> ResolvedPrompt:
        """The prompt for a model described from itself (``attach``): its base model is the registered model of its
        fingerprint class (``model_name`` chooses among several), its target its compression and identity."""
        key = {"loaded": loaded.to_dict(), "model": model_name}
        if self.settings.offline:
            return self._resolve_target(None, key, validator, top_k, min_gain)
        name = self.registry.base_model_for(loaded.fingerprint, model_name)
        target = Target.for_spec(name, loaded.spec, identity=loaded.identity)
        prompt = self._resolve_target(target, key, validator, top_k, min_gain)
        if prompt.record.model_fingerprint != loaded.fingerprint:
            raise IntegrityError(f"the registry served {prompt.record.ref}, a prompt of another embedding space "
                                 f"than this model's ({loaded.fingerprint[:19]}…)")
        return prompt

    def _resolve_target(
        self, target: Target | None, key: dict[str, Any], validator: Validator | None, top_k: int, min_gain: float
    ) -> ResolvedPrompt:
        if self.settings.offline:
            remembered = self.cache.get_ref("targets", key)
            record = _cached_record(remembered)
            if record is None:
                what = target.describe() if target is not None else "this model"
                raise OfflineMiss(f"offline and {what} was never resolved on this machine (or its cache entry is "
                                  "unreadable)")
            assert remembered is not None
            return self._offline_prompt(record, tier=remembered.get("tier"), explanation=remembered.get("explanation"))
        assert target is not None
        resolution = resolve(self.registry, target, validator=validator, top_k=top_k, min_gain=min_gain)
        served = resolution.served
        prompt = self._download(served.prompt, tier=served.tier, explanation=served.explanation)
        self.cache.put_ref(
            "targets", key, {"prompt": served.prompt.to_dict(), "tier": served.tier, "explanation": served.explanation}
        )
        return prompt

    def fetch(self, ref: str) -> ResolvedPrompt:
        """The prompt ``ref`` names. ``NAME:VERSION`` and full sha256 refs never change meaning, so once fetched
        they are answered from the cache without asking the registry; names and aliases always ask."""
        parsed = parse_ref(ref)
        key = {"ref": str(parsed)}
        immutable = parsed.version is not None or (parsed.sha_prefix is not None and len(parsed.sha_prefix) == 64)
        if self.settings.offline or immutable:
            record = _cached_record(self.cache.get_ref("prompts", key))
            if record is not None and not record.answers(parsed):
                record = None  # an entry that names another prompt is not an answer for this ref
            if record is not None:
                if self.settings.offline:
                    return self._offline_prompt(record)
                prompt = self._cached_prompt(record)
                if prompt is not None:
                    return prompt
            elif self.settings.offline:
                raise OfflineMiss(f"offline and {ref} was never fetched on this machine")
        record = self.registry.get(ref)
        if not record.answers(parsed):  # the registry's own check, repeated for any registry handed in
            raise MalformedAnswer(f"asked for {ref}, the registry answered with {record.ref}")
        prompt = self._download(record)
        self.cache.put_ref("prompts", key, {"prompt": record.to_dict()})
        return prompt

    def _download(self, record: PromptRecord, **extra: Any) -> ResolvedPrompt:
        data = self.cache.get_blob(record.sha256)
        if data is None:
            data = self.cache.put_stream(record.sha256, record.size_bytes, self.registry.stream_record(record))
        return ResolvedPrompt(record=record, path=self.cache.blob_path(record.sha256), data=data, **extra)

    def _cached_prompt(self, record: PromptRecord, **extra: Any) -> ResolvedPrompt | None:
        data = self.cache.get_blob(record.sha256)
        if data is None:
            return None
        return ResolvedPrompt(record=record, path=self.cache.blob_path(record.sha256), data=data, **extra)

    def _offline_prompt(self, record: PromptRecord, **extra: Any) -> ResolvedPrompt:
        prompt = self._cached_prompt(record, **extra)
        if prompt is None:
            raise IntegrityError(
                f"offline and the cached bytes of {record.ref} are missing or corrupt; fetch it again online"
            )
        return prompt


def _cached_record(remembered: dict[str, Any] | None) -> PromptRecord | None:
    """The prompt record in a cache entry, or None when the entry does not hold a well-formed one."""
    if remembered is None or not isinstance(remembered.get("prompt"), dict):
        return None
    try:
        return PromptRecord.from_dict(remembered["prompt"])
    except CtpregError:
        return None
