"""IPAM arithmetic (fabric.addressing) under hypothesis: no overlap, alignment,
exhaustion, rack slices, borrowing, release."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.addressing import (
    AddressError,
    PlacedBlock,
    borrowable_address,
    carve_block,
    first_fit,
    first_free_address,
    parse_network,
)

SUBNET4 = ipaddress.ip_network("10.64.0.0/24")


def test_parse_network_names_the_fix() -> None:
    with pytest.raises(AddressError, match=r"did you mean 10\.0\.0\.0/24\?"):
        parse_network("10.0.0.1/24")
    with pytest.raises(AddressError, match="not a valid CIDR"):
        parse_network("10.0.0.0/40")


@given(st.lists(st.integers(24, 30), max_size=40))
def test_first_fit_never_overlaps_and_is_aligned(lengths: list[int]) -> None:
    taken: list[ipaddress.IPv4Network] = []
    for length in lengths:
        found = first_fit(SUBNET4, length, taken)
        if found is None:
            # exhausted: no aligned gap of that size exists
            size = 1 << (32 - length)
            starts = range(int(SUBNET4.network_address), int(SUBNET4.broadcast_address), size)
            for start in starts:
                candidate = ipaddress.ip_network(f"{ipaddress.IPv4Address(start)}/{length}")
                assert any(candidate.overlaps(t) for t in taken)
            continue
        assert isinstance(found, ipaddress.IPv4Network)
        assert found.subnet_of(SUBNET4)
        assert int(found.network_address) % found.num_addresses == 0
        assert not any(found.overlaps(t) for t in taken)
        taken.append(found)


@given(st.lists(st.tuples(st.sampled_from(["r1", "r2", "r3", "r4"]), st.booleans()), max_size=60))
@settings(max_examples=60)
def test_rack_blocks_stay_in_their_slice(ops: list[tuple[str, bool]]) -> None:
    """Carve (True) or release the oldest block (False) of a rack: blocks never overlap
    and no /26 slice ever holds blocks of two racks."""
    blocks: list[PlacedBlock] = []
    for rack, carve in ops:
        if carve:
            found = carve_block(SUBNET4, 28, blocks, rack=rack, rack_prefix_length=26)
            if found is None:
                slices = {b.cidr.supernet(new_prefix=26) for b in blocks}
                own = [b for b in blocks if b.rack == rack]
                assert len(slices) == 4 or len(own) == 4
                continue
            assert not any(found.overlaps(b.cidr) for b in blocks)
            blocks.append(PlacedBlock(found, rack))
        else:
            own = [b for b in blocks if b.rack == rack]
            if own:
                blocks.remove(own[0])
        slices_by_rack: dict[str | None, set[ipaddress._BaseNetwork]] = {}
        for b in blocks:
            slices_by_rack.setdefault(b.rack, set()).add(b.cidr.supernet(new_prefix=26))
        owners = [s for ss in slices_by_rack.values() for s in ss]
        assert len(owners) == len(set(owners)), "a slice is shared by two racks"


@given(st.sets(st.integers(0, 15), max_size=16))
def test_first_free_address_skips_used(used_offsets: set[int]) -> None:
    block = ipaddress.ip_network("10.64.0.16/28")
    used = [block.network_address + i for i in used_offsets]
    free = first_free_address(block, used)
    if len(used_offsets) == 16:
        assert free is None
    else:
        assert free is not None and free in block and free not in used
        assert int(free) - int(block.network_address) == min(set(range(16)) - used_offsets)


def test_borrowing_prefers_space_outside_blocks() -> None:
    subnet = ipaddress.ip_network("10.64.0.0/27")
    blocks = [ipaddress.ip_network("10.64.0.0/28")]
    used = [ipaddress.ip_address("10.64.0.0")]
    assert borrowable_address(subnet, used, blocks) == ipaddress.ip_address("10.64.0.16")
    full = [ipaddress.ip_network("10.64.0.0/28"), ipaddress.ip_network("10.64.0.16/28")]
    assert borrowable_address(subnet, used, full) == ipaddress.ip_address("10.64.0.1")
    everything = [subnet.network_address + i for i in range(32)]
    assert borrowable_address(subnet, everything, full) is None


def test_ipv6_blocks() -> None:
    subnet = ipaddress.ip_network("2001:db8:100::/64")
    first = carve_block(subnet, 120, [])
    assert first == ipaddress.ip_network("2001:db8:100::/120")
    second = carve_block(subnet, 120, [PlacedBlock(first, None)])
    assert second == ipaddress.ip_network("2001:db8:100::100/120")
