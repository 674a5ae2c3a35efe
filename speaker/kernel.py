"""The kernel part of a host's desired state: container veths, host routes, forwarding.

`plan_kernel` turns a `HostState` into the veths and routes the host must have;
`diff_kernel` compares that plan with what the kernel holds and returns one batch of
changes; `KernelReconciler` applies that batch through a `KernelDataplane` (netlink via
pyroute2 in production, an in-memory fake in unit tests).

It owns only objects it marked: routes with protocol `ROUTE_PROTO`, and veths named
`tr...` whose alias starts with `terrace:`. It must never touch, flush or rename any
other route or link, and it never moves links between namespaces (the container side of
a veth is created in place).

The CNI plugin (`speaker.cni`) builds endpoint veths with the same `endpoint_veth` and
`veth_routes` under the same lock, so the speaker finds them done; a veth of an endpoint
that no state applied since the start has named is the plugin's, built for a newer
revision than the one being applied, and is left alone until a state names it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from fabric.state import Endpoint, HostState
from speaker.naming import host_veth_name, veth_alias

log = logging.getLogger(__name__)

RouteKind = Literal["veth", "blackhole", "fabric"]


@dataclass(frozen=True, slots=True)
class VethSpec:
    """One endpoint's veth pair: host side `name`, container side `interface` in `netns`."""

    name: str
    endpoint_id: str
    netns: str
    interface: str
    addresses: tuple[str, ...]

    @property
    def alias(self) -> str:
        """Marks the link as ours and records what it was built for (a change rebuilds it)."""
        text = "|".join((self.netns, self.interface, *self.addresses))
        return veth_alias(self.endpoint_id, hashlib.sha256(text.encode()).hexdigest()[:12])


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """A route we own: to a veth (`via` = its name), a blackhole, or toward the fabric."""

    dst: str
    kind: RouteKind
    via: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelPlan:
    """What the host must hold; `skipped` maps endpoint id to why it cannot be placed now."""

    veths: dict[str, VethSpec]
    routes: dict[str, Route]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KernelSnapshot:
    """What the host holds of ours: veth name → alias, route dst → route."""

    veths: dict[str, str]
    routes: dict[str, Route]


@dataclass(frozen=True, slots=True)
class KernelDiff:
    create_veths: tuple[VethSpec, ...] = ()
    delete_veths: tuple[str, ...] = ()
    replace_routes: tuple[Route, ...] = ()
    delete_routes: tuple[Route, ...] = ()

    def __len__(self) -> int:
        return (
            len(self.create_veths)
            + len(self.delete_veths)
            + len(self.replace_routes)
            + len(self.delete_routes)
        )


@dataclass(slots=True)
class KernelReport:
    """The result of one apply: how many changes, which endpoints wait, what failed."""

    changes: int = 0
    endpoints: int = 0
    routes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """Changes that failed this round (retried next round)."""
    problems: list[str] = field(default_factory=list)
    """Things the desired state asks for that cannot be done (retrying will not help)."""


class KernelDataplane(Protocol):
    """The kernel as the reconciler sees it; every method touches only our objects."""

    def snapshot(self) -> KernelSnapshot: ...

    def existing_netns(self, names: Iterable[str]) -> set[str]: ...

    def enable_forwarding(self) -> None: ...

    def create_veth(self, spec: VethSpec) -> None: ...

    def delete_veth(self, name: str) -> None: ...

    def replace_route(self, route: Route) -> None: ...

    def delete_route(self, route: Route) -> None: ...


