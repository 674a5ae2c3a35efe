"""A real leaf accepts from a real host exactly the prefixes allocated to it.

ARCHITECTURE.md invariant 5, end to end on one link: leaf1 of the two-rack plan runs
zebra + bgpd with the config `fabric.frr` renders; host h1 runs ExaBGP and announces its
allocation plus prefixes it does not own (a default route, a covering and a narrower
prefix, a neighbour's address, space outside the pools). The leaf must keep exactly the
allocation, in both families, and send the host nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fabric.frr import render_router_config
from fabric.plan import FabricPlan, plan_fabric
from fabric.topology import load_topology

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
FRR_DAEMONS = Path("/usr/lib/frr")
ALLOCATION = {
    4: ["10.64.0.0/28", "10.64.200.7/32"],
    6: ["2001:db8:100::/120", "2001:db8:100:ff::7/128"],
}
FOREIGN = {
    4: ["0.0.0.0/0", "10.64.0.0/27", "10.64.0.0/29", "10.64.200.8/32", "192.168.0.0/24"],
    6: ["::/0", "2001:db8:100::/119", "2001:db8:100::/121", "2001:db8:200::/48"],
}
T = TypeVar("T")


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} is not available")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def wait_for(what: str, probe: Callable[[], tuple[bool, T]], timeout: float = 60) -> T:
    """Poll `probe` until it reports success; fail with the last state seen."""
    deadline = time.monotonic() + timeout
    ok, last = probe()
    while not ok and time.monotonic() < deadline:
        time.sleep(0.2)
        ok, last = probe()
    if not ok:
        pytest.fail(f"timed out waiting for {what}; last state: {last!r}")
    return last


@dataclass
class Link:
    leaf_ns: str
    host_ns: str
    plan: FabricPlan


def _exabgp_config(plan: FabricPlan) -> str:
    host = plan.hosts["h1"]
    blocks = []
    for peer in plan.peers_for_host("h1"):
        routes = "".join(
            f"        route {p} next-hop {peer.local_address};\n"
            for p in ALLOCATION[peer.family] + FOREIGN[peer.family]
        )
        blocks.append(
            f"neighbor {peer.peer_address} {{\n"
            f"    router-id {host.router_id};\n"
            f"    local-address {peer.local_address};\n"
            f"    local-as {peer.local_asn};\n"
            f"    peer-as {peer.peer_asn};\n"
            f"    hold-time {peer.hold_time};\n"
            f"    family {{ ipv{peer.family} unicast; }}\n"
            f"    static {{\n{routes}    }}\n"
            f"}}\n"
        )
    return "".join(blocks)


def _start_frr(ns: str, config: Path, empty: Path) -> None:
    rundir = Path("/var/run/frr") / ns
    rundir.mkdir(parents=True)
    shutil.chown(rundir, "frr", "frr")
    for daemon in ("zebra", "bgpd"):
        subprocess.run(
            ["ip", "netns", "exec", ns, str(FRR_DAEMONS / daemon), "-d", "-N", ns,
             "-F", "datacenter", "-f", str(empty), "-i", str(rundir / f"{daemon}.pid")],
            check=True,
        )  # fmt: skip

    def daemons_up() -> tuple[bool, str]:
        r = _run("vtysh", "-N", ns, "-c", "show daemons")
        return r.returncode == 0 and "bgpd" in r.stdout, r.stdout + r.stderr

    wait_for(f"zebra and bgpd in {ns}", daemons_up, timeout=20)
    applied = _run("vtysh", "-N", ns, "-f", str(config))
    assert applied.returncode == 0, applied.stdout + applied.stderr


def _stop_frr(ns: str) -> None:
    rundir = Path("/var/run/frr") / ns
    for daemon in ("bgpd", "zebra"):
        pid = rundir / f"{daemon}.pid"
        if pid.exists():
            _run("kill", pid.read_text().strip())
    shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture
def leaf_and_host(tmp_path: Path) -> Iterator[Link]:
    if os.geteuid() != 0:
        _missing("root (network namespaces)")
    if not (FRR_DAEMONS / "bgpd").exists() or shutil.which("vtysh") is None:
        _missing("FRR (apt install frr)")
    if shutil.which("exabgp") is None:
        _missing("ExaBGP (pip install exabgp)")
    plan = plan_fabric(load_topology((ROOT / "lab/topologies/two-rack.clab.yml").read_text()))
    allocations = {"h1": ALLOCATION[4] + ALLOCATION[6]}
    pools = ("10.64.0.0/10", "2001:db8:100::/40")
    config = render_router_config(plan, "leaf1", allocations, pools=pools)
    # Test instrumentation only: keep what h1 sent before the filter, to know it all arrived.
    for peer in plan.peers_for_host("h1"):
        config = config.replace(
            f"  neighbor {peer.local_address} activate\n",
            f"  neighbor {peer.local_address} activate\n"
            f"  neighbor {peer.local_address} soft-reconfiguration inbound\n",
        )
    (tmp_path / "leaf1.conf").write_text(config)
    (tmp_path / "h1.exabgp.conf").write_text(_exabgp_config(plan))
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    tmp_path.chmod(0o755)
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    tag = uuid.uuid4().hex[:6]
    link = Link(f"tfl{tag}", f"tfh{tag}", plan)
    exabgp: subprocess.Popen[bytes] | None = None
    log = tmp_path / "exabgp.log"
    try:
        _wire(link)
        _start_frr(link.leaf_ns, tmp_path / "leaf1.conf", empty)
        env = {**os.environ, "exabgp.daemon.user": "root", "exabgp.api.cli": "false"}
        with log.open("wb") as out:
            exabgp = subprocess.Popen(
                ["ip", "netns", "exec", link.host_ns, "exabgp", "server",
                 str(tmp_path / "h1.exabgp.conf")],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        yield link
    finally:
        if exabgp is not None:
            exabgp.terminate()
            try:
                exabgp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                exabgp.kill()
                exabgp.wait()
        _stop_frr(link.leaf_ns)
        for ns in (link.leaf_ns, link.host_ns):
            _run("ip", "netns", "del", ns)
        if log.exists():
            print("exabgp log tail:\n" + "\n".join(log.read_text().splitlines()[-20:]))


def _wire(link: Link) -> None:
    """Namespaces and the leaf1:eth3 -- h1:eth1 veth; the host side gets its addresses
    here (zebra sets the leaf's from the config)."""
    leaf_if = link.plan.interfaces_of("h1")[0]
    for ns in (link.leaf_ns, link.host_ns):
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    subprocess.run(
        ["ip", "link", "add", leaf_if.peer_interface, "netns", link.leaf_ns, "type", "veth",
         "peer", "name", leaf_if.interface, "netns", link.host_ns],
        check=True,
    )  # fmt: skip
    subprocess.run(["ip", "-n", link.leaf_ns, "link", "set", leaf_if.peer_interface, "up"],
                   check=True)  # fmt: skip
    for address in (leaf_if.address4, leaf_if.address6):
        nodad = ["nodad"] if ":" in address else []
        subprocess.run(
            ["ip", "-n", link.host_ns, "addr", "add", address, "dev", leaf_if.interface, *nodad],
            check=True,
        )
    subprocess.run(["ip", "-n", link.host_ns, "link", "set", leaf_if.interface, "up"],
                   check=True)  # fmt: skip


def _vtysh_json(ns: str, command: str) -> Any:
    result = _run("vtysh", "-N", ns, "-c", command)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"error": result.stdout + result.stderr}


