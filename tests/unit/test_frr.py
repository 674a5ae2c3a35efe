"""Rendered FRR configs: golden files, per-host filters, sessions, safe aggregation.

Regenerate the golden configs after a deliberate template change with:

    UPDATE_GOLDEN=1 python -m pytest -q tests/unit/test_frr.py

and review the diff. tests/lab/test_frr_parser.py feeds every golden file to FRR.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.frr import RenderError, render_router_config, router_config
from fabric.plan import FabricPlan, plan_fabric
from fabric.routes import aggregates_for
from fabric.topology import load_topology, topology_from_document
from tests.unit.fabric_samples import clos

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
POOLS = ("10.64.0.0/10", "2001:db8:100::/40")
TOPOLOGIES = ("two-rack", "four-rack")


def _plan(name: str) -> FabricPlan:
    return plan_fabric(
        load_topology((ROOT / "lab" / "topologies" / f"{name}.clab.yml").read_text())
    )


def rack_slices(plan: FabricPlan) -> dict[str, tuple[str, ...]]:
    """Rack r<N> owns 10.65.<N>.0/24 and 2001:db8:165:<N>::/64 of rack-aware subnets."""
    return {
        rack: (f"10.65.{i}.0/24", f"2001:db8:165:{i}::/64")
        for i, rack in enumerate(plan.topology.racks(), start=1)
    }


def sample_allocations(plan: FabricPlan) -> dict[str, list[str]]:
    """Every host: a plain block per family, a block in its rack slice; the first host
    also borrowed a /32 and a /128 (outside every rack slice)."""
    slices = rack_slices(plan)
    per_rack: dict[str, int] = {}
    allocations: dict[str, list[str]] = {}
    for i, host in enumerate(plan.hosts.values()):
        rack = host.rack or ""
        k = per_rack[rack] = per_rack.get(rack, -1) + 1
        slice4 = ipaddress.ip_network(slices[rack][0])
        slice6 = ipaddress.ip_network(slices[rack][1])
        allocations[host.name] = [
            f"10.64.{i}.0/28",
            f"2001:db8:100:{i}::/120",
            f"{slice4.network_address + 16 * k}/28",
            f"{slice6.network_address + 256 * k}/120",
        ]
    first = next(iter(plan.hosts))
    allocations[first] += ["10.64.200.7/32", "2001:db8:100:ff::7/128"]
    return allocations


def render_all(name: str) -> dict[str, str]:
    plan = _plan(name)
    aggregates = aggregates_for(plan, rack_slices(plan))
    return {
        router: render_router_config(
            plan, router, sample_allocations(plan), pools=POOLS, aggregates=aggregates
        )
        for router in plan.routers
    }


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_golden_configs(name: str) -> None:
    rendered = render_all(name)
    stale = []
    for router, text in rendered.items():
        path = GOLDEN / f"{name}-{router}.conf"
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(path.name)
    assert not stale, f"golden configs differ: {stale}; see this module's docstring"


def test_rendering_is_deterministic() -> None:
    assert render_all("four-rack") == render_all("four-rack")


def _prefix_lists(text: str) -> dict[str, list[tuple[str, str]]]:
    lists: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"^ipv?6? ?prefix-list (\S+) seq \d+ (permit|deny) (.+)$", text, re.M):
        lists.setdefault(m.group(1), []).append((m.group(2), m.group(3)))
    return lists


def _filter_of(text: str, host: str, family: int) -> list[str]:
    """The permitted prefixes of a host's list; checks it ends with `deny any`."""
    entries = _prefix_lists(text)[f"HOST-{host}-V{family}"]
    assert entries[-1] == ("deny", "any")
    assert all(action == "permit" for action, _ in entries[:-1])
    return [prefix for _, prefix in entries[:-1]]


def _family(cidrs: Sequence[str], family: int) -> set[str]:
    """The CIDRs of one family, in canonical spelling (as FRR and the renderer write them)."""
    networks = (ipaddress.ip_network(c) for c in cidrs)
    return {str(n) for n in networks if n.version == family}


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_filters_equal_the_allocations(name: str) -> None:
    plan = _plan(name)
    allocations = sample_allocations(plan)
    for leaf in (r for r in plan.routers.values() if r.role == "leaf"):
        text = render_router_config(plan, leaf.name, allocations)
        hosts = [h.name for h in plan.hosts_of(leaf.name)]
        assert {n.split("-")[1] for n in _prefix_lists(text)} == set(hosts)
        for host in hosts:
            for family in (4, 6):
                listed = _filter_of(text, host, family)
                assert set(listed) == _family(allocations[host], family)
                assert len(listed) == len(set(listed))
        assert " le " not in text and " ge " not in text


