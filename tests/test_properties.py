"""Property-based checks (hypothesis) of everything that parses outside input: whatever the input, the answer is a
value that round-trips or one ctpreg error, never another exception."""

import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctpreg.registry import strict_json
from ctpreg.registry.artifacts import parse_artifact
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.errors import CtpregError, InvalidArtifact, InvalidInput
from ctpreg.registry.refs import check_alias, check_name, parse_ref
from ctpreg.registry.stores import local_root
from helpers import artifact_bytes

EXAMPLES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = artifact_bytes(3)


@EXAMPLES
@given(st.text(max_size=80))
def test_refs_parse_to_themselves_or_fail_cleanly(text: str) -> None:
    try:
        ref = parse_ref(text)
    except InvalidInput:
        return
    assert str(ref) == text or str(ref) == f"{ref.name}@{ref.alias}" and text == ref.name
    assert "\n" not in text


@EXAMPLES
@given(st.text(max_size=40))
def test_names_and_aliases_accept_only_what_they_say(text: str) -> None:
    for check in (check_name, check_alias):
        try:
            assert check(text) == text
        except InvalidInput:
            continue
        assert text.isascii() and text.isprintable() and " " not in text


@EXAMPLES
@given(st.one_of(st.text(max_size=40), st.from_regex(r"(gptq-w[0-9]{1,3}-g[0-9]{1,7}|[a-z]{1,9}-s[0-9.]{1,6})",
                                                     fullmatch=True)))
def test_compression_specs_round_trip_or_fail_cleanly(text: str) -> None:
    try:
        spec = parse_compression(text)
    except InvalidInput:
        return
    assert parse_compression(spec.canonical) == spec


@EXAMPLES
@given(st.binary(max_size=600))
def test_random_bytes_are_never_an_artifact(data: bytes) -> None:
    try:
        parse_artifact(data)
    except InvalidArtifact:
        return
    raise AssertionError("random bytes parsed as an artifact")


def _with_header(header_text: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header_text)) + header_text + body


@EXAMPLES
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(min_value=0, max_value=255))
def test_one_flipped_byte_parses_cleanly_or_is_refused(position: int, value: int) -> None:
    data = bytearray(GOOD)
    data[position] = value
    try:
        artifact = parse_artifact(bytes(data))
    except InvalidArtifact:
        return
    assert np.isfinite(artifact.embeddings).all() and artifact.embeddings.shape == (4, 8)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@EXAMPLES
@given(json_values)
def test_metadata_json_is_finite_bounded_and_round_trips(value) -> None:
    text = json.dumps(value)
    try:
        parsed = strict_json.loads(text, "value", max_bytes=1 << 16)
    except InvalidInput:
        return
    assert json.dumps(parsed) == text or parsed == value


@EXAMPLES
@given(st.dictionaries(st.sampled_from(["ppl_full", "ppl_prompted", "x"]), json_values, max_size=3),
       st.text(max_size=300))
def test_metadata_fields_in_a_real_header_are_refused_cleanly(metrics, dataset: str) -> None:
    (header_len,) = struct.unpack("<Q", GOOD[:8])
    header = json.loads(GOOD[8 : 8 + header_len])
    header["__metadata__"]["metrics"] = json.dumps(metrics)
    header["__metadata__"]["dataset"] = dataset
    try:
        artifact = parse_artifact(_with_header(json.dumps(header).encode(), GOOD[8 + header_len :]))
    except CtpregError:
        return
    assert artifact.metadata.dataset == dataset and dataset.isprintable()


@EXAMPLES
@given(st.text(max_size=60))
def test_file_store_urls_are_absolute_local_paths_or_refused(text: str) -> None:
    try:
        root = local_root(f"file:{text}")
    except InvalidInput:
        return
    assert root.is_absolute() and "\x00" not in str(root)