def _prefixes(doc: Any) -> set[str]:
    """Prefixes of a `show bgp ... neighbors X routes|received-routes|advertised-routes json`."""
    if not isinstance(doc, dict):
        return set()
    for key in ("routes", "receivedRoutes", "advertisedRoutes"):
        if isinstance(doc.get(key), dict):
            return set(doc[key])
    return set()


@pytest.mark.parametrize("family", [4, 6])
def test_leaf_keeps_exactly_the_allocation(leaf_and_host: Link, family: int) -> None:
    ns = leaf_and_host.leaf_ns
    peer = next(p for p in leaf_and_host.plan.peers_for_host("h1") if p.family == family)
    af = f"ipv{family} unicast"
    neighbor = peer.local_address
    sent = set(ALLOCATION[family] + FOREIGN[family])

    def everything_received() -> tuple[bool, Any]:
        doc = _vtysh_json(ns, f"show bgp {af} neighbors {neighbor} received-routes json")
        return _prefixes(doc) == sent, doc

    wait_for(f"leaf1 to receive all of h1's IPv{family} announcements", everything_received)
    accepted = _vtysh_json(ns, f"show bgp {af} neighbors {neighbor} routes json")
    assert _prefixes(accepted) == set(ALLOCATION[family]), accepted
    advertised = _vtysh_json(ns, f"show bgp {af} neighbors {neighbor} advertised-routes json")
    assert "error" not in advertised and _prefixes(advertised) == set(), advertised
