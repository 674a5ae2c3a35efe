"""KernelReconciler against an in-memory kernel: results are checked, not calls."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from fabric.state import Block, Endpoint, HostInfo, HostState, Peer
from speaker.kernel import (
    KernelReconciler,
    KernelSnapshot,
    Route,
    VethSpec,
    diff_kernel,
    plan_kernel,
)
from speaker.naming import host_veth_name


class MemoryKernel:
    """A host kernel reduced to what the reconciler may see: our veths, our and foreign routes."""

    def __init__(self, netns: Iterable[str] = ()) -> None:
        self.netns = set(netns)
        self.veths: dict[str, VethSpec | str] = {}
        self.routes: dict[str, Route] = {}
        self.foreign_routes = {"192.0.2.0/24": "dev eth9"}
        self.forwarding = False
        self.changes = 0

    def snapshot(self) -> KernelSnapshot:
        veths = {n: (v.alias if isinstance(v, VethSpec) else v) for n, v in self.veths.items()}
        return KernelSnapshot(veths=veths, routes=dict(self.routes))

    def existing_netns(self, names: Iterable[str]) -> set[str]:
        return set(names) & self.netns

    def enable_forwarding(self) -> None:
        self.forwarding = True

    def create_veth(self, spec: VethSpec) -> None:
        if spec.netns not in self.netns:
            raise FileNotFoundError(spec.netns)
        assert spec.name not in self.veths, f"{spec.name} exists"
        self.veths[spec.name] = spec
        self.changes += 1

    def delete_veth(self, name: str) -> None:
        del self.veths[name]
        # the kernel drops routes through a deleted link
        self.routes = {
            d: r for d, r in self.routes.items() if not (r.kind == "veth" and r.via == (name,))
        }
        self.changes += 1

    def replace_route(self, route: Route) -> None:
        if route.kind == "veth":
            assert route.via[0] in self.veths, f"route {route.dst} to missing {route.via[0]}"
        self.routes[route.dst] = route
        self.changes += 1

    def delete_route(self, route: Route) -> None:
        del self.routes[route.dst]
        self.changes += 1


HOST = HostInfo(name="h1", rack="r1", asn=4200000001, address="10.0.0.1")
PEERS = (
    Peer("leaf1", 4, "10.0.0.254", "10.0.0.1", 65001, 4200000001),
    Peer("leaf2", 4, "10.0.1.254", "10.0.1.1", 65002, 4200000001),
    Peer("leaf1", 6, "fd00::fe", "fd00::1", 65001, 4200000001),
)


def ep(n: int, *, netns: str | None = "c1", v6: bool = True) -> Endpoint:
    return Endpoint(
        f"ep-{n}", f"c{n}", "net-a", f"10.64.0.{n}", f"2001:db8::{n}" if v6 else None, netns=netns
    )


def state(*endpoints: Endpoint, blocks: tuple[Block, ...] = ()) -> HostState:
    blocks = blocks or (Block("10.64.0.0/28", "net-a"), Block("2001:db8::/120", "net-a"))
    return HostState(revision=1, host=HOST, peers=PEERS, blocks=blocks, endpoints=endpoints)


def expected_routes(kernel: MemoryKernel) -> dict[str, str]:
    return {d: f"{r.kind} {' '.join(r.via)}".strip() for d, r in kernel.routes.items()}


def test_endpoints_get_veths_and_host_routes_and_blocks_get_blackholes() -> None:
    kernel = MemoryKernel(["c1"])
    report = KernelReconciler(kernel).apply(state(ep(2), ep(3, v6=False)))

    assert not report.errors and report.endpoints == 2
    assert set(kernel.veths) == {host_veth_name("ep-2"), host_veth_name("ep-3")}
    assert expected_routes(kernel) == {
        "10.64.0.0/28": "blackhole",
        "2001:db8::/120": "blackhole",
        "10.64.0.2/32": f"veth {host_veth_name('ep-2')}",
        "2001:db8::2/128": f"veth {host_veth_name('ep-2')}",
        "10.64.0.3/32": f"veth {host_veth_name('ep-3')}",
    }
    assert kernel.forwarding


def test_holes_go_to_every_uplink_peer_of_their_family() -> None:
    kernel = MemoryKernel()
    blocks = (
        Block("10.64.0.0/28", "net-a", holes=("10.64.0.9",)),
        Block("2001:db8::/120", "net-a", holes=("2001:db8::9",)),
    )
    KernelReconciler(kernel).apply(state(blocks=blocks))
    assert kernel.routes["10.64.0.9/32"] == Route(
        "10.64.0.9/32", "fabric", ("10.0.0.254", "10.0.1.254")
    )
    assert kernel.routes["2001:db8::9/128"] == Route("2001:db8::9/128", "fabric", ("fd00::fe",))


def test_second_apply_and_a_new_reconciler_change_nothing() -> None:
    kernel = MemoryKernel(["c1"])
    desired = state(ep(2), ep(3))
    KernelReconciler(kernel).apply(desired)
    before = (dict(kernel.veths), dict(kernel.routes))
    kernel.changes = 0

    assert KernelReconciler(kernel).apply(desired).changes == 0
    assert kernel.changes == 0 and (kernel.veths, kernel.routes) == before


def test_removed_endpoint_loses_its_veth_and_routes_only() -> None:
    kernel = MemoryKernel(["c1"])
    reconciler = KernelReconciler(kernel)
    reconciler.apply(state(ep(2), ep(3)))
    reconciler.apply(state(ep(2)))

    assert set(kernel.veths) == {host_veth_name("ep-2")}
    assert "10.64.0.3/32" not in kernel.routes and "2001:db8::3/128" not in kernel.routes
    assert "10.64.0.2/32" in kernel.routes
    assert kernel.foreign_routes == {"192.0.2.0/24": "dev eth9"}


def test_changed_address_rebuilds_the_veth_and_moves_the_route() -> None:
    kernel = MemoryKernel(["c1"])
    reconciler = KernelReconciler(kernel)
    reconciler.apply(state(ep(2)))
    moved = Endpoint("ep-2", "c2", "net-a", "10.64.0.7", "2001:db8::2", netns="c1")
    report = reconciler.apply(state(moved))

    assert not report.errors
    spec = kernel.veths[host_veth_name("ep-2")]
    assert isinstance(spec, VethSpec) and spec.addresses == ("10.64.0.7/32", "2001:db8::2/128")
    assert "10.64.0.2/32" not in kernel.routes
    assert kernel.routes["10.64.0.7/32"].via == (host_veth_name("ep-2"),)
    assert kernel.routes["2001:db8::2/128"].via == (host_veth_name("ep-2"),)


def test_missing_netns_is_skipped_and_reported_then_placed_next_round() -> None:
    kernel = MemoryKernel(["c1"])
    reconciler = KernelReconciler(kernel)
    late = ep(4, netns="c4")
    report = reconciler.apply(state(ep(2), late))
    assert "ep-4" in report.skipped and host_veth_name("ep-4") not in kernel.veths
    assert "10.64.0.4/32" not in kernel.routes  # the block's blackhole covers it meanwhile

    kernel.netns.add("c4")
    report = reconciler.apply(state(ep(2), late))
    assert not report.skipped and host_veth_name("ep-4") in kernel.veths


def test_a_failing_veth_is_reported_and_the_rest_still_applies() -> None:
    class VanishingNetns(MemoryKernel):
        """The namespace is there when planned and gone when the veth is created."""

        def existing_netns(self, names: Iterable[str]) -> set[str]:
            return set(names)

    kernel = VanishingNetns(["c1"])
    report = KernelReconciler(kernel).apply(state(ep(2), ep(5, netns="c5")))
    assert report.errors and "10.64.0.5/32" not in kernel.routes
    assert "10.64.0.2/32" in kernel.routes


@pytest.mark.parametrize("endpoint_id", ["a", "x" * 64, "3f2a0c1e-0000-4000-8000-000000000001"])
def test_veth_names_are_deterministic_and_fit_ifnamsiz(endpoint_id: str) -> None:
    name = host_veth_name(endpoint_id)
    assert name == host_veth_name(endpoint_id) and len(name) <= 15 and name.startswith("tr")


def test_diff_of_plan_with_itself_is_empty() -> None:
    plan = plan_kernel(state(ep(2)), {"c1"})
    actual = KernelSnapshot(
        veths={n: s.alias for n, s in plan.veths.items()}, routes=dict(plan.routes)
    )
    assert len(diff_kernel(plan, actual)) == 0


def test_a_hole_without_an_uplink_of_its_family_is_a_problem_not_an_error() -> None:
    kernel = MemoryKernel()
    v4_only = HostState(
        revision=1,
        host=HOST,
        peers=PEERS[:2],
        blocks=(Block("2001:db8::/120", "net-a", holes=("2001:db8::9",)),),
    )
    report = KernelReconciler(kernel).apply(v4_only)
    assert not report.errors and report.problems
    assert "2001:db8::9" in report.problems[0]
    assert kernel.routes == {"2001:db8::/120": Route("2001:db8::/120", "blackhole")}
