"""Which compression a model *is*: inferred from what its checkpoint records, never from what a user restates.

Sources, most specific first:
1. ``ctpreg.json`` beside the weights (written by ``ctpreg compress --save``): the canonical spec;
2. ``quantization_config`` in ``config.json`` (or ``model.config``): GPTQ (bits, group size), bitsandbytes
   (nf4 / fp4 / int8), compressed-tensors (quantization groups and its ``sparsity_config``);
3. llmcompressor's ``recipe.yaml``: which algorithm pruned or quantized (compressed-tensors records formats, not
   algorithms);
4. the weights themselves: the fraction of exact zeros in the decoder's Linear layers, and whether they follow an
   n:m pattern. GPTQ weights are not measured: at 2-4 bits many weights round to exactly zero, which is not pruning.

Torch-free except ``measure_sparsity``, which only calls methods on the tensors it is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compression import PRUNING, CompressionSpec, build_spec, method_info, parse_compression
from .errors import InvalidInput

RECORD_FILE = "ctpreg.json"
RECIPE_FILE = "recipe.yaml"
LEGACY_GPTQ_FILE = "quantize_config.json"
#: Below this fraction of zeros a model counts as dense (fp weights are almost never exactly zero by chance).
MIN_PRUNED_SPARSITY = 0.02
_RECIPE_METHODS = {
    "SparseGPTModifier": "sparsegpt", "WandaPruningModifier": "wanda", "MagnitudePruningModifier": "magnitude",
    "GPTQModifier": "gptq",
}
_NM_PATTERNS = ((2, 4), (4, 8))


class NeedsMeasurement(InvalidInput):
    """The files alone do not tell the compression: the weights must be loaded and measured."""


@dataclass(frozen=True)
class SparsityStats:
    """Zeros in the decoder's Linear weights: the overall fraction, and an n:m pattern when every group obeys it."""

    sparsity: float
    nm: tuple[int, int] | None = None


@dataclass(frozen=True)
class CheckpointFacts:
    """What a model's files and config say about its compression (all optional)."""

    quantization_config: Mapping[str, Any] | None = None
    recorded: str | None = None
    recipe_methods: tuple[str, ...] = ()

    @classmethod
    def from_folder(cls, folder: Path, config: Mapping[str, Any] | None = None) -> CheckpointFacts:
        if config is None:
            config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        quantization = config.get("quantization_config")
        if quantization is None and (folder / LEGACY_GPTQ_FILE).is_file():
            # auto-gptq and early GPTQModel wrote the GPTQ settings only beside the weights
            quantization = {"quant_method": "gptq", **_read_json(folder / LEGACY_GPTQ_FILE)}
        if quantization is not None and not isinstance(quantization, Mapping):
            raise InvalidInput(f"{folder}: quantization_config must be a JSON object")
        record = _read_json(folder / RECORD_FILE) if (folder / RECORD_FILE).is_file() else {}
        recorded = record.get("compression")
        if recorded is not None and not isinstance(recorded, str):
            raise InvalidInput(f"{folder / RECORD_FILE}: 'compression' must be a string like gptq-w3-g128")
        recipe = folder / RECIPE_FILE
        methods = _recipe_methods(recipe.read_text(encoding="utf-8", errors="replace")) if recipe.is_file() else ()
        return cls(quantization_config=quantization, recorded=recorded, recipe_methods=methods)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold a JSON object")
    return data


def _recipe_methods(text: str) -> tuple[str, ...]:
    found = [method for name, method in _RECIPE_METHODS.items() if re.search(rf"\b{name}\b", text)]
    return tuple(found)