def test_host_without_allocations_accepts_nothing() -> None:
    plan = _plan("two-rack")
    text = render_router_config(plan, "leaf1", {})
    assert _filter_of(text, "h1", 4) == []
    assert _filter_of(text, "h1", 6) == []


def _af_blocks(text: str) -> dict[int, str]:
    blocks = re.findall(r"address-family ipv(\d) unicast\n(.*?)exit-address-family", text, re.S)
    return {int(f): body for f, body in blocks}


def test_leaf_sessions() -> None:
    plan = _plan("two-rack")
    text = render_router_config(plan, "leaf1", sample_allocations(plan), max_prefixes=50)
    af = _af_blocks(text)
    for peer in plan.peers_for_host("h1"):
        address = peer.local_address  # the host's end is the leaf's neighbor
        assert f" neighbor {address} remote-as {plan.hosts['h1'].asn}\n" in text
        assert f" neighbor {address} timers 3 9\n" in text
        body = af[peer.family]
        assert f"neighbor {address} activate" in body
        assert f"neighbor {address} route-map HOST-h1-IN-V{peer.family} in" in body
        assert f"neighbor {address} soft-reconfiguration inbound" in body
        assert f"neighbor {address} route-map TO-HOSTS out" in body
        assert f"neighbor {address} maximum-prefix 50 restart 1 force" in body
        assert f"neighbor {address} activate" not in af[10 - peer.family]
    for link in (x for x in plan.links if x.b == "leaf1"):
        spine = link.a_address4.split("/")[0], link.a_address6.split("/")[0]
        assert f" neighbor {spine[0]} remote-as 65000\n" in text
        assert f"neighbor {spine[0]} activate" in af[4]
        assert f"neighbor {spine[1]} activate" in af[6]
        assert f"neighbor {spine[1]} activate" not in af[4]
    assert "bgp graceful-restart\n" in text
    assert "route-map HOST-h1-IN-V4 permit 10\n match ip address prefix-list HOST-h1-V4\n" in text
    assert "route-map HOST-h1-IN-V6 permit 10\n match ipv6 address prefix-list HOST-h1-V6\n" in text
    assert "network 172.30.0.3/32" in af[4]


def test_spine_sessions_and_ecmp() -> None:
    plan = _plan("four-rack")
    text = render_router_config(plan, "spine1", sample_allocations(plan))
    af = _af_blocks(text)
    for link in (x for x in plan.links if x.a == "spine1"):
        leaf_asn = plan.routers[link.b].asn
        v4, v6 = link.b_address4.split("/")[0], link.b_address6.split("/")[0]
        assert f" neighbor {v4} remote-as {leaf_asn}\n" in text
        assert f"neighbor {v4} activate" in af[4] and f"neighbor {v4} activate" not in af[6]
        assert f"neighbor {v6} activate" in af[6] and f"neighbor {v6} activate" not in af[4]
    assert "bgp bestpath as-path multipath-relax" in text
    assert all("maximum-paths 64" in body for body in af.values())
    assert "prefix-list" not in text
    assert text.count("neighbor") > 0 and "frr defaults datacenter" in text


def test_configs_list_planned_addresses() -> None:
    plan = _plan("two-rack")
    text = render_router_config(plan, "leaf2", {})
    for iface in plan.interfaces_of("leaf2"):
        assert f"interface {iface.interface}\n" in text
        assert f" ip address {iface.address4}\n" in text
        assert f" ipv6 address {iface.address6}\n" in text


# --------------------------------------------------------------------- aggregation


def test_aggregates_in_single_homed_racks() -> None:
    plan = _plan("two-rack")
    aggregates = aggregates_for(plan, rack_slices(plan))
    assert aggregates == {
        "leaf1": ("10.65.1.0/24", "2001:db8:165:1::/64"),
        "leaf2": ("10.65.2.0/24", "2001:db8:165:2::/64"),
    }
    text = render_router_config(plan, "leaf1", {}, aggregates=aggregates)
    af = _af_blocks(text)
    assert "aggregate-address 10.65.1.0/24 summary-only" in af[4]
    assert "aggregate-address 2001:db8:165:1::/64 summary-only" in af[6]
    assert "10.65.2.0" not in text


