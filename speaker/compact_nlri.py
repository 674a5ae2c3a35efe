"""The compact prefix list of the speaker's own ExaBGP commands: pure, stdlib only.

A list of prefixes of one family travels as base64 of their BGP NLRI wire encoding (RFC
4271 4.3: a length byte, then the fewest bytes that hold that many bits), e.g.
`10.64.0.1/32` is `20 0a 40 00 01`. That is 5 bytes for a /32 where the text form takes
14, and decoding it is slicing, not parsing: `speaker.exabgp_launcher` turns it into
ExaBGP's NLRI objects without ExaBGP's text parser, which is what made announcing many
prefixes slow.

Used by `speaker.bgp` (encode) and `speaker.exabgp_launcher` (decode, inside ExaBGP).
It never touches the network or ExaBGP.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from collections.abc import Iterable

ADDRESS_BYTES = {4: 4, 6: 16}


def parse_prefix(prefix: str) -> tuple[int, bytes, int]:
    """(family, packed network address, prefix length) of a CIDR; ValueError if it is not
    one. Much cheaper than `ipaddress` (no objects), for hosts with 100,000 prefixes."""
    address, _, length_text = prefix.partition("/")
    family = 6 if ":" in address else 4
    try:
        packed = socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET, address)
        length = int(length_text)
    except (OSError, ValueError):
        raise ValueError(f"{prefix!r} is not an IPv4 or IPv6 prefix") from None
    if not 0 <= length <= len(packed) * 8:
        raise ValueError(f"{prefix!r} has a prefix length over {len(packed) * 8}")
    return family, packed, length


def nlri_wire(packed: bytes, length: int) -> bytes:
    """One prefix in the NLRI wire encoding: the length byte and the bytes it needs."""
    return bytes((length,)) + packed[: (length + 7) // 8]


def encode_wire(prefixes: Iterable[bytes]) -> str:
    """The compact form of prefixes already in wire encoding (`nlri_wire`), in order."""
    return base64.b64encode(b"".join(prefixes)).decode("ascii")


def encode_prefixes(prefixes: Iterable[str]) -> str:
    """The compact form of CIDRs (of one family), in the given order."""
    return encode_wire(nlri_wire(*parse_prefix(p)[1:]) for p in prefixes)


def decode_prefixes(text: str, family: int) -> list[tuple[bytes, int]]:
    """(full-length packed network address, prefix length) for each prefix of `text`.

    Raises ValueError for anything that `encode_prefixes` would not have written: bad
    base64, a length beyond the family's, a truncated prefix, host bits set."""
    size = ADDRESS_BYTES[family]
    try:
        wire = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    padding = bytes(size)
    prefixes: list[tuple[bytes, int]] = []
    offset = 0
    while offset < len(wire):
        length = wire[offset]
        used = (length + 7) // 8
        if length > size * 8:
            raise ValueError(f"prefix length {length} at byte {offset} is over {size * 8}")
        if offset + 1 + used > len(wire):
            raise ValueError(f"prefix at byte {offset} is cut short")
        address = wire[offset + 1 : offset + 1 + used]
        if length % 8 and address[-1] & (0xFF >> (length % 8)):
            raise ValueError(f"prefix at byte {offset} has host bits set")
        prefixes.append((address + padding[used:], length))
        offset += 1 + used
    return prefixes


def format_prefix(packed: bytes, length: int) -> str:
    """The CIDR text of a decoded prefix (for logs and tests)."""
    return f"{ipaddress.ip_address(packed)}/{length}"
