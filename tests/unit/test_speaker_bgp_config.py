"""The pure half of the BGP speaker: ExaBGP config, announce batching, API line parsing."""

from __future__ import annotations

import ipaddress
import json

from hypothesis import given
from hypothesis import strategies as st

from fabric.state import Block, Borrowed, HostInfo, HostState, Peer
from speaker.bgp import (
    Ack,
    NeighborTable,
    SessionEvent,
    batch_commands,
    desired_prefixes,
    parse_api_line,
    render_exabgp_config,
)
from speaker.compact_nlri import decode_prefixes, format_prefix

STATE = HostState(
    revision=3,
    host=HostInfo(name="h1", rack="r1", asn=4200000001, address="10.0.0.1", address6="fd00::1"),
    peers=(
        Peer("leaf1", 4, "10.0.0.254", "10.0.0.1", 65001, 4200000001, hold_time=9),
        Peer("leaf1", 6, "fd00::fe", "fd00::1", 65001, 4200000001, hold_time=9),
        Peer("leaf2", 4, "10.0.1.254", "10.0.1.1", 65002, 4200000001, hold_time=6),
    ),
    blocks=(Block("10.64.0.0/28", "n"), Block("2001:db8::/120", "n", holes=("2001:db8::9",))),
    borrowed=(Borrowed("10.65.0.7", "n"), Borrowed("2001:db8:1::5", "n")),
)


def neighbor_sections(config: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for chunk in config.split("neighbor ")[1:]:
        address, body = chunk.split(" ", 1)
        sections[address] = body
    return sections


def test_config_has_one_session_per_peer_with_its_family_and_timers() -> None:
    config = render_exabgp_config(STATE, "/usr/bin/python3 relay.py /run/api.sock")
    sections = neighbor_sections(config)
    assert set(sections) == {"10.0.0.254", "fd00::fe", "10.0.1.254"}
    v6 = sections["fd00::fe"]
    assert "local-address fd00::1;" in v6 and "ipv6 unicast;" in v6 and "ipv4 unicast" not in v6
    assert "router-id 10.0.0.1;" in v6  # a router id is always an IPv4 address
    leaf2 = sections["10.0.1.254"]
    for line in ("local-as 4200000001;", "peer-as 65002;", "hold-time 6;", "manual-eor true;"):
        assert line in leaf2
    assert "graceful-restart 120;" in leaf2
    assert "run /usr/bin/python3 relay.py /run/api.sock;" in config
    assert "encoder json;" in config


def test_config_is_stable_across_peer_order() -> None:
    shuffled = HostState(revision=4, host=STATE.host, peers=tuple(reversed(STATE.peers)))
    assert render_exabgp_config(shuffled, "x") == render_exabgp_config(STATE, "x")


def test_ipv6_only_host_gets_an_ipv4_router_id() -> None:
    host = HostInfo(name="h6", rack=None, asn=4200000002, address="fd00::2")
    state = HostState(revision=1, host=host, peers=(STATE.peers[1],))
    config = render_exabgp_config(state, "x")
    router_id = config.split("router-id ")[1].split(";")[0]
    assert ipaddress.ip_address(router_id).version == 4


def test_desired_prefixes_are_blocks_and_borrowed_host_routes() -> None:
    assert desired_prefixes(STATE) == {
        "10.64.0.0/28",
        "2001:db8::/120",
        "10.65.0.7/32",
        "2001:db8:1::5/128",
    }


def decoded(line: str) -> list[str]:
    _, _, afi, compact = line.split(" ")
    family = 4 if afi == "ipv4" else 6
    return [format_prefix(*p) for p in decode_prefixes(compact, family)]


def test_batches_never_mix_families() -> None:
    batches = batch_commands("announce", desired_prefixes(STATE))
    assert [b.line for b in batches] == [
        "terrace announce-nlri ipv4 HApAAAAgCkEABw==",
        "terrace announce-nlri ipv6 eCABDbgAAAAAAAAAAAAAAIAgAQ24AAEAAAAAAAAAAAAF",
    ]
    assert [decoded(b.line) for b in batches] == [
        ["10.64.0.0/28", "10.65.0.7/32"],
        ["2001:db8::/120", "2001:db8:1::5/128"],
    ]


def test_nothing_to_send_is_no_line() -> None:
    assert batch_commands("withdraw", []) == []


prefixes = st.lists(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda n: f"{ipaddress.IPv4Address(n)}/32"),
        st.integers(0, 2**128 - 1).map(lambda n: f"{ipaddress.IPv6Address(n)}/128"),
    ),
    max_size=300,
)


@given(prefixes, st.integers(200, 4000))
def test_batches_respect_the_size_limit_and_lose_nothing(items: list[str], limit: int) -> None:
    batches = batch_commands("withdraw", items, max_bytes=limit)
    assert all(len(b.line) <= limit for b in batches)
    assert sorted(p for b in batches for p in b.prefixes) == sorted(set(items))
    for batch in batches:
        assert batch.line.startswith(("terrace withdraw-nlri ipv4 ", "terrace withdraw-nlri ipv6 "))
        assert decoded(batch.line) == list(batch.prefixes)
        assert len({ipaddress.ip_network(p).version for p in batch.prefixes}) == 1


def test_api_lines_are_acks_session_changes_or_neighbor_tables() -> None:
    assert parse_api_line("done\n") == Ack(ok=True)
    assert parse_api_line("error") == Ack(ok=False)
    event = {
        "exabgp": "5.0.0",
        "type": "state",
        "neighbor": {"address": {"local": "10.0.0.1", "peer": "10.0.0.254"}, "state": "up"},
    }
    assert parse_api_line(json.dumps(event)) == SessionEvent("10.0.0.254", "up")
    table = [
        {"state": "up", "fsm": "established", "peer": {"address": "10.0.0.254"}},
        {"state": "down", "fsm": "ACTIVE", "peer": {"address": "fd00::fe"}},
    ]
    assert parse_api_line(json.dumps(table)) == NeighborTable(
        {"10.0.0.254": "up", "fd00::fe": "active"}
    )
    assert parse_api_line('{"type": "update"}') is None
    assert parse_api_line("garbage {") is None
