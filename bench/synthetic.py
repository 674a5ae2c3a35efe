"""A synthetic fabric for the route-count and scale benchmarks (bench/routes, bench/scale).

Builds, in memory and from a seed: an RFC 7938 Clos (`fabric.topology` model, numbered by
`fabric.plan`), endpoints placed over its hosts, the blocks Terrace would carve for them
(`fabric.addressing.carve_block`, rack-aware like a subnet with `rack_prefix_length`), and
a Calico-style model of the same placement (a /26 per host per pool, one pool per
network, no aggregation). Counting is left to `fabric.routes.route_counts`.

Imported by the bench scripts from their own directory; it never does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from fabric.addressing import IPNetwork, PlacedBlock, carve_block, first_fit
from fabric.plan import FabricPlan, plan_fabric
from fabric.routes import aggregates_for
from fabric.topology import Link, LinkEnd, Node, Topology, check_topology

CALICO_BLOCK = 26  # Calico's default IPv4 block size (IPPool blockSize)


def clos(racks: int, hosts_per_rack: int, spines: int = 2) -> Topology:
    """`spines` spines, one leaf per rack, `hosts_per_rack` single-homed hosts per rack."""
    nodes: dict[str, Node] = {}
    links: list[Link] = []
    for s in range(1, spines + 1):
        nodes[f"spine{s}"] = Node(f"spine{s}", "spine")
    for r in range(1, racks + 1):
        rack, leaf = f"r{r}", f"leaf{r}"
        nodes[leaf] = Node(leaf, "leaf", rack=rack)
        for s in range(1, spines + 1):
            links.append(Link(LinkEnd(f"spine{s}", f"eth{r}"), LinkEnd(leaf, f"eth{s}")))
        for h in range(1, hosts_per_rack + 1):
            host = f"h{r}-{h}"
            nodes[host] = Node(host, "host", rack=rack)
            links.append(Link(LinkEnd(leaf, f"eth{spines + h}"), LinkEnd(host, "eth1")))
    topology = Topology(f"clos-{racks}x{hosts_per_rack}", nodes, tuple(links))
    check_topology(topology)
    return topology


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the endpoints are: (network index, host name) -> endpoint count."""

    plan: FabricPlan
    networks: int
    counts: dict[tuple[int, str], int]

    @property
    def endpoints(self) -> int:
        return sum(self.counts.values())


def place_endpoints(
    plan: FabricPlan, endpoints: int, networks: int, seed: int, racks_per_network: int = 0
) -> Placement:
    """Each endpoint joins a network uniformly at random and lands on a random host; with
    `racks_per_network` > 0 a network's endpoints stay within that many random racks (a
    scheduler with rack affinity), else they spread over the whole fabric."""
    rng = random.Random(seed)
    racks = list(plan.topology.racks())
    hosts_by_rack = {r: [h.name for h in plan.topology.hosts_in(r)] for r in racks}
    every_host = [h for r in racks for h in hosts_by_rack[r]]
    pools: list[list[str]] = []
    for _ in range(networks):
        if racks_per_network <= 0 or racks_per_network >= len(racks):
            pools.append(every_host)
        else:
            chosen = rng.sample(racks, racks_per_network)
            pools.append([h for r in chosen for h in hosts_by_rack[r]])
    counts: Counter[tuple[int, str]] = Counter()
    for _ in range(endpoints):
        net = rng.randrange(networks)
        counts[(net, rng.choice(pools[net]))] += 1
    return Placement(plan, networks, dict(counts))


def place_per_host(
    plan: FabricPlan, per_host: int, networks: int, seed: int, racks_per_network: int = 0
) -> Placement:
    """Exactly `per_host` endpoints on every host, each in a random network (of those
    allowed in the host's rack when `racks_per_network` > 0)."""
    rng = random.Random(seed)
    racks = list(plan.topology.racks())
    allowed: dict[str, list[int]] = {r: [] for r in racks}
    for net in range(networks):
        spread = racks if racks_per_network <= 0 else rng.sample(racks, racks_per_network)
        for rack in spread:
            allowed[rack].append(net)
    counts: Counter[tuple[int, str]] = Counter()
    for host in plan.hosts.values():
        choices = allowed[host.rack or ""] or list(range(networks))
        for _ in range(per_host):
            counts[(rng.choice(choices), host.name)] += 1
    return Placement(plan, networks, dict(counts))


@dataclass(frozen=True, slots=True)
class Carved:
    """Per host the prefixes it announces (and, in `blocks`, the network of each); per
    rack the slices of rack-aware subnets; the subnet of each network."""

    allocations: dict[str, list[str]]
    rack_slices: dict[str, list[str]]
    subnets: dict[int, str]
    blocks: dict[str, list[tuple[int, str]]]


