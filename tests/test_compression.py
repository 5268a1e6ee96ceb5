import pytest

from ctpreg.registry.compression import CompressionSpec, build_spec, parse_compression
from ctpreg.registry.errors import InvalidInput


@pytest.mark.parametrize(
    "text",
    ["none", "gptq-w3-g128", "gptq-w2-g64", "bnb-nf4", "bnb-fp4", "bnb-int8", "sparsegpt-s50", "wanda-n2m4",
     "magnitude-s62.5", "gptq-w4-g128+sparsegpt-s50", "bnb-nf4+wanda-n2m4"],
)
def test_canonical_round_trip(text: str) -> None:
    assert parse_compression(text).canonical == text


@pytest.mark.parametrize(
    ("spec", "severity"),
    [("none", 16), ("gptq-w3-g128", 3), ("bnb-int8", 8), ("sparsegpt-s75", 4), ("gptq-w4-g128+sparsegpt-s50", 2)],
)
def test_severity_is_effective_bits(spec: str, severity: float) -> None:
    assert parse_compression(spec).severity == pytest.approx(severity)


def test_defaults_fill_group_size_and_fixed_bits() -> None:
    assert build_spec("gptq", bits=3).canonical == "gptq-w3-g128"
    assert build_spec("bnb-nf4").bits == 4
    assert build_spec("gptq", bits=4, sparsity=0.5).canonical == "gptq-w4-g128+sparsegpt-s50"
    assert build_spec("wanda", nm="2:4").sparsity == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "gptq", "bits": 5}, "supports bits"),
        ({"method": "gptq"}, "needs --bits"),
        ({"method": "bnb-nf4", "bits": 3}, "fixed at 4 bits"),
        ({"method": "sparsegpt", "sparsity": 1.2}, "strictly between 0 and 1"),
        ({"method": "sparsegpt", "sparsity": 0.0}, "strictly between 0 and 1"),
        ({"method": "sparsegpt"}, "needs a sparsity"),
        ({"method": "awq", "bits": 4}, "unknown compression method 'awq'"),
        ({"method": "none", "sparsity": 0.5}, "needs a pruning method"),
        ({"method": "sparsegpt", "bits": 4, "sparsity": 0.5}, "takes no bits"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        CompressionSpec(**kwargs)


@pytest.mark.parametrize("text", ["gptq-w3", "gptq-w5-g128", "sparsegpt-50", "x+y+z", "sparsegpt-s50+gptq-w4-g128"])
def test_malformed_strings_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_compression(text)


def test_nm_pattern_must_be_well_formed() -> None:
    with pytest.raises(InvalidInput, match="n:m"):
        build_spec("wanda", nm="4:2")
    with pytest.raises(InvalidInput, match="2:4"):
        build_spec("wanda", nm="half")
