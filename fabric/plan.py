"""The RFC 7938 numbering plan of a topology: ASNs, loopbacks and link addresses.

`plan_fabric` turns a checked `Topology` into a `FabricPlan`: one ASN shared by all
spines, one ASN per leaf, a private 4-byte ASN per host; an IPv4 /32 and an IPv6 /128
loopback (the IPv4 one is the router-id) for every spine, leaf and host; a /31 and a
/127 for every link. The plan is deterministic: nodes are numbered by role (spines,
leaves, hosts) and then by name in natural order (`name_key`: leaf2 before leaf10),
links by their sorted ends; never by file or dict order.

Address layout of the underlay ranges: the lower half of `underlay4` holds loopbacks,
the upper half the link /31s. The first /64 of `underlay6` holds loopbacks, the second
/64 the link /127s. On a link the upper tier (spine above leaf, leaf above host) is end
`a` and takes the lower address. (Linux before 6.x made the even address of a /127
a subnet-router anycast on forwarding hosts; current kernels follow RFC 6164.)

This module owns numbering only. It never does I/O and never renders router configs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fabric.state import Peer
from fabric.topology import Link, LinkEnd, Node, Role, Topology, name_key

HOST_HOLD_TIME = 9
MAX_ASN = 4294967294  # 4294967295 is reserved (RFC 7300)
_TIER = {"spine": 0, "leaf": 1, "host": 2}


class PlanError(ValueError):
    """The topology does not fit the given ranges or ASN bases."""


@dataclass(frozen=True, slots=True)
class RouterPlan:
    """A spine or leaf: its ASN and loopbacks (`loopback4` without prefix = router-id)."""

    name: str
    role: Role
    asn: int
    router_id: str
    loopback4: str
    loopback6: str
    rack: str | None


@dataclass(frozen=True, slots=True)
class HostPlan:
    """A host: its ASN, router-id and underlay address (its end of its first leaf link)."""

    name: str
    rack: str | None
    asn: int
    router_id: str
    address: str
    address6: str
    leaves: tuple[str, ...]
    loopback6: str = ""


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """The addresses of one link, with prefix length (`172.30.128.0/31`)."""

    a: str
    a_interface: str
    a_address4: str
    a_address6: str
    b: str
    b_interface: str
    b_address4: str
    b_address6: str


@dataclass(frozen=True, slots=True)
class InterfacePlan:
    """One interface of a node, seen from that node: its addresses and the far end."""

    node: str
    interface: str
    address4: str
    address6: str
    peer: str
    peer_interface: str
    peer_address4: str
    peer_address6: str


@dataclass(frozen=True, slots=True)
class FabricPlan:
    """The whole numbering plan; mappings are ordered spines, leaves, hosts by name."""

    topology: Topology
    routers: Mapping[str, RouterPlan]
    hosts: Mapping[str, HostPlan]
    links: tuple[LinkPlan, ...]

    def asn_of(self, node: str) -> int:
        if node in self.routers:
            return self.routers[node].asn
        return self.hosts[node].asn

    def interfaces_of(self, node: str) -> tuple[InterfacePlan, ...]:
        """The planned interfaces of `node`, in natural interface order (eth2 before eth10)."""
        found = [_interface(link, node) for link in self.links if node in (link.a, link.b)]
        return tuple(sorted(found, key=lambda i: name_key(i.interface)))

    def peers_for_host(self, host_name: str) -> tuple[Peer, ...]:
        """The host's BGP sessions: one IPv4 and one IPv6 per leaf, named after the leaf."""
        host = self.hosts[host_name]
        peers: list[Peer] = []
        for iface in self.interfaces_of(host_name):
            leaf = self.routers[iface.peer]
            for family, peer_address, local_address in (
                (4, iface.peer_address4, iface.address4),
                (6, iface.peer_address6, iface.address6),
            ):
                peers.append(
                    Peer(
                        name=leaf.name,
                        family=family,
                        peer_address=_bare(peer_address),
                        local_address=_bare(local_address),
                        peer_asn=leaf.asn,
                        local_asn=host.asn,
                        hold_time=HOST_HOLD_TIME,
                    )
                )
        return tuple(sorted(peers, key=lambda p: (name_key(p.name), p.family)))

    def hosts_of(self, leaf: str) -> tuple[HostPlan, ...]:
        """The hosts linked to `leaf`, sorted by name."""
        return tuple(h for h in self.hosts.values() if leaf in h.leaves)


def _interface(link: LinkPlan, node: str) -> InterfacePlan:
    if link.a == node:
        return InterfacePlan(
            node,
            link.a_interface,
            link.a_address4,
            link.a_address6,
            link.b,
            link.b_interface,
            link.b_address4,
            link.b_address6,
        )
    return InterfacePlan(
        node,
        link.b_interface,
        link.b_address4,
        link.b_address6,
        link.a,
        link.a_interface,
        link.a_address4,
        link.a_address6,
    )