def terrace_blocks(
    placement: Placement, pool: str, block: int = 28, rack_slice: int | None = None
) -> Carved:
    """Blocks as the controller carves them: one subnet per network (sized to hold its
    endpoints with room for every host's block), first-fit blocks of /`block` per host,
    inside the host's rack slice of /`rack_slice` when given."""
    hosts = placement.plan.hosts
    rack_of = {name: h.rack for name, h in hosts.items()}
    per_network: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for (net, host), n in sorted(placement.counts.items()):
        per_network[net].append((host, n))
    pool_net = ipaddress.ip_network(pool)
    taken: list[IPNetwork] = []
    subnets: dict[int, str] = {}
    allocations: dict[str, list[str]] = defaultdict(list)
    blocks: dict[str, list[tuple[int, str]]] = defaultdict(list)
    slices: dict[str, set[str]] = defaultdict(set)
    for net in sorted(per_network):
        members = per_network[net]
        size = _subnet_prefix(members, rack_of, block, rack_slice)
        subnet = first_fit(pool_net, size, taken)
        if subnet is None:
            raise ValueError(f"pool {pool} is full at network {net}")
        taken.append(subnet)
        subnets[net] = str(subnet)
        placed: list[PlacedBlock] = []
        for host, n in members:
            rack = hosts[host].rack
            for _ in range(math.ceil(n / (1 << (32 - block)))):
                cidr = carve_block(subnet, block, placed, rack=rack, rack_prefix_length=rack_slice)
                if cidr is None:
                    raise ValueError(f"subnet {subnet} is full (network {net})")
                placed.append(PlacedBlock(cidr, rack))
                allocations[host].append(str(cidr))
                blocks[host].append((net, str(cidr)))
                if rack_slice is not None and rack is not None:
                    slices[rack].add(str(cidr.supernet(new_prefix=rack_slice)))
    return Carved(
        dict(allocations),
        {r: sorted(s) for r, s in slices.items()},
        subnets,
        dict(blocks),
    )


def _subnet_prefix(
    members: list[tuple[str, int]],
    rack_of: dict[str, str | None],
    block: int,
    rack_slice: int | None,
) -> int:
    """The longest prefix that holds every member's blocks (in whole rack slices)."""
    block_size = 1 << (32 - block)
    if rack_slice is None:
        needed = sum(math.ceil(n / block_size) for _, n in members) * block_size
    else:
        per_rack: Counter[str | None] = Counter()
        for host, n in members:
            per_rack[rack_of[host]] += math.ceil(n / block_size)
        slice_size = 1 << (32 - rack_slice)
        needed = sum(math.ceil(b * block_size / slice_size) for b in per_rack.values())
        needed *= slice_size
    return 32 - math.ceil(math.log2(needed))


def calico_blocks(placement: Placement, pool: str) -> dict[str, list[str]]:
    """Calico's model of the same placement: one IP pool per network, a /26 block per
    host per pool (more when a host holds more than 64 endpoints of it)."""
    pool_net = ipaddress.ip_network(pool)
    per_network: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for (net, host), n in sorted(placement.counts.items()):
        per_network[net].append((host, n))
    taken: list[IPNetwork] = []
    allocations: dict[str, list[str]] = defaultdict(list)
    for net in sorted(per_network):
        members = per_network[net]
        count = sum(math.ceil(n / 64) for _, n in members)
        size = 32 - math.ceil(math.log2(count * 64))
        ippool = first_fit(pool_net, size, taken)
        if ippool is None:
            raise ValueError(f"pool {pool} is full at network {net}")
        taken.append(ippool)
        cursor = int(ippool.network_address)
        for host, n in members:
            for _ in range(math.ceil(n / 64)):
                allocations[host].append(f"{ipaddress.IPv4Address(cursor)}/{CALICO_BLOCK}")
                cursor += 64
    return dict(allocations)


def single_pool(placement: Placement) -> Placement:
    """The same endpoints with every network in one pool (Calico's default IP pool)."""
    counts: Counter[tuple[int, str]] = Counter()
    for (_, host), n in placement.counts.items():
        counts[(0, host)] += n
    return Placement(placement.plan, 1, dict(counts))


def leaf_aggregates(plan: FabricPlan, carved: Carved) -> dict[str, tuple[str, ...]]:
    return aggregates_for(plan, carved.rack_slices)


def synthetic_plan(racks: int, hosts_per_rack: int, spines: int = 2) -> FabricPlan:
    return plan_fabric(clos(racks, hosts_per_rack, spines))
