"""The numbering plan: deterministic, unique ASNs and addresses, host peers."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.plan import FabricPlan, PlanError, plan_fabric
from fabric.state import Peer
from fabric.topology import Topology, load_topology, topology_from_document
from tests.unit.fabric_samples import clos, shuffled

TOPOLOGIES = Path(__file__).resolve().parents[2] / "lab" / "topologies"


def _load(name: str) -> Topology:
    return load_topology((TOPOLOGIES / f"{name}.clab.yml").read_text())


def _all_addresses(plan: FabricPlan) -> list[str]:
    found = [r.loopback4 for r in plan.routers.values()]
    found += [r.loopback6 for r in plan.routers.values()]
    found += [f"{h.router_id}/32" for h in plan.hosts.values()]
    found += [h.loopback6 for h in plan.hosts.values()]
    for link in plan.links:
        found += [link.a_address4, link.b_address4, link.a_address6, link.b_address6]
    return [str(ipaddress.ip_interface(a).ip) for a in found]


def assert_unique(plan: FabricPlan) -> None:
    addresses = _all_addresses(plan)
    assert len(addresses) == len(set(addresses))
    spine_asns = {plan.routers[s.name].asn for s in plan.topology.spines()}
    assert len(spine_asns) <= 1
    others = [r.asn for r in plan.routers.values() if r.role == "leaf"]
    others += [h.asn for h in plan.hosts.values()]
    assert len(others) == len(set(others))
    assert not spine_asns & set(others)
    assert all(4200000000 <= h.asn <= 4294967294 for h in plan.hosts.values())


def assert_links_well_formed(plan: FabricPlan) -> None:
    for link in plan.links:
        net4 = ipaddress.ip_interface(link.a_address4).network
        assert net4.prefixlen == 31
        assert ipaddress.ip_interface(link.b_address4).network == net4
        net6 = ipaddress.ip_interface(link.a_address6).network
        assert net6.prefixlen == 127
        assert ipaddress.ip_interface(link.b_address6).network == net6
        assert net4.subnet_of(ipaddress.IPv4Network("172.30.0.0/16"))
        assert net6.subnet_of(ipaddress.IPv6Network("fd00:30::/48"))


@pytest.mark.parametrize("name", ["two-rack", "four-rack"])
def test_shipped_plans_are_unique_and_well_formed(name: str) -> None:
    plan = plan_fabric(_load(name))
    assert_unique(plan)
    assert_links_well_formed(plan)
    assert len(plan.links) == len(plan.topology.links)


def test_rfc7938_asns() -> None:
    plan = plan_fabric(_load("four-rack"))
    assert {plan.routers[n].asn for n in ("spine1", "spine2")} == {65000}
    assert [plan.routers[f"leaf{i}"].asn for i in range(1, 5)] == [65001, 65002, 65003, 65004]
    assert plan.hosts["h1"].asn == 4200000000


def test_plan_is_independent_of_file_order() -> None:
    doc = clos(3, 2, dual_homed=True)
    reference = plan_fabric(topology_from_document(doc))
    for seed in range(5):
        assert plan_fabric(topology_from_document(shuffled(doc, seed))) == _without_topology(
            reference, topology_from_document(shuffled(doc, seed))
        )


def _without_topology(plan: FabricPlan, topology: Topology) -> FabricPlan:
    """The same plan attached to another (equivalent) topology object, for comparison."""
    return FabricPlan(topology, plan.routers, plan.hosts, plan.links)


def test_same_file_same_plan() -> None:
    text = (TOPOLOGIES / "four-rack.clab.yml").read_text()
    assert plan_fabric(load_topology(text)) == plan_fabric(load_topology(text))


def test_host_peers_follow_the_links() -> None:
    plan = plan_fabric(_load("two-rack"))
    link = next(x for x in plan.links if x.b == "h1")
    host = plan.hosts["h1"]
    assert plan.peers_for_host("h1") == (
        Peer("leaf1", 4, link.a_address4.split("/")[0], host.address, 65001, host.asn, 9),
        Peer("leaf1", 6, link.a_address6.split("/")[0], host.address6, 65001, host.asn, 9),
    )
    assert host.address == link.b_address4.split("/")[0]


def test_dual_homed_host_peers_with_every_leaf() -> None:
    plan = plan_fabric(topology_from_document(clos(1, 1, dual_homed=True)))
    peers = plan.peers_for_host("r1h1")
    assert [(p.name, p.family) for p in peers] == [("l1a", 4), ("l1a", 6), ("l1b", 4), ("l1b", 6)]
    assert plan.hosts["r1h1"].leaves == ("l1a", "l1b")
    assert len({p.local_address for p in peers}) == 4


def test_interfaces_of_a_leaf() -> None:
    plan = plan_fabric(_load("two-rack"))
    interfaces = plan.interfaces_of("leaf1")
    assert [(i.interface, i.peer) for i in interfaces] == [
        ("eth1", "spine1"),
        ("eth2", "spine2"),
        ("eth3", "h1"),
        ("eth4", "h2"),
    ]


def test_ranges_too_small_are_refused() -> None:
    topology = topology_from_document(clos(4, 40))
    with pytest.raises(PlanError, match="do not fit"):
        plan_fabric(topology, underlay4="10.0.0.0/24")
    with pytest.raises(PlanError, match="underlay6"):
        plan_fabric(topology, underlay6="fd00::/64")
    with pytest.raises(PlanError, match="already used"):
        plan_fabric(topology, leaf_asn_base=64999)
    with pytest.raises(PlanError, match="out of range"):
        plan_fabric(topology, host_asn_base=4294967290)


@settings(max_examples=40, deadline=None)
@given(
    racks=st.integers(min_value=1, max_value=6),
    hosts=st.integers(min_value=1, max_value=5),
    spines=st.integers(min_value=1, max_value=4),
    dual=st.booleans(),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_generated_topologies_plan_uniquely(
    racks: int, hosts: int, spines: int, dual: bool, seed: int
) -> None:
    doc = clos(racks, hosts, spines, dual)
    plan = plan_fabric(topology_from_document(doc))
    assert_unique(plan)
    assert_links_well_formed(plan)
    other = topology_from_document(shuffled(doc, seed))
    assert plan_fabric(other) == _without_topology(plan, other)
    for host in plan.hosts.values():
        assert len(plan.peers_for_host(host.name)) == 2 * len(host.leaves)
