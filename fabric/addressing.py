"""Address arithmetic for IPAM: carving subnets, rack slices and blocks, picking addresses.

Pure functions over `ipaddress` objects. The controller calls them inside a database
transaction that holds the right lock; the database constraints are the last word on
overlap and uniqueness, these functions only choose. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_BLOCK_PREFIX = {4: 28, 6: 120}
MAX_PREFIX = {4: 32, 6: 128}


class AddressError(ValueError):
    """A CIDR or address that cannot be used as given; the message says how to fix it."""


def parse_network(text: str, *, what: str = "CIDR") -> IPNetwork:
    """Parse a CIDR strictly: host bits set is an error that suggests the network."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise AddressError(f"{text!r} is not a valid {what}: {exc}") from None
        raise AddressError(f"{text} has host bits set; did you mean {loose}?") from None


def parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise AddressError(f"{text!r} is not a valid IP address") from None


def check_prefix_length(family: int, prefix_length: int, *, what: str) -> None:
    if family not in MAX_PREFIX:
        raise AddressError(f"family must be 4 or 6, not {family!r}")
    top = MAX_PREFIX[family]
    if not 0 <= prefix_length <= top:
        raise AddressError(f"{what} /{prefix_length} is out of range for IPv{family} (0..{top})")


def overlaps_any(candidate: IPNetwork, taken: Iterable[IPNetwork]) -> bool:
    return any(candidate.overlaps(t) for t in taken if t.version == candidate.version)


def first_fit(
    parent: IPNetwork, prefix_length: int, taken: Sequence[IPNetwork]
) -> IPNetwork | None:
    """The lowest aligned /prefix_length inside `parent` that overlaps nothing in `taken`.

    Walks the gaps between taken ranges instead of every candidate, so a /8 pool with a
    few thousand subnets is cheap.
    """
    if prefix_length < parent.prefixlen or prefix_length > parent.max_prefixlen:
        return None
    size = 1 << (parent.max_prefixlen - prefix_length)
    start = int(parent.network_address)
    end = int(parent.broadcast_address)
    cursor = start
    for t in sorted(
        (t for t in taken if t.version == parent.version and t.overlaps(parent)),
        key=lambda n: int(n.network_address),
    ):
        t_start, t_end = int(t.network_address), int(t.broadcast_address)
        aligned = _align_up(cursor, size)
        if aligned + size - 1 < t_start:
            return _network(parent.version, aligned, prefix_length)
        cursor = max(cursor, t_end + 1)
    aligned = _align_up(cursor, size)
    if aligned + size - 1 <= end:
        return _network(parent.version, aligned, prefix_length)
    return None


def _align_up(value: int, size: int) -> int:
    return (value + size - 1) // size * size


def _network(version: int, start: int, prefix_length: int) -> IPNetwork:
    address: IPAddress = (
        ipaddress.IPv4Address(start) if version == 4 else ipaddress.IPv6Address(start)
    )
    return ipaddress.ip_network(f"{address}/{prefix_length}")


@dataclass(frozen=True, slots=True)
class PlacedBlock:
    """An existing block of a subnet and the rack of the host that owns it."""

    cidr: IPNetwork
    rack: str | None


def rack_slice_for(
    subnet: IPNetwork, rack_prefix_length: int, rack: str | None, blocks: Sequence[PlacedBlock]
) -> IPNetwork | None:
    """The slice of `subnet` that belongs to `rack`: the one its blocks already use,
    else the first slice no other rack uses. None when every slice is taken."""
    for block in blocks:
        if block.rack == rack:
            return block.cidr.supernet(new_prefix=rack_prefix_length)
    used = [b.cidr.supernet(new_prefix=rack_prefix_length) for b in blocks]
    return first_fit(subnet, rack_prefix_length, used)


def carve_block(
    subnet: IPNetwork,
    block_prefix_length: int,
    blocks: Sequence[PlacedBlock],
    *,
    rack: str | None = None,
    rack_prefix_length: int | None = None,
) -> IPNetwork | None:
    """A new block for a host of `rack`: first fit, inside the rack's slice when the
    subnet is rack-aware. None when no block can be carved (the host must borrow)."""
    taken = [b.cidr for b in blocks]
    if rack_prefix_length is None:
        return first_fit(subnet, block_prefix_length, taken)
    own_slices = {b.cidr.supernet(new_prefix=rack_prefix_length) for b in blocks if b.rack == rack}
    for slice_ in sorted(own_slices, key=lambda n: int(n.network_address)):
        found = first_fit(slice_, block_prefix_length, taken)
        if found is not None:
            return found
    used = [b.cidr.supernet(new_prefix=rack_prefix_length) for b in blocks]
    fresh = first_fit(subnet, rack_prefix_length, used)
    if fresh is None:
        return None
    return first_fit(fresh, block_prefix_length, taken)


def free_addresses(network: IPNetwork, used: Iterable[IPAddress]) -> Iterator[IPAddress]:
    """Addresses of `network` not in `used`, lowest first. Every address of a block is
    usable: endpoints get host routes (/32, /128), there is no broadcast address."""
    taken = {int(a) for a in used}
    first = int(network.network_address)
    cls = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
    for value in range(first, first + network.num_addresses):
        if value not in taken:
            yield cls(value)


def free_offsets(size: int, used: Iterable[int], count: int) -> list[int]:
    """The `count` lowest offsets in 0..size-1 not in `used` (fewer if not that many)."""
    taken = set(used)
    out: list[int] = []
    for offset in range(size):
        if offset not in taken:
            out.append(offset)
            if len(out) == count:
                break
    return out


def first_free_address(network: IPNetwork, used: Iterable[IPAddress]) -> IPAddress | None:
    return next(free_addresses(network, used), None)


def borrowable_address(
    subnet: IPNetwork, used: Iterable[IPAddress], blocks: Sequence[IPNetwork]
) -> IPAddress | None:
    """An address to borrow in `subnet`: preferably outside every block (no hole in a
    neighbour's block), else any unused one. Used only when no block can be carved."""
    used_set = set(used)
    for address in free_addresses(subnet, used_set):
        if not any(address in b for b in blocks):
            return address
    return first_free_address(subnet, used_set)
