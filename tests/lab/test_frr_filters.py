"""A real leaf accepts from a real host exactly the prefixes allocated to it.

ARCHITECTURE.md invariant 5, end to end on one link: leaf1 of the two-rack plan runs
zebra + bgpd with the config `fabric.frr` renders; host h1 runs ExaBGP and announces its
allocation plus prefixes it does not own (a default route, a covering and a narrower
prefix, a neighbour's address, space outside the pools). The leaf must keep exactly the
allocation, in both families, and send the host nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.frr import render_router_config
from fabric.plan import plan_fabric
from fabric.topology import load_topology
from tests.lab.frr_lab import MiniFabric, mini_fabric, route_prefixes, wait_for

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
POOLS = ("10.64.0.0/10", "2001:db8:100::/40")
ALLOCATION = {
    4: ["10.64.0.0/28", "10.64.200.7/32"],
    6: ["2001:db8:100::/120", "2001:db8:100:ff::7/128"],
}
FOREIGN = {
    4: ["0.0.0.0/0", "10.64.0.0/27", "10.64.0.0/29", "10.64.200.8/32", "192.168.0.0/24"],
    6: ["::/0", "2001:db8:100::/119", "2001:db8:100::/121", "2001:db8:200::/48"],
}


@pytest.fixture
def leaf_and_host(tmp_path: Path) -> Iterator[MiniFabric]:
    plan = plan_fabric(load_topology((ROOT / "lab/topologies/two-rack.clab.yml").read_text()))
    allocations = {"h1": ALLOCATION[4] + ALLOCATION[6]}
    config = render_router_config(plan, "leaf1", allocations, pools=POOLS)
    # Test instrumentation only: keep what h1 sent before the filter, to know it all arrived.
    for peer in plan.peers_for_host("h1"):
        activate = f"  neighbor {peer.local_address} activate\n"
        soft = f"  neighbor {peer.local_address} soft-reconfiguration inbound\n"
        config = config.replace(activate, activate + soft)
    announced = [p for family in (4, 6) for p in ALLOCATION[family] + FOREIGN[family]]
    with mini_fabric(plan, ["leaf1", "h1"], {"leaf1": config}, {"h1": announced}, tmp_path) as f:
        yield f


@pytest.mark.parametrize("family", [4, 6])
def test_leaf_keeps_exactly_the_allocation(leaf_and_host: MiniFabric, family: int) -> None:
    fabric = leaf_and_host
    peer = next(p for p in fabric.plan.peers_for_host("h1") if p.family == family)
    af = f"ipv{family} unicast"
    neighbor = peer.local_address
    sent = set(ALLOCATION[family] + FOREIGN[family])

    def everything_received() -> tuple[bool, Any]:
        doc = fabric.vtysh_json("leaf1", f"show bgp {af} neighbors {neighbor} received-routes json")
        return route_prefixes(doc) == sent, doc

    wait_for(f"leaf1 to receive all of h1's IPv{family} announcements", everything_received)
    accepted = fabric.vtysh_json("leaf1", f"show bgp {af} neighbors {neighbor} routes json")
    assert route_prefixes(accepted) == set(ALLOCATION[family]), accepted
    advertised = fabric.vtysh_json(
        "leaf1", f"show bgp {af} neighbors {neighbor} advertised-routes json"
    )
    assert "error" not in advertised and route_prefixes(advertised) == set(), advertised
