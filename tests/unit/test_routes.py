"""Route counts with and without rack aggregation, and the rule for safe aggregation."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.plan import plan_fabric
from fabric.routes import (
    RouteCount,
    aggregates_for,
    aggregation_blocker,
    rack_can_aggregate,
    route_counts,
)
from fabric.topology import topology_from_document
from tests.unit.fabric_samples import clos

ALLOCATIONS = {
    "r1h1": ["10.65.1.0/28", "10.64.0.0/28"],
    "r1h2": ["10.65.1.16/28"],
    "r2h1": ["10.65.2.0/28"],
    "r2h2": ["10.66.0.5/32", "2001:db8::1/128"],
}
AGGREGATES = {"l1a": ["10.65.1.0/24"], "l2a": ["10.65.2.0/24"]}


def test_counts_by_hand() -> None:
    plan = plan_fabric(topology_from_document(clos(2, 2)))
    counts = route_counts(plan, ALLOCATIONS, AGGREGATES)
    # l1a announces {10.65.1.0/24, 10.64.0.0/28}; l2a {10.65.2.0/24, /32, /128}.
    assert counts["s1"] == RouteCount("s1", "spine", 6, 5, 1, 1)
    assert counts["s2"] == RouteCount("s2", "spine", 6, 5, 1, 1)
    # a leaf keeps its own hosts' blocks, its aggregate and what the other leaf sends
    assert counts["l1a"] == RouteCount("l1a", "leaf", 6, 3 + 1 + 3, 1, 1)
    assert counts["l2a"] == RouteCount("l2a", "leaf", 6, 3 + 1 + 2, 1, 1)


def test_an_aggregate_without_routes_inside_is_not_counted() -> None:
    plan = plan_fabric(topology_from_document(clos(2, 2)))
    counts = route_counts(plan, {"r1h1": ["10.64.0.0/28"]}, AGGREGATES)
    assert counts["s1"].with_aggregation == counts["s1"].without_aggregation == 1


def test_no_aggregates_no_difference() -> None:
    plan = plan_fabric(topology_from_document(clos(2, 2)))
    for count in route_counts(plan, ALLOCATIONS, {}).values():
        assert count.with_aggregation == count.without_aggregation == 6
        assert (count.borrowed4, count.borrowed6) == (1, 1)


def test_aggregation_pays_off_with_many_blocks() -> None:
    plan = plan_fabric(topology_from_document(clos(4, 10)))
    allocations: dict[str, list[str]] = {}
    for i, rack in enumerate(plan.topology.racks(), start=1):
        for j, host in enumerate(plan.topology.hosts_in(rack)):
            allocations[host.name] = [f"10.65.{i}.{16 * j}/28"]
    slices = {rack: [f"10.65.{i}.0/24"] for i, rack in enumerate(plan.topology.racks(), 1)}
    counts = route_counts(plan, allocations, aggregates_for(plan, slices))
    assert counts["s1"].without_aggregation == 40
    assert counts["s1"].with_aggregation == 4
    assert counts["l1a"].with_aggregation == 10 + 1 + 3


def _rack_split_over_two_leaves() -> dict[str, Any]:
    doc = clos(1, 2)
    nodes, links = doc["topology"]["nodes"], doc["topology"]["links"]
    nodes["l1b"] = {"labels": {"terrace.role": "leaf", "terrace.rack": "r1"}}
    links[:] = [x for x in links if x["endpoints"] != ["l1a:h2", "r1h2:eth1"]]
    links += [
        {"endpoints": ["s1:el1b", "l1b:e1"]},
        {"endpoints": ["s2:el1b", "l1b:e2"]},
        {"endpoints": ["l1b:h2", "r1h2:eth1"]},
    ]
    return doc


def test_aggregation_rule() -> None:
    single = topology_from_document(clos(2, 3))
    assert aggregation_blocker(single, "r1") is None
    assert rack_can_aggregate(single, "r2")
    dual = topology_from_document(clos(1, 2, dual_homed=True))
    assert "multi-homed" in (aggregation_blocker(dual, "r1") or "")
    split = topology_from_document(_rack_split_over_two_leaves())
    assert "split over leaves l1a, l1b" in (aggregation_blocker(split, "r1") or "")
    assert "no hosts" in (aggregation_blocker(single, "r9") or "")


def test_aggregates_only_for_safe_racks() -> None:
    doc = clos(2, 2)
    # make rack r2 dual-homed: a second leaf, every r2 host linked to both
    nodes, links = doc["topology"]["nodes"], doc["topology"]["links"]
    nodes["l2b"] = {"labels": {"terrace.role": "leaf", "terrace.rack": "r2"}}
    links += [{"endpoints": ["s1:el2b", "l2b:e1"]}, {"endpoints": ["s2:el2b", "l2b:e2"]}]
    links += [{"endpoints": [f"l2b:h{h}", f"r2h{h}:eth2"]} for h in (1, 2)]
    plan = plan_fabric(topology_from_document(doc))
    slices = {"r1": ["10.65.1.0/24", "2001:db8:165:1::/64"], "r2": ["10.65.2.0/24"]}
    assert aggregates_for(plan, slices) == {"l1a": ("10.65.1.0/24", "2001:db8:165:1::/64")}


@settings(max_examples=30, deadline=None)
@given(
    # each address of 10.65.1.0/24 belongs to at most one host (no address twice)
    st.dictionaries(
        st.integers(min_value=0, max_value=255),
        st.sampled_from(["r1h1", "r1h2", "r2h1", "r2h2"]),
    )
)
def test_aggregation_costs_at_most_the_aggregates(owners: dict[int, str]) -> None:
    allocations: dict[str, list[str]] = {}
    for n, host in owners.items():
        allocations.setdefault(host, []).append(f"10.65.1.{n}/32")
    plan = plan_fabric(topology_from_document(clos(2, 2)))
    counts = route_counts(plan, allocations, {"l1a": ["10.65.1.0/24"]})
    rack1 = {p for h in ("r1h1", "r1h2") for p in allocations.get(h, [])}
    for count in counts.values():
        assert count.with_aggregation <= count.without_aggregation + 1
        if count.role == "spine":
            # rack r1's /32s are hidden behind its /24; other racks' are not
            summary = 1 if owners else 0
            assert count.with_aggregation == count.without_aggregation - len(rack1) + summary
