"""The real kernel behind `KernelReconciler`: netlink through pyroute2, in the host namespace.

It reads and changes only Terrace's objects (routes with `ROUTE_PROTO` in the main
table, veths whose alias starts with `terrace:`). It must never flush anything, never
move a link between namespaces, and must leave the calling thread in the namespace it
found it in (the container side is configured by entering the container's namespace
with setns for the few calls it takes, then returning).

The container sees a /32 and a /128 on its interface, a permanent neighbour entry for
the IPv4 gateway 169.254.1.1 (the host side's fixed MAC), and default routes via
169.254.1.1 and fe80::1; the host side carries fe80::1 and answers proxy ARP.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any

from pyroute2 import IPRoute

from speaker.kernel import KernelSnapshot, Route, VethSpec
from speaker.naming import (
    GATEWAY4,
    GATEWAY6,
    HOST_VETH_MAC,
    ROUTE_PROTO,
    VETH_PREFIX,
    is_terrace_alias,
)

MAIN_TABLE = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80
CLONE_NEWNET = 0x40000000
LOCK_DIR = "/run/terrace"
FORWARDING_SYSCTLS = (
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
)

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the body with this thread in the network namespace at `path`, then return."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


@contextmanager
def kernel_lock(lock_dir: str = LOCK_DIR) -> Iterator[None]:
    """Exclusive hold on this network namespace's Terrace veths and routes.

    The speaker's reconciler and the CNI plugin (a separate process) both build veths;
    each does its read-compare-change under this lock, so neither sees the other's
    half-built veth. One lock file per network namespace (by inode), so the hosts of a
    lab, which share a filesystem, do not wait for each other.
    """
    inode = os.stat("/proc/thread-self/ns/net").st_ino
    os.makedirs(lock_dir, exist_ok=True)
    fd = os.open(os.path.join(lock_dir, f"kernel-{inode}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _write_sysctl(path: str, value: str) -> None:
    current = Path(path).read_text().strip()
    if current != value:
        Path(path).write_text(value)


def _route_to_ours(msg: Any, names: dict[int, str]) -> Route | None:
    dst = f"{msg.get('dst') or ('0.0.0.0' if msg['family'] == AF_INET else '::')}"
    dst = str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"))
    if msg["type"] == RTN_BLACKHOLE:
        return Route(dst, "blackhole")
    multipath = msg.get("multipath")
    if multipath:
        gateways = tuple(sorted(str(h.get("gateway")) for h in multipath))
        return Route(dst, "fabric", gateways)
    if msg.get("gateway"):
        return Route(dst, "fabric", (str(msg.get("gateway")),))
    oif = msg.get("oif")
    return Route(dst, "veth", (names.get(oif, f"#{oif}"),))


class NetlinkDataplane:
    """`KernelDataplane` on the real kernel of the namespace the speaker runs in."""

    def __init__(self, netns_dir: str = "/var/run/netns") -> None:
        self.netns_dir = netns_dir

    def existing_netns(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if os.path.exists(os.path.join(self.netns_dir, n))}

    def enable_forwarding(self) -> None:
        for path in FORWARDING_SYSCTLS:
            _write_sysctl(path, "1")

    def snapshot(self) -> KernelSnapshot:
        with IPRoute() as ipr:
            names: dict[int, str] = {}
            veths: dict[str, str] = {}
            for link in ipr.get_links():
                name = link.get("ifname")
                names[link["index"]] = name
                alias = link.get("ifalias")
                if name.startswith(VETH_PREFIX) and is_terrace_alias(alias):
                    veths[name] = alias
            routes: dict[str, Route] = {}
            for family in (AF_INET, AF_INET6):
                for msg in ipr.get_routes(family=family, table=MAIN_TABLE, proto=ROUTE_PROTO):
                    route = _route_to_ours(msg, names)
                    if route is not None:
                        routes[route.dst] = route
        return KernelSnapshot(veths=veths, routes=routes)

    def create_veth(self, spec: VethSpec) -> None:
        """Create the pair with its peer born inside the container namespace, then set both up."""
        with IPRoute() as ipr:
            for stale in ipr.link_lookup(ifname=spec.name):
                # the name is derived from this endpoint's id: a link of that name without
                # our alias is one we began to build when the speaker died; start again
                ipr.link("del", index=stale)
            ipr.link(
                "add",
                ifname=spec.name,
                kind="veth",
                address=HOST_VETH_MAC,
                peer={"ifname": spec.interface, "net_ns_fd": spec.netns},
            )
            index = ipr.link_lookup(ifname=spec.name)[0]
            try:
                ipr.link("set", index=index, ifalias=spec.alias)
                _write_sysctl(f"/proc/sys/net/ipv4/conf/{spec.name}/proxy_arp", "1")
                ipr.link("set", index=index, state="up")
                ipr.addr("add", index=index, address=GATEWAY6, prefixlen=64, flags=IFA_F_NODAD)
                with in_netns(os.path.join(self.netns_dir, spec.netns)):
                    _configure_container(spec.interface, spec.addresses)
            except Exception:
                ipr.link("del", index=index)  # half-built is worse than absent: retry next round
                raise

    def delete_veth(self, name: str) -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])

    def replace_route(self, route: Route) -> None:
        with IPRoute() as ipr:
            ipr.route("replace", **_route_args(ipr, route))

    def delete_route(self, route: Route) -> None:
        with IPRoute() as ipr:
            network = ipaddress.ip_network(route.dst)
            ipr.route(
                "del",
                dst=str(network.network_address),
                dst_len=network.prefixlen,
                family=AF_INET if network.version == 4 else AF_INET6,
                proto=ROUTE_PROTO,
                table=MAIN_TABLE,
            )


def _route_args(ipr: IPRoute, route: Route) -> dict[str, Any]:
    network = ipaddress.ip_network(route.dst)
    args: dict[str, Any] = {
        "dst": str(network.network_address),
        "dst_len": network.prefixlen,
        "family": AF_INET if network.version == 4 else AF_INET6,
        "proto": ROUTE_PROTO,
        "table": MAIN_TABLE,
    }
    if route.kind == "blackhole":
        args["type"] = "blackhole"
    elif route.kind == "veth":
        args["oif"] = ipr.link_lookup(ifname=route.via[0])[0]
        args["scope"] = "link" if network.version == 4 else "universe"
    elif len(route.via) == 1:
        args["gateway"] = route.via[0]
    else:
        args["multipath"] = [{"gateway": g} for g in route.via]
    return args


def _configure_container(interface: str, addresses: tuple[str, ...]) -> None:
    """Inside the container namespace: lo and the interface up, addresses, gateways."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        index = ipr.link_lookup(ifname=interface)[0]
        ipr.link("set", index=index, state="up")
        families = set()
        for cidr in addresses:
            iface = ipaddress.ip_interface(cidr)
            families.add(iface.version)
            flags = IFA_F_NODAD if iface.version == 6 else 0
            ipr.addr(
                "replace",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                flags=flags,
            )
        if 4 in families:
            ipr.neigh(
                "replace", dst=GATEWAY4, lladdr=HOST_VETH_MAC, ifindex=index, state=NUD_PERMANENT
            )
            ipr.route("replace", dst=GATEWAY4, dst_len=32, oif=index, scope="link")
            ipr.route("replace", dst="0.0.0.0", dst_len=0, gateway=GATEWAY4, oif=index)
        if 6 in families:
            ipr.route("replace", dst="::", dst_len=0, family=AF_INET6, gateway=GATEWAY6, oif=index)
