"""The whole path on real parts: API → controller → speaker (kernel, iptables, ExaBGP) →
leaf and spines (FRR) → a packet across racks. One lab for the module (`lab` fixture).

Hosts: h1, h2 in rack r1 (leaf1); h3, h4 in rack r2 (leaf2).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lab import procs, runner
from lab.paths import LabPaths
from tests.conftest import record_figure, require_root_tools
from tests.lab.conftest import TWO_RACK, Lab

pytestmark = pytest.mark.lab

SPINES = ("spine1", "spine2")


def _in(prefix: str, subnets: list[str]) -> bool:
    net = ipaddress.ip_network(prefix)
    return any(
        net.version == s.version and net.subnet_of(s)  # type: ignore[arg-type]
        for s in map(ipaddress.ip_network, subnets)
    )


def _subnets(network: dict[str, object]) -> list[str]:
    return [s["cidr"] for s in network["subnets"]]  # type: ignore[attr-defined]


def test_every_bgp_session_is_established(lab: Lab) -> None:
    report = lab.sessions()
    for router in lab.plan.routers:
        sessions = report[router]
        assert len(sessions) == runner.expected_sessions(lab.plan, router), report
        assert set(sessions.values()) == {"Established"}, report


def test_one_network_across_racks_and_subnets_both_ways_v4_and_v6(lab: Lab) -> None:
    # Subnets with room for a single block each: the second rack's endpoint must get its
    # address from the second pair of subnets.
    network = lab.network(v4=28, v6=120, block4=28, block6=120)
    a = lab.container_add("h1", lab.unique("a"), network["id"])
    lab.subnet(network["id"], 4, 24)
    lab.subnet(network["id"], 6, 64)
    b = lab.container_add("h3", lab.unique("b"), network["id"])
    first4 = ipaddress.ip_network(_subnets(network)[0])
    assert ipaddress.ip_address(a["ipv4"]) in first4
    assert ipaddress.ip_address(b["ipv4"]) not in first4, (a, b)
    for src, dst in ((a, b), (b, a)):
        for family in ("ipv4", "ipv6"):
            lab.wait_ping(src["name"], dst[family])


def test_twenty_endpoints_one_prefix_per_block_at_the_leaf(lab: Lab) -> None:
    network = lab.network(v4=24, v6=64, block4=27, block6=120)
    subnets = _subnets(network)
    containers = [lab.container_add("h2", lab.unique("m"), network["id"]) for _ in range(20)]
    probe = lab.container_add("h4", lab.unique("probe"), network["id"])
    for c in (containers[0], containers[-1]):
        lab.wait_ping(probe["name"], c["ipv4"])
    blocks = [b["cidr"] for b in lab.api.get("/v1/hosts/h2/desired-state", timeout=0)["blocks"]]
    mine = sorted(b for b in blocks if _in(b, subnets))
    assert len(mine) == 2, mine  # one IPv4 /27 and one IPv6 /120 hold all 20

    def leaf_prefixes() -> list[str]:
        return sorted(p for p in lab.prefixes_from("leaf1", "h2") if _in(p, subnets))

    lab.wait("leaf1 to carry h2's blocks", lambda: leaf_prefixes() == mine, leaf_prefixes)
    fib = [p for p in lab.vtysh_json("leaf1", "show ip route json") if _in(p, subnets)]
    assert fib and all(p.endswith("/27") for p in fib), fib  # blocks, never a /32


def test_deleted_endpoint_unreachable_and_empty_block_withdrawn(lab: Lab) -> None:
    network = lab.network(v4=24, v6=64, block4=28, block6=120)
    a = lab.container_add("h1", lab.unique("a"), network["id"])
    b = lab.container_add("h4", lab.unique("b"), network["id"])
    for family in ("ipv4", "ipv6"):
        lab.wait_ping(a["name"], b[family])
    state = lab.api.get("/v1/hosts/h4/desired-state", timeout=0)
    blocks = [x["cidr"] for x in state["blocks"] if _in(x["cidr"], _subnets(network))]
    assert len(blocks) == 2, blocks
    lab.container_rm(b["name"])
    for family in ("ipv4", "ipv6"):
        lab.wait_unreachable(a["name"], b[family])
    for router in ("leaf2", "leaf1", *SPINES):
        _wait_withdrawn(lab, router, set(blocks))


def _wait_withdrawn(lab: Lab, router: str, prefixes: set[str], deadline: float = 15) -> None:
    def present() -> set[str]:
        return (lab.bgp_prefixes(router, 4) | lab.bgp_prefixes(router, 6)) & prefixes

    lab.wait(f"{router} to withdraw {sorted(prefixes)}", lambda: not present(), present,
             deadline=deadline, interval=0.25)  # fmt: skip


def _ping_counts(output: str) -> tuple[int, int]:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def test_speaker_sigkill_and_restart_loses_no_packet(lab: Lab) -> None:
    network = lab.network()
    a = lab.container_add("h1", lab.unique("a"), network["id"])
    b = lab.container_add("h3", lab.unique("b"), network["id"])
    lab.wait_ping(a["name"], b["ipv4"])
    lab.wait_ping(a["name"], b["ipv6"])
    pingers = {
        family: subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                a["netns"],
                "ping",
                f"-{family[-1]}",
                "-n",
                "-i",
                "0.05",
                "-w",
                "6",
                "-W",
                "1",
                b[family],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for family in ("ipv4", "ipv6")
    }
    outputs: dict[str, str] = {}
    try:
        time.sleep(1)  # the window: traffic flows before, during and after the restart
        pid = lab.speaker_pid("h3")
        assert pid is not None and procs.alive(pid)
        os.kill(pid, signal.SIGKILL)
        lab.wait("the killed speaker to be gone", lambda: not procs.alive(pid), lambda: pid)
        lab.start_speaker("h3")
        lab.wait_host_applied("h3")
        for family, pinger in pingers.items():
            outputs[family] = pinger.communicate(timeout=20)[0]
    finally:
        for pinger in pingers.values():
            if pinger.poll() is None:
                pinger.kill()
    for family, output in outputs.items():
        sent, received = _ping_counts(output)
        record_figure("R3", f"{family} pings lost across a speaker SIGKILL and restart",
                      f"{sent - received} of {sent}")  # fmt: skip
        assert sent > 50 and received == sent, f"{family}: {output}"


def test_dead_host_routes_withdrawn_within_hold_time(lab: Lab) -> None:
    """The host dies: it goes silent (its BGP packets dropped, so no TCP FIN reaches the
    leaf), then its speaker and ExaBGP are killed. The leaf notices by its hold timer
    (9 s) and withdraws the host's blocks; a restarted speaker brings them back."""
    network = lab.network(block4=28, block6=120)
    a = lab.container_add("h1", lab.unique("a"), network["id"])
    b = lab.container_add("h4", lab.unique("b"), network["id"])
    lab.wait_ping(a["name"], b["ipv4"])
    blocks = {
        x["cidr"]
        for x in lab.api.get("/v1/hosts/h4/desired-state", timeout=0)["blocks"]
        if _in(x["cidr"], _subnets(network))
    }
    silence = [
        ["iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", "179", "-j", "DROP"],
        ["iptables", "-I", "OUTPUT", "-p", "tcp", "--sport", "179", "-j", "DROP"],
        ["ip6tables", "-I", "OUTPUT", "-p", "tcp", "--dport", "179", "-j", "DROP"],
        ["ip6tables", "-I", "OUTPUT", "-p", "tcp", "--sport", "179", "-j", "DROP"],
    ]
    netns = lab.host_netns("h4")
    try:
        for rule in silence:
            procs.run(rule, netns=netns)
        killed_at = time.monotonic()
        for pid in (lab.speaker_pid("h4"), lab.exabgp_pid("h4")):
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        procs.stop(procs.pids_matching(str(lab.paths.speaker_dir("h4"))), grace=0)

        # Hold time 9 s; the deadline adds polling slack. The spines follow the leaf.
        for router in ("leaf2", *SPINES):
            _wait_withdrawn(lab, router, blocks, deadline=9 + 6)
            took = time.monotonic() - killed_at
            record_figure("R4", f"{router} withdraws a silent host's blocks (hold 9 s)",
                          round(took, 1), "s")  # fmt: skip
        lab.wait_unreachable(a["name"], b["ipv4"])
    finally:
        for rule in silence:
            procs.run(["-D" if x == "-I" else x for x in rule], netns=netns, check=False)
        lab.start_speaker("h4")
    lab.wait_ping(a["name"], b["ipv4"], deadline=30)
    lab.wait_ping(a["name"], b["ipv6"], deadline=10)


def test_lab_down_leaves_nothing_behind() -> None:
    """A second, short-lived lab: up, then down; no namespace, link or process remains."""
    require_root_tools("ip", "vtysh", "/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "exabgp")
    name = f"d{uuid.uuid4().hex[:5]}"
    paths = LabPaths.of(name)
    links_before = _root_links()
    try:
        runner.up(TWO_RACK, runner.UpOptions(name=name, listen=""), say=print)
        assert any(n.startswith(f"{name}-") for n in _namespaces())
    finally:
        runner.down(name, say=print)
    assert not [n for n in _namespaces() if n.startswith(f"{name}-")]
    assert not procs.pids_matching(f"{paths.root}/")
    assert not procs.pids_matching(f"-N {name}-")
    assert not paths.root.exists()
    assert not list(Path("/var/run/frr").glob(f"{name}-*"))
    assert _root_links() == links_before
    runner.down(name, say=print)  # idempotent


def _namespaces() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _root_links() -> set[str]:
    done = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()}
