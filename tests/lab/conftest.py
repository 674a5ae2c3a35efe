"""The shared lab of the lab tier: one two-rack fabric for the whole test session.

`lab` (session scope) is a running namespace lab with a unique name, pools
`10.64.0.0/12` and `2001:db8:100::/40` and one tenant; tests make their own networks
and containers with unique names (`lab.unique("web")`), so they do not depend on each
other. Everything is removed by the finalizer, also when a test fails. Helpers poll with
a deadline and fail with the last state they saw.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.plan import FabricPlan, plan_fabric
from lab import ops, routers, runner
from lab.api import LabApi
from lab.paths import LabPaths, LabState, node_netns
from tests.conftest import require_root_tools

ROOT = Path(__file__).resolve().parents[2]
TWO_RACK = ROOT / "lab" / "topologies" / "two-rack.clab.yml"
POOLS = ("10.64.0.0/12", "2001:db8:100::/40")


class Lab:
    """A running lab and the helpers tests need to drive it."""

    def __init__(self, paths: LabPaths, plan: FabricPlan) -> None:
        self.paths = paths
        self.name = paths.name
        self.plan = plan
        state = LabState.load(paths)
        self.admin_token = state.admin_token
        self.api = LabApi(paths.url, self.admin_token)
        self.tenant_id = ""

    # -- names and objects

    def unique(self, prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:6]}"

    def network(
        self,
        name: str | None = None,
        *,
        v4: int | None = 24,
        v6: int | None = 64,
        block4: int | None = None,
        block6: int | None = None,
        tenant_id: str | None = None,
    ) -> dict[str, Any]:
        """A new network of the lab tenant (or `tenant_id`) with one subnet per family."""
        network = self.api.post(
            "/v1/networks",
            {"name": name or self.unique("net"), "tenant_id": tenant_id or self.tenant_id},
        )
        for family, length, block in ((4, v4, block4), (6, v6, block6)):
            if length is not None:
                self.subnet(network["id"], family, length, block)
        return dict(self.api.get(f"/v1/networks/{network['id']}"))

    def subnet(
        self, network_id: str, family: int, length: int, block: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"family": family, "prefix_length": length}
        if block is not None:
            body["block_prefix_length"] = block
        return dict(self.api.post(f"/v1/networks/{network_id}/subnets", body))

    def container_add(self, host: str, name: str, network_id: str) -> dict[str, Any]:
        """A container namespace on `host` with an endpoint in `network_id` (its record:
        `ipv4`, `ipv6`, `netns`, `endpoint_id`)."""
        return ops.container_add(self.paths, host, name, network_id, api=self.api)

    def container_rm(self, name: str) -> None:
        ops.container_rm(self.paths, name, api=self.api)

    # -- looking and waiting

    def netns(self, node: str) -> str:
        """The namespace of a node or a container."""
        return ops.node_or_container_netns(self.paths, node)

    def exec(self, node: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns(node), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def ping(self, src: str, dst_addr: str, *, count: int = 1, wait: float = 1) -> bool:
        """One ping (or `count`) from a node or container to an address; True if answered."""
        family = "-6" if ":" in dst_addr else "-4"
        done = self.exec(src, "ping", family, "-n", "-c", str(count), "-W", f"{wait:g}", dst_addr)
        return done.returncode == 0

    def wait_ping(self, src: str, dst_addr: str, *, deadline: float = 15) -> float:
        """Until `src` reaches `dst_addr`; returns the seconds it took."""
        started = time.monotonic()
        self.wait(
            f"{src} to reach {dst_addr}",
            lambda: self.ping(src, dst_addr, wait=0.5),
            lambda: self.route_state(src, dst_addr),
            deadline=deadline,
        )
        return time.monotonic() - started

    def wait_unreachable(self, src: str, dst_addr: str, *, deadline: float = 15) -> None:
        self.wait(
            f"{dst_addr} to become unreachable from {src}",
            lambda: not self.ping(src, dst_addr, wait=0.5),
            lambda: self.route_state(src, dst_addr),
            deadline=deadline,
        )

    def route_state(self, src: str, dst_addr: str) -> str:
        """What the source and the leaves know of `dst_addr` (for failure messages)."""
        route = self.exec(src, "ip", "route", "get", dst_addr).stdout.strip()
        lines = [f"ip route get {dst_addr} in {src}: {route}"]
        for leaf in self.plan.topology.leaves():
            family = "ipv6" if ":" in dst_addr else "ipv4"
            with contextlib.suppress(Exception):
                answer = self.vtysh(leaf.name, f"show bgp {family} unicast {dst_addr} json")
                lines.append(f"{leaf.name}: {answer[:400]}")
        return "\n".join(lines)

    def vtysh(self, router: str, command: str) -> str:
        return routers.vtysh(self.paths, router, command)

    def vtysh_json(self, router: str, command: str) -> Any:
        return routers.vtysh_json(self.paths, router, command)

    def bgp_prefixes(self, router: str, family: int) -> set[str]:
        """The prefixes in the router's BGP table of `family`."""
        table = self.vtysh_json(router, f"show bgp ipv{family} unicast json")
        return set((table.get("routes") or {}).keys())

    def prefixes_from(self, router: str, node: str) -> set[str]:
        """The prefixes `router` accepted from its sessions to `node` (both families)."""
        found: set[str] = set()
        for iface in self.plan.interfaces_of(router):
            if iface.peer != node:
                continue
            for family, address in ((4, iface.peer_address4), (6, iface.peer_address6)):
                peer = address.split("/")[0]
                table = self.vtysh_json(
                    router, f"show bgp ipv{family} unicast neighbors {peer} routes json"
                )
                found |= set((table.get("routes") or {}).keys())
        return found

    def sessions(self) -> dict[str, dict[str, str]]:
        return runner.session_report(self.paths, self.plan)

    def wait(
        self,
        what: str,
        condition: Callable[[], bool],
        seen: Callable[[], Any],
        *,
        deadline: float = 15,
        interval: float = 0.1,
    ) -> None:
        """Poll `condition` until true; on timeout fail with what `seen` shows last."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if condition():
                return
            time.sleep(interval)
        pytest.fail(f"timed out after {deadline:g} s waiting for {what}; last seen:\n{seen()}")

    def host_status(self, host: str) -> dict[str, Any]:
        return dict(self.api.get(f"/v1/hosts/{host}"))

    def wait_host_applied(self, host: str, *, deadline: float = 15) -> None:
        """Until the host's speaker reports the host's current revision applied."""

        def applied() -> bool:
            doc = self.host_status(host)
            done = (doc.get("status") or {}).get("applied_revision")
            return done is not None and done >= doc["revision"]

        self.wait(
            f"{host} to apply its revision",
            applied,
            lambda: json.dumps(self.host_status(host), default=str)[:1500],
            deadline=deadline,
        )

    # -- speakers

    def speaker_pid(self, host: str) -> int | None:
        from lab import procs

        return procs.pidfile_pid(self.paths.pidfile(f"speaker-{host}"))

    def exabgp_pid(self, host: str) -> int | None:
        from lab import procs

        return procs.pidfile_pid(self.paths.speaker_dir(host) / "exabgp.pid")

    def start_speaker(self, host: str) -> int:
        return runner.start_speaker(self.paths, host)

    def host_netns(self, host: str) -> str:
        return node_netns(self.name, host)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    require_root_tools("ip", "vtysh", "/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "exabgp")
    name = f"t{uuid.uuid4().hex[:5]}"
    try:
        runner.up(TWO_RACK, runner.UpOptions(name=name, listen=""), say=print)
        handle = Lab(LabPaths.of(name), plan_fabric(runner.read_topology(TWO_RACK, name)))
        for cidr in POOLS:
            handle.api.post("/v1/pools", {"cidr": cidr})
        handle.tenant_id = handle.api.post("/v1/tenants", {"name": f"lab-{name}"})["id"]
        yield handle
    finally:
        runner.down(name, say=print)
