"""The kernel reconciler on a real kernel: fresh namespaces for a host and two containers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fabric.state import Block, Endpoint, HostInfo, HostState, Peer
from speaker.kernel import KernelReconciler, KernelReport, KernelSnapshot
from speaker.naming import ROUTE_PROTO, host_veth_name
from speaker.netlink import NetlinkDataplane, in_netns

pytestmark = pytest.mark.lab


def _require_root() -> None:
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [tool for tool in ("ip", "ping") if shutil.which(tool) is None]
    if missing:
        message = f"lab test needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def wait_for(what: str, probe: Callable[[], Any], deadline: float = 10.0) -> Any:
    """Poll `probe` until it returns something truthy; fail with the last value seen."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}")


class Lab:
    """Uniquely named namespaces: one host, two containers."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.host = f"trk-{tag}-h"
        self.c1 = f"trk-{tag}-c1"
        self.c2 = f"trk-{tag}-c2"

    def namespaces(self) -> tuple[str, ...]:
        return (self.host, self.c1, self.c2)

    def apply(self, reconciler: KernelReconciler, state: HostState) -> KernelReport:
        with in_netns(f"/var/run/netns/{self.host}"):
            return reconciler.apply(state)

    def snapshot(self) -> KernelSnapshot:
        with in_netns(f"/var/run/netns/{self.host}"):
            return NetlinkDataplane().snapshot()

    def host_sh(self, *args: str) -> str:
        return sh("ip", "netns", "exec", self.host, *args)


@pytest.fixture
def lab() -> Iterator[Lab]:
    _require_root()
    lab = Lab()
    try:
        for ns in lab.namespaces():
            sh("ip", "netns", "add", ns)
        # a foreign uplink and a foreign tr-named link and route that must survive everything
        lab.host_sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        lab.host_sh("ip", "link", "add", "trforeign0", "type", "veth", "peer", "name", "fx1")
        for link in ("up0", "up1", "trforeign0", "fx1"):
            lab.host_sh("ip", "link", "set", link, "up")
        lab.host_sh("ip", "addr", "add", "10.255.0.1/30", "dev", "up0")
        lab.host_sh("ip", "-6", "addr", "add", "fd00:255::1/64", "dev", "up0", "nodad")
        lab.host_sh("ip", "route", "add", "192.0.2.0/24", "dev", "trforeign0")
        yield lab
    finally:
        for ns in lab.namespaces():
            sh("ip", "netns", "del", ns, check=False)


def state_for(lab: Lab, revision: int, endpoints: tuple[Endpoint, ...]) -> HostState:
    return HostState(
        revision=revision,
        host=HostInfo(name="h1", rack="r1", asn=4200000001, address="10.255.0.1"),
        peers=(
            Peer("leaf1", 4, "10.255.0.2", "10.255.0.1", 65001, 4200000001),
            Peer("leaf1", 6, "fd00:255::2", "fd00:255::1", 65001, 4200000001),
        ),
        blocks=(
            Block("10.64.0.0/28", "net-a", holes=("10.64.0.9",)),
            Block("2001:db8:64::/120", "net-a"),
        ),
        endpoints=endpoints,
    )


def endpoints(lab: Lab) -> tuple[Endpoint, Endpoint]:
    return (
        Endpoint("ep-1", "c1", "net-a", "10.64.0.2", "2001:db8:64::2", netns=lab.c1),
        Endpoint("ep-2", "c2", "net-a", "10.64.0.3", "2001:db8:64::3", netns=lab.c2),
    )


def routes_text(lab: Lab) -> str:
    return lab.host_sh("ip", "route", "show", "proto", str(ROUTE_PROTO)) + lab.host_sh(
        "ip", "-6", "route", "show", "proto", str(ROUTE_PROTO)
    )


def pings(src: str, dst: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", src, "ping", "-c1", "-W1", dst], capture_output=True, check=False
    )
    return done.returncode == 0


def test_two_endpoints_reach_each_other_through_the_host(lab: Lab) -> None:
    ep1, ep2 = endpoints(lab)
    report = lab.apply(KernelReconciler(), state_for(lab, 1, (ep1, ep2)))
    assert not report.errors, report
    assert report.endpoints == 2

    c1_addrs = sh("ip", "netns", "exec", lab.c1, "ip", "addr", "show", "dev", "eth0")
    assert "10.64.0.2/32" in c1_addrs and "2001:db8:64::2/128" in c1_addrs, c1_addrs
    routes = routes_text(lab)
    for expected in ("10.64.0.2 dev", "10.64.0.3 dev", "2001:db8:64::2 dev", "2001:db8:64::3 dev"):
        assert expected in routes, routes
    assert "blackhole 10.64.0.0/28" in routes and "blackhole 2001:db8:64::/120" in routes, routes
    assert "10.64.0.9 via 10.255.0.2" in routes, routes
    assert lab.host_sh("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"

    wait_for("c1 → c2 over IPv4", lambda: pings(lab.c1, "10.64.0.3"))
    wait_for("c2 → c1 over IPv6", lambda: pings(lab.c2, "2001:db8:64::2"))


def test_reapply_and_restart_change_nothing(lab: Lab) -> None:
    ep1, ep2 = endpoints(lab)
    state = state_for(lab, 1, (ep1, ep2))
    lab.apply(KernelReconciler(), state)
    before = lab.snapshot()

    again = lab.apply(KernelReconciler(), state)  # a new object: as after a speaker restart
    assert again.changes == 0 and not again.errors, again
    assert lab.snapshot() == before


def test_removed_endpoint_loses_veth_and_routes_and_foreign_objects_survive(lab: Lab) -> None:
    ep1, ep2 = endpoints(lab)
    reconciler = KernelReconciler()
    lab.apply(reconciler, state_for(lab, 1, (ep1, ep2)))
    report = lab.apply(reconciler, state_for(lab, 2, (ep1,)))
    assert not report.errors, report

    gone = host_veth_name("ep-2")
    links = lab.host_sh("ip", "-o", "link")
    assert gone not in links and host_veth_name("ep-1") in links, links
    routes = routes_text(lab)
    assert "10.64.0.3" not in routes and "2001:db8:64::3" not in routes, routes
    assert "10.64.0.2 dev" in routes, routes

    lab.apply(reconciler, state_for(lab, 3, ()))
    lab.apply(reconciler, HostState(revision=4, host=state_for(lab, 4, ()).host))
    assert routes_text(lab).strip() == "", routes_text(lab)
    assert "trforeign0" in lab.host_sh("ip", "-o", "link")
    assert "192.0.2.0/24 dev trforeign0" in lab.host_sh("ip", "route")


def test_endpoint_whose_netns_is_missing_is_skipped_then_placed(lab: Lab) -> None:
    ep1, _ = endpoints(lab)
    late = Endpoint("ep-late", "late", "net-a", "10.64.0.4", None, netns=f"{lab.c1}-late")
    reconciler = KernelReconciler()
    report = lab.apply(reconciler, state_for(lab, 1, (ep1, late)))
    assert "ep-late" in report.skipped and report.endpoints == 1, report

    sh("ip", "netns", "add", f"{lab.c1}-late")
    try:
        report = lab.apply(reconciler, state_for(lab, 1, (ep1, late)))
        assert not report.skipped and report.endpoints == 2, report
        wait_for("late → c1", lambda: pings(f"{lab.c1}-late", "10.64.0.2"))
    finally:
        sh("ip", "netns", "del", f"{lab.c1}-late", check=False)
