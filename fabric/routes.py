"""Which prefixes each router carries, with and without rack aggregation, and when a
rack may be aggregated at all.

Rack aggregation (a leaf announces its rack's slice of a subnet `summary-only` instead
of every block) is only safe when the rack has one way in. RFC 7938 §5.2.3: a summary
hides which leaf still reaches which host; after a link failure in a rack whose hosts
are dual-homed, the leaf that lost a host keeps announcing the summary and blackholes
that host's traffic. So a rack may be summarised only when every host of the rack is
single-homed, all to the same leaf. `aggregation_blocker` states that rule; the other
functions and `fabric.frr` obey it.

The route count model counts tenant prefixes (host allocations, aggregates), not the
underlay loopbacks and links, and counts each prefix once per router (RIB entries, not
paths): a spine carries what every leaf announces; a leaf carries its own hosts' routes
(and its aggregates) plus what every other leaf announces. Like FRR, a leaf originates
an aggregate only while some more-specific route inside it exists.

Pure: no I/O, no rendering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fabric.addressing import IPNetwork, parse_network
from fabric.plan import FabricPlan
from fabric.topology import Role, Topology


@dataclass(frozen=True, slots=True)
class RouteCount:
    """The tenant prefixes one router carries.

    `borrowed4`/`borrowed6` are the /32 and /128 host routes among the prefixes it
    carries with aggregation (borrowed addresses are the cost aggregation cannot hide
    outside their own rack slice).
    """

    router: str
    role: Role
    without_aggregation: int
    with_aggregation: int
    borrowed4: int
    borrowed6: int


def aggregation_blocker(topology: Topology, rack: str) -> str | None:
    """Why `rack` must not be summarised, or None when summarising it is safe."""
    hosts = topology.hosts_in(rack)
    if not hosts:
        return f"rack {rack} has no hosts"
    for host in hosts:
        leaves = topology.leaves_of(host.name)
        if len(leaves) != 1:
            return (
                f"rack {rack}: host {host.name} is multi-homed to {', '.join(leaves)}; "
                f"a summary would blackhole it after a link failure"
            )
    serving = sorted({topology.leaves_of(h.name)[0] for h in hosts})
    if len(serving) != 1:
        return (
            f"rack {rack}: its hosts are split over leaves {', '.join(serving)}; "
            f"neither leaf may announce the whole rack slice"
        )
    return None


def rack_can_aggregate(topology: Topology, rack: str) -> bool:
    return aggregation_blocker(topology, rack) is None


def rack_leaf(topology: Topology, rack: str) -> str | None:
    """The single leaf that serves every host of `rack`, when aggregation is safe."""
    if not rack_can_aggregate(topology, rack):
        return None
    return topology.leaves_of(topology.hosts_in(rack)[0].name)[0]


def aggregates_for(
    plan: FabricPlan, rack_slices: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """Leaf name -> the rack slices it may announce summary-only.

    `rack_slices` maps a rack to the slices carved for it (from rack-aware subnets).
    Racks where aggregation is unsafe are left out: their leaves keep announcing
    every block.
    """
    found: dict[str, list[IPNetwork]] = {}
    for rack in sorted(rack_slices):
        leaf = rack_leaf(plan.topology, rack) if rack in plan.topology.racks() else None
        if leaf is not None:
            found.setdefault(leaf, []).extend(parse_network(c) for c in rack_slices[rack])
    return {leaf: tuple(str(n) for n in _sorted(set(nets))) for leaf, nets in sorted(found.items())}


def route_counts(
    plan: FabricPlan,
    allocations: Mapping[str, Sequence[str]],
    aggregates: Mapping[str, Sequence[str]],
) -> dict[str, RouteCount]:
    """Per spine and leaf: prefixes carried without and with rack aggregation."""
    own = {leaf: _own_prefixes(plan, leaf, allocations) for leaf in _leaves(plan)}
    everything = _union(own.values())
    summaries = {leaf: _active(aggregates.get(leaf, ()), everything) for leaf in own}
    announced = {leaf: _announced(own[leaf], summaries[leaf]) for leaf in own}
    counts: dict[str, RouteCount] = {}
    for router in plan.routers.values():
        if router.role == "spine":
            aggregated = _union(announced.values())
        else:
            aggregated = own[router.name] | summaries[router.name]
            aggregated |= _union(a for leaf, a in announced.items() if leaf != router.name)
        counts[router.name] = RouteCount(
            router=router.name,
            role=router.role,
            without_aggregation=len(everything),
            with_aggregation=len(aggregated),
            borrowed4=sum(1 for n in aggregated if n.version == 4 and n.prefixlen == 32),
            borrowed6=sum(1 for n in aggregated if n.version == 6 and n.prefixlen == 128),
        )
    return counts


def _leaves(plan: FabricPlan) -> list[str]:
    return [r.name for r in plan.routers.values() if r.role == "leaf"]


def _own_prefixes(
    plan: FabricPlan, leaf: str, allocations: Mapping[str, Sequence[str]]
) -> set[IPNetwork]:
    return {
        parse_network(cidr)
        for host in plan.hosts_of(leaf)
        for cidr in allocations.get(host.name, ())
    }


def _active(cidrs: Sequence[str], prefixes: set[IPNetwork]) -> set[IPNetwork]:
    """The summaries FRR originates: those with at least one more-specific in its table."""
    summaries = {parse_network(c) for c in cidrs}
    lengths = {(s.version, s.prefixlen) for s in summaries}
    inside = {
        p.supernet(new_prefix=length)
        for p in prefixes
        for version, length in lengths
        if p.version == version and p.prefixlen >= length
    }
    return summaries & inside


def _announced(own: set[IPNetwork], summaries: set[IPNetwork]) -> set[IPNetwork]:
    """What a leaf sends to the spines: its summaries and what they do not cover."""
    lengths: set[tuple[int, int]] = {(s.version, s.prefixlen) for s in summaries}
    return summaries | {p for p in own if not _covered(p, summaries, lengths)}


def _covered(prefix: IPNetwork, summaries: set[IPNetwork], lengths: set[tuple[int, int]]) -> bool:
    """Whether a summary holds `prefix`: one lookup per summary length, not per summary."""
    return any(
        prefix.supernet(new_prefix=length) in summaries
        for version, length in lengths
        if version == prefix.version and length <= prefix.prefixlen
    )


def _union(sets: Iterable[set[IPNetwork]]) -> set[IPNetwork]:
    result: set[IPNetwork] = set()
    for s in sets:
        result |= s
    return result


def _sorted(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    return sorted(networks, key=_network_key)


def _network_key(network: IPNetwork) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)
