"""The compact prefix list of the speaker's ExaBGP commands: wire form, round trip, refusals."""

from __future__ import annotations

import base64
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speaker.compact_nlri import (
    decode_prefixes,
    encode_prefixes,
    format_prefix,
    nlri_wire,
    parse_prefix,
)


def test_a_prefix_is_its_bgp_nlri_wire_form() -> None:
    wire = base64.b64decode(encode_prefixes(["10.64.0.1/32", "10.64.0.0/28", "0.0.0.0/0"]))
    assert wire == bytes([32, 10, 64, 0, 1, 28, 10, 64, 0, 0, 0])
    assert nlri_wire(*parse_prefix("2001:db8::/33")[1:]) == bytes([33, 0x20, 0x01, 0x0D, 0xB8, 0])


def networks(family: int) -> st.SearchStrategy[str]:
    bits = 32 if family == 4 else 128
    make = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits)).map(
        lambda t: str(make((t[0], t[1]), strict=False))
    )


@given(st.sampled_from([4, 6]).flatmap(lambda f: st.tuples(st.just(f), st.lists(networks(f)))))
def test_decoding_gives_back_what_was_encoded(case: tuple[int, list[str]]) -> None:
    family, prefixes = case
    decoded = decode_prefixes(encode_prefixes(prefixes), family)
    assert [format_prefix(*p) for p in decoded] == prefixes
    assert all(len(packed) == (4 if family == 4 else 16) for packed, _ in decoded)


def test_parse_prefix_refuses_what_is_not_a_prefix() -> None:
    for text in ("10.0.0.300/32", "10.0.0.0/33", "10.0.0.0", "fd00::/129", "x/1"):
        with pytest.raises(ValueError, match="prefix"):
            parse_prefix(text)


@pytest.mark.parametrize(
    ("wire", "family", "error"),
    [
        (bytes([33, 10, 0, 0, 0, 0]), 4, "over 32"),
        (bytes([32, 10, 0, 0]), 4, "cut short"),
        (bytes([28, 10, 64, 0, 1]), 4, "host bits"),
        (bytes([129]), 6, "over 128"),
    ],
)
def test_decoding_refuses_what_the_encoder_never_writes(
    wire: bytes, family: int, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        decode_prefixes(base64.b64encode(wire).decode(), family)


def test_decoding_refuses_what_is_not_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        decode_prefixes("10.0.0.0/8", 4)
