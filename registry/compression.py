"""Compression specs: which methods exist, what levels they allow, their canonical strings and severity.

Canonical strings (DESIGN §3): ``none``, ``gptq-w3-g128``, ``bnb-nf4``, ``sparsegpt-s50``, ``wanda-n2m4`` and joint
``gptq-w4-g128+sparsegpt-s50``. ``n:m`` patterns are written ``n2m4`` because ``:`` separates versions in references.
Severity is the effective bits per weight, bits x (1 - sparsity), 16 for an uncompressed model: lower is harsher.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

QUANTIZATION = "quantization"
PRUNING = "pruning"
UNCOMPRESSED = "none"
FULL_PRECISION_BITS = 16


@dataclass(frozen=True)
class MethodInfo:
    """What a method allows: its family, the bit-widths it takes (or its fixed width) and its group size default."""

    family: str
    allowed_bits: tuple[int, ...] = ()
    fixed_bits: int | None = None
    default_group_size: int | None = None


METHODS: dict[str, MethodInfo] = {
    "none": MethodInfo(UNCOMPRESSED),
    "gptq": MethodInfo(QUANTIZATION, allowed_bits=(2, 3, 4, 8), default_group_size=128),
    "bnb-nf4": MethodInfo(QUANTIZATION, fixed_bits=4),
    "bnb-fp4": MethodInfo(QUANTIZATION, fixed_bits=4),
    "bnb-int8": MethodInfo(QUANTIZATION, fixed_bits=8),
    "sparsegpt": MethodInfo(PRUNING),
    "wanda": MethodInfo(PRUNING),
    "magnitude": MethodInfo(PRUNING),
}


def method_info(method: str) -> MethodInfo:
    try:
        return METHODS[method]
    except KeyError:
        raise InvalidInput(f"unknown compression method {method!r}; known: {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class CompressionSpec:
    """A fully specified compression: a quantizer and/or a pruner with their levels.

    ``method`` is the primary method (the quantizer for joint specs); ``prune_method`` names the pruner when the
    spec prunes; ``sparsity`` is the pruned fraction (for n:m patterns it is n/m).
    """

    method: str = "none"
    bits: int | None = None
    group_size: int | None = None
    sparsity: float | None = None
    prune_n: int | None = None
    prune_m: int | None = None
    prune_method: str | None = None

    def __post_init__(self) -> None:
        info = method_info(self.method)
        if info.family == QUANTIZATION:
            self._check_bits(info)
        elif self.bits is not None or self.group_size is not None:
            raise InvalidInput(f"method {self.method!r} takes no bits or group size")
        if info.family == PRUNING:
            object.__setattr__(self, "prune_method", self.prune_method or self.method)
            if self.prune_method != self.method:
                raise InvalidInput(f"pruning spec {self.method!r} cannot name another pruner {self.prune_method!r}")
        if self.prune_n is not None or self.prune_m is not None:
            self._check_nm()
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise InvalidInput(f"sparsity must lie strictly between 0 and 1, got {self.sparsity}")
        if self.prune_method is not None:
            if method_info(self.prune_method).family != PRUNING:
                raise InvalidInput(f"{self.prune_method!r} is not a pruning method")
            if self.sparsity is None:
                raise InvalidInput(f"pruning with {self.prune_method!r} needs a sparsity or an n:m pattern")
        elif self.sparsity is not None:
            if info.family == UNCOMPRESSED:
                raise InvalidInput("a sparsity needs a pruning method (sparsegpt, wanda or magnitude)")
            object.__setattr__(self, "prune_method", "sparsegpt")

    def _check_bits(self, info: MethodInfo) -> None:
        if info.fixed_bits is not None:
            if self.bits not in (None, info.fixed_bits):
                raise InvalidInput(f"{self.method} is fixed at {info.fixed_bits} bits, got {self.bits}")
            object.__setattr__(self, "bits", info.fixed_bits)
            if self.group_size is not None:
                raise InvalidInput(f"{self.method} takes no group size")
            return
        if self.bits is None:
            raise InvalidInput(f"{self.method} needs --bits, one of {list(info.allowed_bits)}")
        if self.bits not in info.allowed_bits:
            raise InvalidInput(f"{self.method} supports bits {list(info.allowed_bits)}, got {self.bits}")
        group = self.group_size if self.group_size is not None else info.default_group_size
        if group is None or isinstance(group, bool) or not 0 < group <= MAX_GROUP_SIZE:
            raise InvalidInput(f"group size must be an integer in 1..{MAX_GROUP_SIZE}, got {self.group_size}")
        object.__setattr__(self, "group_size", group)

    def _check_nm(self) -> None:
        n, m = self.prune_n, self.prune_m
        if n is None or m is None or not 0 < n < m:
            raise InvalidInput(f"an n:m pattern needs 0 < n < m, got {n}:{m}")
        if self.sparsity is not None and abs(self.sparsity - n / m) > 1e-9:
            raise InvalidInput(f"sparsity {self.sparsity} contradicts the {n}:{m} pattern")
        object.__setattr__(self, "sparsity", n / m)

    @property
    def family(self) -> str:
        return METHODS[self.method].family

    @property
    def severity(self) -> float:
        """Effective bits per weight: harsher compression has lower severity."""
        bits = self.bits if self.bits is not None else FULL_PRECISION_BITS
        return bits * (1.0 - (self.sparsity or 0.0))

    @property
    def canonical(self) -> str:
        parts = []
        if self.family == QUANTIZATION:
            quant = self.method
            if METHODS[self.method].fixed_bits is None:
                quant += f"-w{self.bits}-g{self.group_size}"
            parts.append(quant)
        if self.prune_method is not None:
            level = f"n{self.prune_n}m{self.prune_m}" if self.prune_n else f"s{_percent(self.sparsity)}"
            parts.append(f"{self.prune_method}-{level}")
        return "+".join(parts) or "none"

    def __str__(self) -> str:
        return self.canonical


def _percent(fraction: float | None) -> str:
    return f"{round((fraction or 0.0) * 100, 4):g}"


# Full matches over ASCII digits of bounded length: no trailing newline, no other scripts' digits, no integer that
# overflows a database column.
MAX_GROUP_SIZE = 65536  # far beyond any hidden size a group divides; keeps the value within every integer column
_QUANT_RE = re.compile(r"(?P<method>gptq)-w(?P<bits>[0-9]{1,2})-g(?P<group>[0-9]{1,6})|(?P<fixed>bnb-(?:nf4|fp4|int8))")
_PRUNE_RE = re.compile(
    r"(?P<method>[a-z]{1,32})-(?:s(?P<pct>[0-9]{1,3}(?:\.[0-9]{1,6})?)|n(?P<n>[0-9]{1,3})m(?P<m>[0-9]{1,3}))"
)


def parse_compression(text: str) -> CompressionSpec:
    """Parse a canonical compression string back into a spec (the inverse of ``CompressionSpec.canonical``)."""
    if text == "none":
        return CompressionSpec()
    parts = text.split("+")
    if len(parts) > 2:
        raise InvalidInput(f"malformed compression {text!r}: at most one quantizer and one pruner")
    quant = _QUANT_RE.fullmatch(parts[0])
    prune_text = parts[1] if quant and len(parts) == 2 else (parts[0] if not quant else None)
    if len(parts) == 2 and not quant:
        raise InvalidInput(f"malformed compression {text!r}: a joint spec starts with its quantizer")
    fields: dict[str, object] = {}
    if quant:
        if quant["fixed"]:
            fields["method"] = quant["fixed"]
        else:
            fields.update(method="gptq", bits=int(quant["bits"]), group_size=int(quant["group"]))
    if prune_text is not None:
        prune = _PRUNE_RE.fullmatch(prune_text)
        if not prune:
            raise InvalidInput(f"malformed compression {text!r}; examples: gptq-w3-g128, bnb-nf4, sparsegpt-s50")
        fields["prune_method"] = prune["method"]
        if not quant:
            fields["method"] = prune["method"]
        if prune["pct"] is not None:
            fields["sparsity"] = float(prune["pct"]) / 100.0
        else:
            fields.update(prune_n=int(prune["n"]), prune_m=int(prune["m"]))
    return CompressionSpec(**fields)  # type: ignore[arg-type]


def build_spec(
    method: str,
    *,
    bits: int | None = None,
    group_size: int | None = None,
    sparsity: float | None = None,
    nm: str | None = None,
    prune_method: str | None = None,
) -> CompressionSpec:
    """Build a spec from CLI-style options; ``nm`` is ``"2:4"``."""
    n = m = None
    if nm:
        match = re.fullmatch(r"([0-9]{1,3}):([0-9]{1,3})", nm.strip())
        if not match:
            raise InvalidInput(f"n:m pattern must look like 2:4, got {nm!r}")
        n, m = int(match[1]), int(match[2])
    return CompressionSpec(
        method=method, bits=bits, group_size=group_size, sparsity=sparsity, prune_n=n, prune_m=m,
        prune_method=prune_method,
    )
