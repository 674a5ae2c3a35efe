"""Rendered configs carry a host's prefixes across the fabric, and rack aggregation
hides the more-specifics from the spines.

A slice of the two-rack plan with real FRR and ExaBGP: spine1, leaf1 (rack r1), leaf2
(rack r2) and host h1 under leaf1. h1's prefixes must reach spine1 and leaf2 (BGP table
and zebra's RIB, both families); with leaf1 aggregating rack r1's slice, spine1 and
leaf2 see the slice instead of h1's block inside it, and still h1's block outside it.
Sessions to the absent spine2 and hosts stay down; that is expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fabric.frr import render_router_config
from fabric.plan import FabricPlan, plan_fabric
from fabric.topology import load_topology
from tests.lab.frr_lab import mini_fabric, route_prefixes, run, wait_for

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
NODES = ["spine1", "leaf1", "leaf2", "h1"]
ALLOCATION = ["10.64.0.0/28", "10.65.1.0/28", "2001:db8:100::/120", "2001:db8:165:1::/120"]
SLICES = ["10.65.1.0/24", "2001:db8:165:1::/64"]


def _plan() -> FabricPlan:
    return plan_fabric(load_topology((ROOT / "lab/topologies/two-rack.clab.yml").read_text()))


def _configs(plan: FabricPlan, aggregates: Mapping[str, Sequence[str]]) -> dict[str, str]:
    allocations = {"h1": ALLOCATION}
    return {
        router: render_router_config(plan, router, allocations, aggregates=aggregates)
        for router in ("spine1", "leaf1", "leaf2")
    }


def _wait_for_table(
    fabric: Any, router: str, family: int, expected: set[str], absent: set[str]
) -> None:
    def table() -> tuple[bool, Any]:
        doc = fabric.vtysh_json(router, f"show bgp ipv{family} unicast json")
        found = route_prefixes(doc)
        return expected <= found and not absent & found, sorted(found) or doc

    wait_for(f"{router}'s IPv{family} BGP table to hold {sorted(expected)}", table)


def _family(prefixes: Sequence[str], family: int) -> set[str]:
    return {p for p in prefixes if (":" in p) == (family == 6)}


@pytest.mark.parametrize("family", [4, 6])
def test_host_prefixes_reach_spine_and_other_leaf(tmp_path: Path, family: int) -> None:
    plan = _plan()
    with mini_fabric(plan, NODES, _configs(plan, {}), {"h1": ALLOCATION}, tmp_path) as fabric:
        expected = _family(ALLOCATION, family)
        loopback = (
            plan.routers["leaf1"].loopback4 if family == 4 else plan.routers["leaf1"].loopback6
        )
        for router in ("spine1", "leaf2"):
            _wait_for_table(fabric, router, family, expected | {loopback}, set())
        show = f"show {'ip' if family == 4 else 'ipv6'} route json"

        def installed() -> tuple[bool, Any]:
            rib = fabric.vtysh_json("leaf2", show)
            return expected <= set(rib), sorted(rib)

        wait_for(f"leaf2's zebra to install {sorted(expected)}", installed)
        key = "net.ipv4.ip_forward" if family == 4 else "net.ipv6.conf.all.forwarding"
        sysctl = run("ip", "netns", "exec", fabric.namespaces["leaf2"], "sysctl", "-n", key)
        assert sysctl.stdout.strip() == "1", f"zebra did not turn on {key}"


@pytest.mark.parametrize("family", [4, 6])
def test_rack_aggregate_replaces_the_blocks_inside_it(tmp_path: Path, family: int) -> None:
    plan = _plan()
    aggregates = {"leaf1": SLICES}
    configs = _configs(plan, aggregates)
    with mini_fabric(plan, NODES, configs, {"h1": ALLOCATION}, tmp_path) as fabric:
        inside = {
            p for p in _family(ALLOCATION, family) if p.startswith(("10.65.", "2001:db8:165"))
        }
        outside = _family(ALLOCATION, family) - inside
        summary = _family(SLICES, family)
        for router in ("spine1", "leaf2"):
            _wait_for_table(fabric, router, family, summary | outside, inside)
        _wait_for_table(fabric, "leaf1", family, summary | inside | outside, set())