def _host_prefix(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _endpoint_addresses(endpoint: Endpoint) -> tuple[str, ...]:
    return tuple(_host_prefix(a) for a in (endpoint.ipv4, endpoint.ipv6) if a)


def _fabric_gateways(state: HostState) -> dict[int, tuple[str, ...]]:
    gateways: dict[int, tuple[str, ...]] = {4: (), 6: ()}
    for family in (4, 6):
        found = {p.peer_address for p in state.peers if p.family == family}
        gateways[family] = tuple(sorted(found))
    return gateways


def _block_routes(state: HostState) -> tuple[dict[str, Route], list[str]]:
    """A blackhole per block, and each hole routed to the fabric via the uplink peers."""
    routes: dict[str, Route] = {}
    problems: list[str] = []
    gateways = _fabric_gateways(state)
    for block in state.blocks:
        cidr = str(ipaddress.ip_network(block.cidr))
        routes[cidr] = Route(cidr, "blackhole")
        for hole in block.holes:
            dst = _host_prefix(hole)
            via = gateways[ipaddress.ip_address(hole).version]
            if via:
                routes[dst] = Route(dst, "fabric", via)
            else:
                problems.append(f"hole {hole} of block {cidr}: no uplink peer of its family")
    return routes, problems


def plan_kernel(state: HostState, existing_netns: set[str]) -> KernelPlan:
    """The veths and routes `state` asks for, given which container namespaces exist."""
    routes, _ = _block_routes(state)
    veths: dict[str, VethSpec] = {}
    skipped: dict[str, str] = {}
    for endpoint in state.endpoints:
        if not endpoint.netns:
            skipped[endpoint.id] = "endpoint has no netns"
            continue
        if endpoint.netns not in existing_netns:
            skipped[endpoint.id] = f"netns {endpoint.netns} does not exist (yet)"
            continue
        spec = endpoint_veth(endpoint, endpoint.netns)
        veths[spec.name] = spec
        routes.update(veth_routes(spec))
    return KernelPlan(veths=veths, routes=routes, skipped=skipped)


def endpoint_veth(endpoint: Endpoint, netns: str) -> VethSpec:
    """The veth of an endpoint placed in `netns` (the speaker and the CNI plugin agree)."""
    return VethSpec(
        name=host_veth_name(endpoint.id),
        endpoint_id=endpoint.id,
        netns=netns,
        interface=endpoint.interface or "eth0",
        addresses=_endpoint_addresses(endpoint),
    )


def veth_routes(spec: VethSpec) -> dict[str, Route]:
    """The host routes of a veth: each container address via the host side."""
    return {dst: Route(dst, "veth", (spec.name,)) for dst in spec.addresses}


def diff_kernel(plan: KernelPlan, actual: KernelSnapshot) -> KernelDiff:
    """The one batch of changes that turns `actual` into `plan`; nothing else is touched.

    A veth whose alias differs is rebuilt (its addresses or namespace changed); the
    kernel drops routes through a deleted veth by itself, so those are not deleted
    explicitly but re-added when the veth is rebuilt.
    """
    rebuilt = {
        n for n, spec in plan.veths.items() if n in actual.veths and actual.veths[n] != spec.alias
    }
    create = tuple(
        s for n, s in sorted(plan.veths.items()) if n not in actual.veths or n in rebuilt
    )
    gone = {n for n in actual.veths if n not in plan.veths} | rebuilt
    replace = tuple(
        r
        for dst, r in sorted(plan.routes.items())
        if actual.routes.get(dst) != r or (r.kind == "veth" and r.via[0] in gone)
    )
    delete = tuple(
        r
        for dst, r in sorted(actual.routes.items())
        if dst not in plan.routes and not (r.kind == "veth" and r.via and r.via[0] in gone)
    )
    return KernelDiff(
        create_veths=create,
        delete_veths=tuple(sorted(gone)),
        replace_routes=replace,
        delete_routes=delete,
    )


class KernelReconciler:
    """Applies a whole `HostState` to the kernel as one diff of desired against actual."""

    def __init__(
        self,
        dataplane: KernelDataplane | None = None,
        lock: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        if dataplane is None:
            from speaker.netlink import NetlinkDataplane, kernel_lock

            dataplane, lock = NetlinkDataplane(), kernel_lock
        self.dataplane = dataplane
        self.lock = lock
        """Held around each apply: the CNI plugin plumbs endpoints under the same lock."""
        self._known: set[str] | None = None
        """Veths planned by an earlier apply; None until the first apply."""

    def apply(self, state: HostState) -> KernelReport:
        """Make the kernel match `state`; per-object failures are reported, not raised."""
        with self.lock():
            return self._apply(state)

    def _apply(self, state: HostState) -> KernelReport:
        dp = self.dataplane
        dp.enable_forwarding()
        wanted = {e.netns for e in state.endpoints if e.netns}
        plan = plan_kernel(state, dp.existing_netns(wanted))
        actual = dp.snapshot()
        diff = diff_kernel(plan, self._without_newer(actual, plan))
        self._known = set(plan.veths) | (self._known or set()) & set(actual.veths)
        report = KernelReport(skipped=dict(plan.skipped))
        _, report.problems = _block_routes(state)
        failed = self._apply_diff(diff, report)
        report.endpoints = len(plan.veths) - len(failed)
        report.routes = len(plan.routes)
        for endpoint_id in plan.skipped:
            log.info("endpoint %s skipped: %s", endpoint_id, plan.skipped[endpoint_id])
        return report

    def _without_newer(self, actual: KernelSnapshot, plan: KernelPlan) -> KernelSnapshot:
        """`actual` minus veths (and their routes) of endpoints no state applied so far
        named: the CNI plugin built them for a revision newer than the one being applied,
        so they are not leftovers. The first apply after a start owns everything."""
        if self._known is None:
            return actual
        newer = {n for n in actual.veths if n not in self._known and n not in plan.veths}
        if not newer:
            return actual
        return KernelSnapshot(
            veths={n: a for n, a in actual.veths.items() if n not in newer},
            routes={
                d: r
                for d, r in actual.routes.items()
                if not (r.kind == "veth" and r.via and r.via[0] in newer)
            },
        )

    def _apply_diff(self, diff: KernelDiff, report: KernelReport) -> set[str]:
        """Order: build veths, point routes at them, drop stale routes, then stale veths."""
        dp = self.dataplane
        failed: set[str] = set()
        for name in diff.delete_veths:
            if any(s.name == name for s in diff.create_veths):
                self._attempt(report, f"delete veth {name}", partial(dp.delete_veth, name))
        for spec in diff.create_veths:
            if not self._attempt(report, f"create veth {spec.name}", partial(dp.create_veth, spec)):
                failed.add(spec.name)
        for route in diff.replace_routes:
            if route.kind == "veth" and route.via[0] in failed:
                continue
            self._attempt(report, f"route {route.dst}", partial(dp.replace_route, route))
        for route in diff.delete_routes:
            self._attempt(report, f"delete route {route.dst}", partial(dp.delete_route, route))
        for name in diff.delete_veths:
            if not any(s.name == name for s in diff.create_veths):
                self._attempt(report, f"delete veth {name}", partial(dp.delete_veth, name))
        return failed

    @staticmethod
    def _attempt(report: KernelReport, what: str, action: Callable[[], None]) -> bool:
        try:
            action()
        except Exception as exc:  # one object failing must not stop the rest of the batch
            log.warning("%s failed: %s", what, exc)
            report.errors.append(f"{what}: {exc}")
            return False
        log.info("%s", what)
        report.changes += 1
        return True
