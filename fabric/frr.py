"""FRR configuration for the spines and leaves of a `FabricPlan`, from Jinja2 templates.

This module owns what the routers are told: addresses, BGP sessions, ECMP, graceful
restart, and at each leaf the inbound filter per host that accepts exactly the
prefixes allocated to that host (ARCHITECTURE.md invariant 5). It turns a plan and the
current allocations into the text of one `frr.conf` (integrated config, zebra + bgpd).

Addresses: the config lists every interface with its addresses (`interface eth1` /
`ip address ...`), so zebra configures them. A containerlab deployment needs nothing
else; the namespace lab may also set the same addresses with iproute2 first (zebra
accepts addresses that already exist), which lets BGP start without waiting on zebra.

It must never do I/O (no files, no vtysh): callers write the text and apply it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jinja2

from fabric.addressing import AddressError, IPNetwork, parse_network
from fabric.plan import FabricPlan, InterfacePlan, RouterPlan
from fabric.routes import aggregation_blocker, rack_leaf
from fabric.topology import name_key

DEFAULT_MAX_PREFIXES = 1000

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("fabric", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


class RenderError(ValueError):
    """The router or its inputs cannot give a safe config; the message says which."""


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One BGP session of the router being rendered."""

    name: str
    family: int
    address: str
    remote_asn: int
    interface: str


@dataclass(frozen=True, slots=True)
class HostFilter:
    """The sessions to one host and the exact prefixes it may announce, per family."""

    name: str
    prefixes4: tuple[str, ...]
    prefixes6: tuple[str, ...]
    neighbors: tuple[Neighbor, ...]


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything a template needs, already decided; templates only lay it out."""

    router: RouterPlan
    interfaces: tuple[InterfacePlan, ...]
    fabric_neighbors: tuple[Neighbor, ...]
    hosts: tuple[HostFilter, ...] = ()
    aggregates4: tuple[str, ...] = ()
    aggregates6: tuple[str, ...] = ()
    max_prefixes: int = DEFAULT_MAX_PREFIXES
    log: str = "syslog informational"


def render_router_config(
    plan: FabricPlan,
    router_name: str,
    allocations: Mapping[str, Sequence[str]],
    *,
    pools: Sequence[str] = (),
    aggregates: Mapping[str, Sequence[str]] | None = None,
    max_prefixes: int = DEFAULT_MAX_PREFIXES,
    log: str = "syslog informational",
) -> str:
    """The `frr.conf` of one spine or leaf.

    `allocations` maps a host name to the CIDRs it may announce (its blocks and its
    borrowed /32 and /128); only the hosts of this leaf are used. With `pools`, every
    allocation must lie inside one of them. `aggregates` maps a leaf to the rack slices
    it announces summary-only; a leaf whose rack is not safe to summarise is refused.
    `log` is the FRR log target, e.g. `file /var/log/frr/leaf1.log informational`.
    """
    config = router_config(
        plan,
        router_name,
        allocations,
        pools=pools,
        aggregates=aggregates or {},
        max_prefixes=max_prefixes,
        log=log,
    )
    template = _ENV.get_template(f"{config.router.role}.conf.j2")
    return template.render(c=config)


def router_config(
    plan: FabricPlan,
    router_name: str,
    allocations: Mapping[str, Sequence[str]],
    *,
    pools: Sequence[str] = (),
    aggregates: Mapping[str, Sequence[str]] | None = None,
    max_prefixes: int = DEFAULT_MAX_PREFIXES,
    log: str = "syslog informational",
) -> RouterConfig:
    """The decided content of a router's config (what `render_router_config` lays out)."""
    if "\n" in log or not log.strip():
        raise RenderError(f"log target {log!r} must be one line, e.g. 'syslog informational'")
    router = plan.routers.get(router_name)
    if router is None:
        known = ", ".join(plan.routers) or "none"
        raise RenderError(f"{router_name!r} is not a spine or leaf of this fabric ({known})")
    interfaces = plan.interfaces_of(router_name)
    fabric = tuple(_neighbors(plan, interfaces, roles=("spine", "leaf")))
    if router.role == "spine":
        if aggregates and aggregates.get(router_name):
            raise RenderError(f"spine {router_name}: aggregates belong on leaves, not spines")
        return RouterConfig(router, interfaces, fabric, max_prefixes=max_prefixes, log=log)
    pool_nets = [_parse(c, "pool") for c in pools]
    hosts = tuple(
        _host_filter(
            plan,
            router,
            host,
            interfaces=interfaces,
            allocations=allocations,
            pools=pool_nets,
            max_prefixes=max_prefixes,
        )
        for host in sorted({i.peer for i in interfaces if i.peer in plan.hosts}, key=name_key)
    )
    summary = _aggregates(plan, router, (aggregates or {}).get(router_name, ()))
    return RouterConfig(
        router,
        interfaces,
        fabric,
        hosts,
        aggregates4=tuple(str(n) for n in summary if n.version == 4),
        aggregates6=tuple(str(n) for n in summary if n.version == 6),
        max_prefixes=max_prefixes,
        log=log,
    )