def measure_sparsity(weights: Iterable[Any]) -> SparsityStats | None:
    """Fraction of exact zeros over 2-D floating-point weights (torch tensors); None when there are none."""
    zeros = total = 0
    nm_ok = {pattern: True for pattern in _NM_PATTERNS}
    for weight in weights:
        if weight.dim() != 2 or not weight.is_floating_point():
            continue
        is_zero = weight == 0
        zeros += int(is_zero.sum())
        total += weight.numel()
        for n, m in _NM_PATTERNS:
            if nm_ok[(n, m)]:
                rows, cols = weight.shape
                nm_ok[(n, m)] = cols % m == 0 and bool((is_zero.view(rows, cols // m, m).sum(-1) >= n).all())
    if total == 0:
        return None
    sparsity = zeros / total
    nm = next((p for p in _NM_PATTERNS if nm_ok[p] and abs(sparsity - p[0] / p[1]) < 0.01), None)
    return SparsityStats(sparsity=sparsity, nm=nm)


def _level(sparsity: float) -> float:
    """Round a measured sparsity to whole percent when it is that (pruners hit their target per layer)."""
    whole = round(sparsity, 2)
    return whole if abs(sparsity - whole) < 0.002 else round(sparsity, 4)


def config_from_layers(modules: Iterable[Any]) -> dict[str, Any] | None:
    """A quantization config read off the layers, for a model quantized in memory without one in its config
    (bitsandbytes layers swapped in by hand carry their format on the weight)."""
    for module in modules:
        kind = type(module).__name__
        if kind == "Linear4bit":
            quant_type = getattr(module.weight, "quant_type", None) or getattr(module, "quant_type", "fp4")
            return {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": quant_type}
        if kind == "Linear8bitLt":
            return {"quant_method": "bitsandbytes", "load_in_8bit": True}
    return None


def quant_method_of(config: Mapping[str, Any] | None) -> str | None:
    """``quant_method`` of a quantization config (transformers stores an enum whose value is the string)."""
    if not config:
        return None
    value = config.get("quant_method")
    value = getattr(value, "value", value)
    return str(value).lower() if value else None


#: Measured sparsity, or a function that measures it: only called when the records cannot tell (it reads every weight).
Sparsity = SparsityStats | Callable[[], SparsityStats | None] | None


def _measured(sparsity: Sparsity) -> SparsityStats | None:
    return sparsity() if callable(sparsity) else sparsity


def infer_compression(
    facts: CheckpointFacts, *, sparsity: Sparsity = None, method_hint: str | None = None
) -> CompressionSpec:
    """The checkpoint's compression spec, or ``InvalidInput`` saying what could not be told and how to say it."""
    config = dict(facts.quantization_config or {})
    quant_method = quant_method_of(config)
    if facts.recorded is not None:
        recorded = parse_compression(facts.recorded)
        if quant_method == "gptq" and (recorded.bits, recorded.group_size) != (
            config.get("bits"), config.get("group_size")
        ):
            raise InvalidInput(f"{RECORD_FILE} says {recorded.canonical} but quantization_config says "
                               f"{config.get('bits')}-bit, group {config.get('group_size')}: "
                               "the folder is inconsistent")
        return recorded
    if quant_method == "gptq":
        return _gptq(config)
    if quant_method == "bitsandbytes":
        return _bitsandbytes(config)
    if quant_method == "compressed-tensors":
        return _compressed_tensors(config, facts, sparsity, method_hint)
    if quant_method:
        raise InvalidInput(f"the checkpoint is quantized with {quant_method!r}, which ctpreg does not know; "
                           "known: gptq, bitsandbytes, compressed-tensors")
    return _pruned_or_dense(facts, sparsity, method_hint)


def _int_field(config: Mapping[str, Any], key: str, what: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"quantization_config.{key} must be an integer ({what}), got {value!r}")
    return value


def _gptq(config: Mapping[str, Any]) -> CompressionSpec:
    bits = _int_field(config, "bits", "GPTQ bit-width")
    group = _int_field(config, "group_size", "GPTQ group size")
    if group <= 0:
        raise InvalidInput(f"GPTQ group size {group} (per-channel) is not a ctpreg compression level; use grouped GPTQ")
    return build_spec("gptq", bits=bits, group_size=group)


def _bitsandbytes(config: Mapping[str, Any]) -> CompressionSpec:
    four = bool(config.get("load_in_4bit") or config.get("_load_in_4bit"))
    eight = bool(config.get("load_in_8bit") or config.get("_load_in_8bit"))
    if four == eight:
        raise InvalidInput("bitsandbytes quantization_config must set exactly one of load_in_4bit / load_in_8bit")
    if eight:
        return build_spec("bnb-int8")
    quant_type = str(config.get("bnb_4bit_quant_type", "fp4")).lower()
    if quant_type not in ("nf4", "fp4"):
        raise InvalidInput(f"unknown bitsandbytes 4-bit type {quant_type!r}; known: nf4, fp4")
    return build_spec(f"bnb-{quant_type}")


def _compressed_tensors(
    config: Mapping[str, Any], facts: CheckpointFacts, sparsity: Sparsity, hint: str | None
) -> CompressionSpec:
    groups = config.get("config_groups") or {}
    sparse = config.get("sparsity_config") or {}
    if not isinstance(groups, Mapping) or not isinstance(sparse, Mapping):
        raise InvalidInput("compressed-tensors config_groups and sparsity_config must be JSON objects")
    weights = [
        g.get("weights") for g in groups.values() if isinstance(g, Mapping) and isinstance(g.get("weights"), Mapping)
    ]
    quant: dict[str, Any] = {}
    if weights:
        first = weights[0]
        if any(w != first for w in weights[1:]):
            raise InvalidInput("the checkpoint quantizes layers differently; ctpreg describes one weight format")
        if "gptq" not in facts.recipe_methods:
            raise InvalidInput("compressed-tensors records the weight format but not the algorithm, and no recipe.yaml "
                               "names GPTQModifier: ctpreg cannot tell which quantizer made this checkpoint")
        if first.get("strategy") != "group":
            raise InvalidInput(f"weight strategy {first.get('strategy')!r}: ctpreg knows grouped GPTQ only")
        quant = dict(method="gptq", bits=first.get("num_bits"), group_size=first.get("group_size"))
    if not sparse:
        if not quant:
            raise InvalidInput("compressed-tensors config with neither quantized weights nor a sparsity_config")
        return build_spec(**quant)
    stats = _measured(sparsity)
    structure = str(sparse.get("sparsity_structure", "unstructured"))
    recorded = sparse.get("global_sparsity")
    nm = structure if re.fullmatch(r"\d+:\d+", structure) else None
    if nm is None and stats is None and not isinstance(recorded, (int, float)):
        raise NeedsMeasurement("the checkpoint is sparse but records no sparsity and its weights were not measured")
    level = stats.sparsity if stats is not None else float(recorded)
    pruner = _pruning_method(facts, hint)
    if quant:
        return build_spec(quant["method"], bits=quant["bits"], group_size=quant["group_size"],
                          sparsity=None if nm else _level(level), nm=nm, prune_method=pruner)
    return build_spec(pruner, sparsity=None if nm else _level(level), nm=nm)


def _pruning_method(facts: CheckpointFacts, hint: str | None) -> str:
    pruners = [m for m in facts.recipe_methods if m != "gptq"]
    if hint is not None and method_info(hint).family == PRUNING:
        if pruners and pruners[0] != hint:
            raise InvalidInput(
                f"--method {hint} disagrees with the checkpoint's recipe, which pruned with {pruners[0]}"
            )
        return hint
    if pruners:
        return pruners[0]
    raise InvalidInput("the checkpoint is pruned but does not record how; pass --method sparsegpt, wanda or magnitude")


def _pruned_or_dense(facts: CheckpointFacts, sparsity: Sparsity, hint: str | None) -> CompressionSpec:
    stats = _measured(sparsity)
    if stats is None:
        raise NeedsMeasurement("the checkpoint records no compression and its weights could not be measured")
    if stats.sparsity < MIN_PRUNED_SPARSITY and stats.nm is None:
        return CompressionSpec()
    pruner = _pruning_method(facts, hint)
    if stats.nm is not None:
        return build_spec(pruner, nm=f"{stats.nm[0]}:{stats.nm[1]}")
    return build_spec(pruner, sparsity=_level(stats.sparsity))


def check_flags(
    spec: CompressionSpec, *, method: str | None = None, bits: int | None = None, group_size: int | None = None,
    sparsity: float | None = None,
) -> None:
    """Refuse flags that contradict what the checkpoint is (a prune-method hint is not a contradiction)."""
    said = []
    if method is not None and method not in (spec.method, spec.prune_method):
        said.append(f"--method {method}")
    if bits is not None and bits != spec.bits:
        said.append(f"--bits {bits}")
    if group_size is not None and group_size != spec.group_size:
        said.append(f"--group-size {group_size}")
    if sparsity is not None and (spec.sparsity is None or abs(sparsity - spec.sparsity) > 0.005):
        said.append(f"--sparsity {sparsity:g}")
    if said:
        raise InvalidInput(f"{' '.join(said)} disagrees with the checkpoint, which is {spec.canonical}; "
                           "drop the flag or give the right checkpoint")
