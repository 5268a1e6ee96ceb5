import pytest

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.refs import check_name, parse_ref


def test_reference_forms() -> None:
    assert parse_ref("smollm2-135m/gptq-w3-g128/wiki").alias == "latest"
    assert parse_ref("a/b:12").version == 12
    assert parse_ref("a/b@prod").alias == "prod"
    assert parse_ref("deadbeef").sha_prefix == "deadbeef"
    assert parse_ref("m/gptq-w4-g128+sparsegpt-s50/wiki:3").name == "m/gptq-w4-g128+sparsegpt-s50/wiki"


@pytest.mark.parametrize(
    "text", ["a/b:0", "a/b:x", "a/b@", "a/b@1bad", "", "../etc/passwd", "a//b", "/abs", "a/../b", "a b", "a\\b"]
)
def test_malformed_references_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_ref(text)


@pytest.mark.parametrize("name", ["../x", "a/..", "a/./b", ".hidden", "a/.b", "x\x00y", "a/b/", "a;rm -rf"])
def test_names_cannot_traverse_or_inject(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid prompt name"):
        check_name(name)