def _bare(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def plan_fabric(
    topology: Topology,
    *,
    underlay4: str = "172.30.0.0/16",
    underlay6: str = "fd00:30::/48",
    spine_asn: int = 65000,
    leaf_asn_base: int = 65001,
    host_asn_base: int = 4200000000,
) -> FabricPlan:
    """Number a topology: ASNs, loopbacks and link addresses (see the module docstring)."""
    loop4, p2p4 = _split4(underlay4)
    loop6, p2p6 = _split6(underlay6)
    ordered = _ordered_nodes(topology)
    loopbacks = _loopbacks(ordered, loop4, loop6)
    asns = _asns(topology, spine_asn, leaf_asn_base, host_asn_base)
    links = _link_plans(topology, p2p4, p2p6)
    routers = {
        n.name: RouterPlan(
            n.name,
            n.role,
            asns[n.name],
            _bare(loopbacks[n.name][0]),
            loopbacks[n.name][0],
            loopbacks[n.name][1],
            n.rack,
        )
        for n in ordered
        if n.role != "host"
    }
    hosts = {
        n.name: _host_plan(topology, n, asns[n.name], loopbacks[n.name], links)
        for n in ordered
        if n.role == "host"
    }
    return FabricPlan(topology, routers, hosts, links)


def _host_plan(
    topology: Topology,
    node: Node,
    asn: int,
    loopback: tuple[str, str],
    links: tuple[LinkPlan, ...],
) -> HostPlan:
    first = next(link for link in links if link.b == node.name)
    return HostPlan(
        name=node.name,
        rack=node.rack,
        asn=asn,
        router_id=_bare(loopback[0]),
        address=_bare(first.b_address4),
        address6=_bare(first.b_address6),
        leaves=topology.leaves_of(node.name),
        loopback6=loopback[1],
    )


def _ordered_nodes(topology: Topology) -> tuple[Node, ...]:
    return topology.spines() + topology.leaves() + topology.hosts()


def _split4(underlay: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    network = _parse(underlay, 4)
    if network.prefixlen > 29:
        raise PlanError(f"underlay4 {underlay} is too small; use a /29 or larger")
    low, high = network.subnets(prefixlen_diff=1)
    return low, high  # type: ignore[return-value]


def _split6(underlay: str) -> tuple[ipaddress.IPv6Network, ipaddress.IPv6Network]:
    network = _parse(underlay, 6)
    if network.prefixlen > 63:
        raise PlanError(f"underlay6 {underlay} is too small; use a /63 or larger")
    subnets = network.subnets(new_prefix=64)
    return next(subnets), next(subnets)  # type: ignore[return-value]


def _parse(text: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise PlanError(f"underlay{version} {text!r}: {exc}") from None
    if network.version != version:
        raise PlanError(f"underlay{version} {text} is not an IPv{version} range")
    return network


def _loopbacks(
    ordered: tuple[Node, ...], loop4: ipaddress.IPv4Network, loop6: ipaddress.IPv6Network
) -> dict[str, tuple[str, str]]:
    # Offset 1: the all-zero address of a range reads like a network, not a router.
    if len(ordered) + 1 > loop4.num_addresses:
        raise PlanError(f"{len(ordered)} nodes do not fit the loopback range {loop4}")
    return {
        node.name: (f"{loop4.network_address + i}/32", f"{loop6.network_address + i}/128")
        for i, node in enumerate(ordered, start=1)
    }


def _asns(topology: Topology, spine_asn: int, leaf_base: int, host_base: int) -> dict[str, int]:
    asns = {n.name: spine_asn for n in topology.spines()}
    asns.update({n.name: leaf_base + i for i, n in enumerate(topology.leaves())})
    asns.update({n.name: host_base + i for i, n in enumerate(topology.hosts())})
    _check_asns(topology, asns, spine_asn)
    return asns


def _check_asns(topology: Topology, asns: Mapping[str, int], spine_asn: int) -> None:
    owners: dict[int, str] = {}
    for name, asn in asns.items():
        if not 1 <= asn <= MAX_ASN:
            raise PlanError(f"{name}: ASN {asn} is out of range 1..{MAX_ASN}; lower the ASN base")
        if topology.nodes[name].role == "spine":
            continue
        if asn == spine_asn or asn in owners:
            other = owners.get(asn, "the spines")
            raise PlanError(
                f"{name}: ASN {asn} is already used by {other}; move the leaf or host ASN base"
            )
        owners[asn] = name


def _link_plans(
    topology: Topology, p2p4: ipaddress.IPv4Network, p2p6: ipaddress.IPv6Network
) -> tuple[LinkPlan, ...]:
    oriented = sorted((_oriented(topology, link) for link in topology.links), key=_link_key)
    if len(oriented) > p2p4.num_addresses // 2:
        raise PlanError(f"{len(oriented)} links do not fit the link range {p2p4}")
    return tuple(
        _link_plan(a, b, net4, net6)
        for (a, b), net4, net6 in zip(oriented, _pairs4(p2p4), _pairs6(p2p6), strict=False)
    )


def _link_key(ends: tuple[LinkEnd, LinkEnd]) -> tuple[object, ...]:
    return tuple((name_key(e.node), name_key(e.interface)) for e in ends)


def _oriented(topology: Topology, link: Link) -> tuple[LinkEnd, LinkEnd]:
    """(upper tier end, lower tier end): spine above leaf above host."""
    a, b = link.a, link.b
    if _TIER[topology.nodes[a.node].role] > _TIER[topology.nodes[b.node].role]:
        a, b = b, a
    return a, b


def _pairs4(network: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Network]:
    return network.subnets(new_prefix=31)


def _pairs6(network: ipaddress.IPv6Network) -> Iterator[ipaddress.IPv6Network]:
    return network.subnets(new_prefix=127)


def _link_plan(
    a: LinkEnd, b: LinkEnd, net4: ipaddress.IPv4Network, net6: ipaddress.IPv6Network
) -> LinkPlan:
    return LinkPlan(
        a=a.node,
        a_interface=a.interface,
        a_address4=f"{net4.network_address}/31",
        a_address6=f"{net6.network_address}/127",
        b=b.node,
        b_interface=b.interface,
        b_address4=f"{net4.network_address + 1}/31",
        b_address6=f"{net6.network_address + 1}/127",
    )
