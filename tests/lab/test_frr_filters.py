"""A real leaf accepts from a real host exactly the prefixes allocated to it.

ARCHITECTURE.md invariant 5, end to end on one link: leaf1 of the two-rack plan runs
zebra + bgpd with the config `fabric.frr` renders; host h1 runs ExaBGP and announces its
allocation plus prefixes it does not own (a default route, a covering and a narrower
prefix, a neighbour's address, space outside the pools). The leaf must keep exactly the
allocation, in both families, and send the host nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.frr import render_router_config
from fabric.plan import plan_fabric
from fabric.topology import load_topology
from tests.lab.frr_lab import FRR_DAEMONS, MiniFabric, mini_fabric, route_prefixes, run, wait_for

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


LATER = {4: "10.64.0.16/28", 6: "2001:db8:100:1::/120"}


@pytest.mark.parametrize("family", [4, 6])
def test_new_block_is_accepted_after_reload(tmp_path: Path, family: int) -> None:
    """h1 announces a block before the leaf's filter allows it; `frr-reload.py` with the
    re-rendered config makes the leaf accept it without resetting the session."""
    plan = plan_fabric(load_topology((ROOT / "lab/topologies/two-rack.clab.yml").read_text()))
    before = ALLOCATION[4] + ALLOCATION[6]
    after = [*before, LATER[4], LATER[6]]
    config = render_router_config(plan, "leaf1", {"h1": before}, pools=POOLS)
    peer = next(p for p in plan.peers_for_host("h1") if p.family == family)
    af, neighbor = f"ipv{family} unicast", peer.local_address
    with mini_fabric(plan, ["leaf1", "h1"], {"leaf1": config}, {"h1": after}, tmp_path) as f:

        def accepted(expected: set[str]) -> Callable[[], tuple[bool, Any]]:
            def probe() -> tuple[bool, Any]:
                received = f.vtysh_json("leaf1", f"show bgp {af} neighbors {neighbor} routes json")
                return route_prefixes(received) == expected, received

            return probe

        wait_for("the allocation before the reload", accepted(set(ALLOCATION[family])))
        received = f.vtysh_json("leaf1", f"show bgp {af} neighbors {neighbor} received-routes json")
        assert LATER[family] in route_prefixes(received)
        new = tmp_path / "leaf1.new.conf"
        new.write_text(render_router_config(plan, "leaf1", {"h1": after}, pools=POOLS))
        reload = run(
            str(FRR_DAEMONS / "frr-reload.py"), "--reload", "--stdout", "-N",
            f.namespaces["leaf1"], str(new),
        )  # fmt: skip
        assert reload.returncode == 0, reload.stdout + reload.stderr
        wait_for("the new block after the reload", accepted({*ALLOCATION[family], LATER[family]}))
        state = f.vtysh_json("leaf1", f"show bgp neighbors {neighbor} json")[neighbor]
        assert state["connectionsEstablished"] == 1, state