def _neighbors(
    plan: FabricPlan,
    interfaces: Sequence[InterfacePlan],
    *,
    roles: Sequence[str],
) -> list[Neighbor]:
    found: list[Neighbor] = []
    for iface in interfaces:
        if iface.peer in plan.routers and plan.routers[iface.peer].role in roles:
            asn = plan.routers[iface.peer].asn
        elif iface.peer in plan.hosts and "host" in roles:
            asn = plan.hosts[iface.peer].asn
        else:
            continue
        found.append(Neighbor(iface.peer, 4, _bare(iface.peer_address4), asn, iface.interface))
        found.append(Neighbor(iface.peer, 6, _bare(iface.peer_address6), asn, iface.interface))
    return found


def _host_filter(
    plan: FabricPlan,
    leaf: RouterPlan,
    host: str,
    *,
    interfaces: Sequence[InterfacePlan],
    allocations: Mapping[str, Sequence[str]],
    pools: Sequence[IPNetwork],
    max_prefixes: int,
) -> HostFilter:
    prefixes = sorted(
        {_parse(c, f"allocation of host {host}") for c in allocations.get(host, ())},
        key=lambda n: (n.version, int(n.network_address), n.prefixlen),
    )
    for prefix in prefixes:
        _check_in_pools(host, prefix, pools)
    v4 = tuple(str(p) for p in prefixes if p.version == 4)
    v6 = tuple(str(p) for p in prefixes if p.version == 6)
    if max(len(v4), len(v6)) > max_prefixes:
        raise RenderError(
            f"leaf {leaf.name}: host {host} has {max(len(v4), len(v6))} prefixes in one "
            f"family, more than max_prefixes={max_prefixes}; the session would be torn "
            f"down: raise max_prefixes"
        )
    own = [i for i in interfaces if i.peer == host]
    neighbors = tuple(_neighbors(plan, own, roles=("host",)))
    return HostFilter(host, v4, v6, neighbors)


def _check_in_pools(host: str, prefix: IPNetwork, pools: Sequence[IPNetwork]) -> None:
    if not pools:
        return
    if not any(p.version == prefix.version and prefix.subnet_of(p) for p in pools):  # type: ignore[arg-type]
        raise RenderError(
            f"host {host}: allocation {prefix} is outside every pool; "
            f"a leaf filter must never accept it"
        )


def _aggregates(plan: FabricPlan, leaf: RouterPlan, cidrs: Sequence[str]) -> list[IPNetwork]:
    if not cidrs:
        return []
    rack = leaf.rack or ""
    blocker = aggregation_blocker(plan.topology, rack)
    if blocker is None and rack_leaf(plan.topology, rack) != leaf.name:
        blocker = f"the hosts of rack {rack} are not linked to {leaf.name}"
    if blocker is not None:
        raise RenderError(f"leaf {leaf.name} may not announce aggregates: {blocker}")
    nets = {_parse(c, f"aggregate of leaf {leaf.name}") for c in cidrs}
    return sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


def _parse(cidr: str, what: str) -> IPNetwork:
    try:
        return parse_network(cidr, what=what)
    except AddressError as exc:
        raise RenderError(f"{what}: {exc}") from None


def _bare(cidr: str) -> str:
    return cidr.split("/", 1)[0]