def test_no_aggregation_when_hosts_are_dual_homed() -> None:
    plan = plan_fabric(topology_from_document(clos(2, 2, dual_homed=True)))
    assert aggregates_for(plan, {"r1": ["10.65.1.0/24"], "r2": ["10.65.2.0/24"]}) == {}
    with pytest.raises(RenderError, match=r"leaf l1a may not announce aggregates.*multi-homed"):
        render_router_config(plan, "l1a", {}, aggregates={"l1a": ["10.65.1.0/24"]})
    text = render_router_config(plan, "l1a", {})
    assert "aggregate-address" not in text


def test_no_aggregation_from_a_leaf_without_the_rack_hosts() -> None:
    doc = clos(1, 2)
    nodes, links = doc["topology"]["nodes"], doc["topology"]["links"]
    nodes["l1z"] = {"labels": {"terrace.role": "leaf", "terrace.rack": "r1"}}
    links += [{"endpoints": ["s1:el1z", "l1z:e1"]}, {"endpoints": ["s2:el1z", "l1z:e2"]}]
    plan = plan_fabric(topology_from_document(doc))
    assert aggregates_for(plan, {"r1": ["10.65.1.0/24"]}) == {"l1a": ("10.65.1.0/24",)}
    with pytest.raises(RenderError, match="not linked to l1z"):
        render_router_config(plan, "l1z", {}, aggregates={"l1z": ["10.65.1.0/24"]})


# --------------------------------------------------------------------- refusals


def test_refusals_name_the_culprit() -> None:
    plan = _plan("two-rack")
    with pytest.raises(RenderError, match="'h1' is not a spine or leaf"):
        render_router_config(plan, "h1", {})
    with pytest.raises(RenderError, match=r"host h1: allocation 192\.168\.0\.0/28 is outside"):
        render_router_config(plan, "leaf1", {"h1": ["192.168.0.0/28"]}, pools=POOLS)
    with pytest.raises(RenderError, match=r"host h1.*did you mean 10\.64\.0\.0/28"):
        render_router_config(plan, "leaf1", {"h1": ["10.64.0.1/28"]})
    with pytest.raises(RenderError, match="host h1 has 3 prefixes"):
        render_router_config(
            plan, "leaf1", {"h1": ["10.0.0.0/32", "10.0.0.1/32", "10.0.0.2/32"]}, max_prefixes=2
        )
    with pytest.raises(RenderError, match="must be one line"):
        render_router_config(plan, "leaf1", {}, log="syslog\nrouter bgp 1")
    with pytest.raises(RenderError, match="spine spine1: aggregates belong on leaves"):
        render_router_config(plan, "spine1", {}, aggregates={"spine1": ["10.65.0.0/16"]})


def test_log_target() -> None:
    plan = _plan("two-rack")
    text = render_router_config(plan, "spine1", {}, log="file /var/log/frr/spine1.log")
    assert "\nlog file /var/log/frr/spine1.log\n" in text


def test_other_leaves_hosts_are_ignored() -> None:
    plan = _plan("two-rack")
    config = router_config(plan, "leaf1", {"h3": ["10.64.9.0/28"]})
    assert [h.name for h in config.hosts] == ["h1", "h2"]
    assert all(not h.prefixes4 for h in config.hosts)


_cidrs4 = st.builds(
    lambda n: str(ipaddress.ip_network((0x0A400000 + (n << 4), 28))),
    st.integers(min_value=0, max_value=4000),
)
_cidrs6 = st.builds(
    lambda n: str(ipaddress.ip_network((0x20010DB8010000000000000000000000 + (n << 8), 120))),
    st.integers(min_value=0, max_value=4000),
)


@settings(max_examples=30, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["h1", "h2", "h3", "h4"]),
        st.lists(st.one_of(_cidrs4, _cidrs6), max_size=12),
    )
)
def test_filters_equal_any_allocation(allocations: Mapping[str, list[str]]) -> None:
    plan = _plan("two-rack")
    for leaf in ("leaf1", "leaf2"):
        text = render_router_config(plan, leaf, allocations, pools=POOLS)
        for host in plan.hosts_of(leaf):
            for family in (4, 6):
                expected = _family(allocations.get(host.name, []), family)
                assert set(_filter_of(text, host.name, family)) == expected
