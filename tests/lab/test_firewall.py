"""The firewall reconciler on real iptables and ipset, in fresh network namespaces.

One "host" namespace with a veth (named by `host_interface`) to each of three
"container" namespaces, wired with plain `ip` commands and static neighbours (the
kernel reconciler is tested on its own). c1 and c2 are in network A on different
subnets, c3 in network B. Traffic is real: ping and TCP connects to a
`python3 -m http.server` in each container, IPv4 and IPv6.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from fabric.naming import host_interface
from fabric.policy import counters_by_origin, ingress_chain
from fabric.state import Endpoint, HostInfo, HostState, Network, Rule
from speaker.firewall import FirewallReconciler, Runner, run_command

pytestmark = pytest.mark.lab

PORT = 8080
HOST_PORT = 8081
HOST4 = "192.0.2.1"
HOST6 = "2001:db8:ffff::1"
GATEWAY4 = "169.254.1.1"
GATEWAY6 = "fe80::1"

NET_A = Network(
    "net-a", "tenant-1", ("10.10.0.0/24", "10.10.1.0/24", "fd00:a::/64", "fd00:a:1::/64"), "alpha"
)
NET_B = Network("net-b", "tenant-2", ("10.20.0.0/24", "fd00:b::/64"), "beta")
EP1 = Endpoint("ep-1", "c1", "net-a", "10.10.0.2", "fd00:a::2")
EP2 = Endpoint("ep-2", "c2", "net-a", "10.10.1.2", "fd00:a:1::2")
EP3 = Endpoint("ep-3", "c3", "net-b", "10.20.0.2", "fd00:b::2")
EP4 = Endpoint("ep-4", "c4", "net-a", "10.10.0.4", "fd00:a::4")
A_TO_B_HTTP = Rule("rule-a-to-b-http", "net-b", "net-a", None, "tcp", (str(PORT),))


def _require_root() -> None:
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [
        t
        for t in ("ip", "ping", "iptables-restore", "ip6tables-restore", "ipset")
        if not shutil.which(t)
    ]
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


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"trf-{self.tag}-h"

    def container(self, endpoint: Endpoint) -> str:
        return f"trf-{self.tag}-{endpoint.name}"

    @property
    def other_host(self) -> str:
        return f"trf-{self.tag}-h2"

    def namespaces(self) -> list[str]:
        containers = [self.container(e) for e in (EP1, EP2, EP3, EP4)]
        return [self.host, self.other_host, *containers]

    def runner_in(self, host: str) -> Runner:
        def runner(argv: Sequence[str], stdin: str | None = None) -> str:
            return run_command(["ip", "netns", "exec", host, *argv], stdin)

        return runner

    def in_host(self, *args: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.host, *args, check=check)

    def in_container(self, endpoint: Endpoint, *args: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.container(endpoint), *args, check=check)

    def runner(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """The reconciler's runner: the real binaries, inside the host namespace."""
        return run_command(["ip", "netns", "exec", self.host, *argv], stdin)

    def serve(self, namespace: str, port: int) -> None:
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "::",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers.append(server)
        wait_for(f"http.server in {namespace}", lambda: _connects(namespace, "::1", port))


def _connects(namespace: str, address: str, port: int) -> bool:
    code = (
        "import socket, sys; "
        "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", code, address, str(port)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _pings(namespace: str, address: str, source: str | None = None) -> bool:
    argv = ["ip", "netns", "exec", namespace, "ping", "-c1", "-W1"]
    argv += ["-I", source] if source else []
    return subprocess.run([*argv, address], capture_output=True, check=False).returncode == 0


def _wire(lab: Lab, endpoint: Endpoint, host: str | None = None) -> None:
    host = host or lab.host

    def on_host(*args: str) -> str:
        return sh("ip", "netns", "exec", host, *args)

    veth, ns = host_interface(endpoint.id), lab.container(endpoint)
    on_host("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    on_host("ip", "link", "set", veth, "up")
    on_host("ip", "-6", "addr", "add", f"{GATEWAY6}/64", "dev", veth, "nodad")
    lab.in_container(endpoint, "ip", "link", "set", "lo", "up")
    lab.in_container(endpoint, "ip", "link", "set", "eth0", "up")
    lab.in_container(endpoint, "ip", "addr", "add", f"{endpoint.ipv4}/32", "dev", "eth0")
    lab.in_container(
        endpoint, "ip", "-6", "addr", "add", f"{endpoint.ipv6}/128", "dev", "eth0", "nodad"
    )
    host_mac = _mac(on_host("ip", "-o", "link", "show", veth))
    container_mac = _mac(lab.in_container(endpoint, "ip", "-o", "link", "show", "eth0"))
    lab.in_container(
        endpoint,
        "ip",
        "neigh",
        "replace",
        GATEWAY4,
        "lladdr",
        host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    )
    lab.in_container(
        endpoint,
        "ip",
        "-6",
        "neigh",
        "replace",
        GATEWAY6,
        "lladdr",
        host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    )
    lab.in_container(endpoint, "ip", "route", "add", GATEWAY4, "dev", "eth0")
    lab.in_container(endpoint, "ip", "route", "add", "default", "via", GATEWAY4, "dev", "eth0")
    lab.in_container(
        endpoint, "ip", "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"
    )
    for family, address in (("-4", endpoint.ipv4), ("-6", endpoint.ipv6)):
        assert address
        on_host(
            "ip",
            family,
            "neigh",
            "replace",
            address,
            "lladdr",
            container_mac,
            "dev",
            veth,
            "nud",
            "permanent",
        )
        on_host("ip", family, "route", "add", address, "dev", veth)


def _mac(link_line: str) -> str:
    words = link_line.split()
    return words[words.index("link/ether") + 1]


def _foreign_rules(lab: Lab) -> None:
    """Rules, chains and a set of someone else's, placed before Terrace starts."""
    for tool in ("iptables", "ip6tables"):
        source = "203.0.113.7" if tool == "iptables" else "2001:db8:dead::7"
        lab.in_host(tool, "-N", "FOREIGN")
        lab.in_host(tool, "-A", "FOREIGN", "-j", "RETURN")
        lab.in_host(tool, "-A", "FORWARD", "-j", "FOREIGN")
        lab.in_host(tool, "-A", "INPUT", "-s", source, "-j", "ACCEPT")
    lab.in_host("ipset", "create", "foreign", "hash:ip")


def _foreign_snapshot(lab: Lab) -> str:
    lines = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = lab.in_host(tool, "-t", "filter")
        lines += [
            line
            for line in text.splitlines()
            if "FOREIGN" in line or "203.0.113.7" in line or "dead::7" in line
        ]
    sets = [
        name for name in lab.in_host("ipset", "list", "-n").split() if not name.startswith("tr-")
    ]
    return "\n".join(sorted(lines) + sets)


@pytest.fixture
def lab() -> Iterator[Lab]:
    _require_root()
    lab = Lab()
    try:
        for ns in lab.namespaces():
            sh("ip", "netns", "add", ns)
        lab.in_host("ip", "link", "set", "lo", "up")
        lab.in_host("ip", "addr", "add", f"{HOST4}/32", "dev", "lo")
        lab.in_host("ip", "-6", "addr", "add", f"{HOST6}/128", "dev", "lo", "nodad")
        lab.in_host("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        _foreign_rules(lab)
        for endpoint in (EP1, EP2, EP3):
            _wire(lab, endpoint)
            lab.serve(lab.container(endpoint), PORT)
        lab.serve(lab.host, HOST_PORT)
        yield lab
    finally:
        for server in lab.servers:
            server.kill()
            server.wait()
        for ns in lab.namespaces():
            sh("ip", "netns", "del", ns, check=False)


def state(*, rules: tuple[Rule, ...] = (), revision: int = 1) -> HostState:
    return HostState(
        revision=revision,
        host=HostInfo("h1", "r1", 4200000001, HOST4, HOST6),
        endpoints=(EP1, EP2, EP3),
        networks=(NET_A, NET_B),
        rules=rules,
    )


def reachability(lab: Lab, pairs: Sequence[tuple[Endpoint, Endpoint]]) -> dict[str, bool]:
    """`c1->c3 v4 tcp` → reachable, for each pair, family and kind."""
    seen = {}
    for src, dst in pairs:
        for family, address in (("v4", dst.ipv4), ("v6", dst.ipv6)):
            assert address
            seen[f"{src.name}->{dst.name} {family} ping"] = _pings(lab.container(src), address)
            seen[f"{src.name}->{dst.name} {family} tcp"] = _connects(
                lab.container(src), address, PORT
            )
    return seen


def expect(
    lab: Lab, pairs: Sequence[tuple[Endpoint, Endpoint]], want: Callable[[str], bool]
) -> None:
    """Poll until every probe matches `want(probe name)`; print the matrix on failure."""

    def matches() -> dict[str, bool] | None:
        seen = reachability(lab, pairs)
        wrong = {k: v for k, v in seen.items() if v != want(k)}
        return None if wrong else seen

    end = time.monotonic() + 10
    while time.monotonic() < end:
        if matches():
            return
        time.sleep(0.2)
    seen = reachability(lab, pairs)
    matrix = "\n".join(
        f"  {k:28} {'pass' if v else 'deny'}  (want {'pass' if want(k) else 'deny'})"
        for k, v in seen.items()
    )
    pytest.fail(f"reachability differs from intent:\n{matrix}")


def test_same_network_passes_other_network_denied_rule_opens_and_closes(lab: Lab) -> None:
    firewall = FirewallReconciler(runner=lab.runner)
    firewall.apply(state())
    cross = [(EP1, EP3), (EP3, EP1), (EP2, EP3)]
    expect(lab, [(EP1, EP2), (EP2, EP1)], lambda probe: True)
    expect(lab, cross, lambda probe: False)

    firewall.apply(state(rules=(A_TO_B_HTTP,), revision=2))
    expect(
        lab, cross, lambda probe: probe.startswith(("c1->c3", "c2->c3")) and probe.endswith("tcp")
    )

    firewall.apply(state(revision=3))
    expect(lab, cross, lambda probe: False)
    expect(lab, [(EP1, EP2)], lambda probe: True)


def test_forged_source_never_passes(lab: Lab) -> None:
    firewall = FirewallReconciler(runner=lab.runner)
    firewall.apply(state(rules=(Rule("open-v4", "net-b", None, "0.0.0.0/0"),)))
    # a second address inside c1, even one of its own network, must not get out
    lab.in_container(EP1, "ip", "addr", "add", "10.10.0.99/32", "dev", "eth0")
    lab.in_container(EP1, "ip", "-6", "addr", "add", "fd00:a::99/128", "dev", "eth0", "nodad")
    wait_for(
        "c1 reaches c2 with its real address", lambda: _pings(lab.container(EP1), EP2.ipv4 or "")
    )
    forgeries = [
        (EP2.ipv4, "10.10.0.99"),
        (EP2.ipv6, "fd00:a::99"),
        (EP3.ipv4, "10.10.0.99"),
        (HOST4, "10.10.0.99"),
    ]
    for target, forged in forgeries:
        assert target
        assert not _pings(lab.container(EP1), target, source=forged), f"{forged} -> {target} passed"
    assert _pings(lab.container(EP1), EP3.ipv4 or ""), "the open rule lets c1's real address in"
    assert firewall.applied is not None
    by_origin = counters_by_origin(firewall.counters(), firewall.applied)
    assert by_origin["spoofed-source:ep-1"] >= len(forgeries), by_origin


def test_host_and_endpoint_defaults(lab: Lab) -> None:
    FirewallReconciler(runner=lab.runner).apply(state())
    wait_for("host pings c1", lambda: _pings(lab.host, EP1.ipv4 or ""))
    assert _connects(lab.host, EP1.ipv6 or "", PORT), "the host may reach its own endpoints"
    assert _pings(lab.container(EP1), HOST4) and _pings(lab.container(EP1), HOST6)
    assert not _connects(lab.container(EP1), HOST4, HOST_PORT), (
        "endpoint -> host TCP must be denied"
    )
    assert not _connects(lab.container(EP1), HOST6, HOST_PORT)


def test_counters_count_default_drops(lab: Lab) -> None:
    firewall = FirewallReconciler(runner=lab.runner)
    firewall.apply(state())
    assert firewall.applied is not None
    drop = firewall.applied.tables[4].chains[ingress_chain(EP1.id)][-1]
    before = firewall.counters().get(drop.hash, 0)
    assert not _pings(lab.container(EP3), EP1.ipv4 or "")
    assert not _connects(lab.container(EP3), EP1.ipv6 or "", PORT)
    after = firewall.counters()
    assert after[drop.hash] >= before + 2, after
    assert counters_by_origin(after, firewall.applied)["default-drop:ep-1"] >= 2


def test_foreign_rules_survive_and_jumps_stay_first(lab: Lab) -> None:
    foreign = _foreign_snapshot(lab)
    for revision in range(1, 8):
        rules = (A_TO_B_HTTP,) if revision % 2 else ()
        FirewallReconciler(runner=lab.runner).apply(state(rules=rules, revision=revision))
    # someone inserts above us: our jump goes back on top, theirs stays
    lab.in_host("iptables", "-I", "FORWARD", "1", "-s", "203.0.113.8", "-j", "ACCEPT")
    firewall = FirewallReconciler(runner=lab.runner)
    firewall.apply(state(revision=9))
    forward = [
        line
        for line in lab.in_host("iptables-save", "-t", "filter").splitlines()
        if line.startswith("-A FORWARD")
    ]
    assert "TERRACE-FORWARD" in forward[0] and "203.0.113.8" in forward[1], forward
    assert _foreign_snapshot(lab) == foreign
    firewall.apply(state(revision=9))
    assert firewall.last_patch is not None and firewall.last_patch.empty, firewall.last_patch
    # a restarted speaker reads everything back and finds nothing to change
    restarted = FirewallReconciler(runner=lab.runner)
    restarted.apply(state(revision=9))
    assert restarted.last_patch is not None and restarted.last_patch.empty, restarted.last_patch

    firewall.remove_all()
    saved = lab.in_host("iptables-save") + lab.in_host("ip6tables-save")
    assert "TERRACE" not in saved and "tr:" not in saved, saved
    assert lab.in_host("ipset", "list", "-n").split() == ["foreign"]
    assert _foreign_snapshot(lab) == foreign


def test_unknown_veth_is_closed_before_its_chain_exists(lab: Lab) -> None:
    """Routes to a container the firewall does not know yet exist: it is closed anyway."""
    firewall = FirewallReconciler(runner=lab.runner)
    firewall.apply(replace(state(), endpoints=(EP1, EP3)))
    assert not _connects(lab.container(EP1), EP2.ipv4 or "", PORT), "same network, but no chain yet"
    assert not _connects(lab.container(EP2), EP1.ipv4 or "", PORT), "an unknown veth may not send"
    assert not _pings(lab.container(EP2), HOST4)
    firewall.apply(state())
    expect(lab, [(EP1, EP2), (EP2, EP1)], lambda probe: True)


# ------------------------------------------------------------------ two hosts

FABRIC_A, FABRIC_B = ("10.255.0.1", "fd00:255::1"), ("10.255.0.2", "fd00:255::2")


@pytest.fixture
def two_hosts() -> Iterator[Lab]:
    """Host A (c1, later c4) and host B (c2, c3), linked by one routed veth."""
    _require_root()
    lab = Lab()
    try:
        for ns in lab.namespaces():
            sh("ip", "netns", "add", ns)
        a, b = lab.host, lab.other_host
        sh(
            "ip",
            "netns",
            "exec",
            a,
            "ip",
            "link",
            "add",
            "fab0",
            "type",
            "veth",
            "peer",
            "name",
            "fab0",
            "netns",
            b,
        )
        for host, (v4, v6) in ((a, FABRIC_A), (b, FABRIC_B)):

            def on(*args: str, host: str = host) -> str:
                return sh("ip", "netns", "exec", host, *args)

            on("ip", "link", "set", "lo", "up")
            on("ip", "link", "set", "fab0", "up")
            on("ip", "addr", "add", f"{v4}/30", "dev", "fab0")
            on("ip", "-6", "addr", "add", f"{v6}/64", "dev", "fab0", "nodad")
            on("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for endpoint, host in ((EP1, a), (EP2, b), (EP3, b)):
            _wire(lab, endpoint, host)
            _route_remote(lab, endpoint, host)
            lab.serve(lab.container(endpoint), PORT)
        yield lab
    finally:
        for server in lab.servers:
            server.kill()
            server.wait()
        for ns in lab.namespaces():
            sh("ip", "netns", "del", ns, check=False)


def _route_remote(lab: Lab, endpoint: Endpoint, host: str) -> None:
    """On the other host, route the endpoint's addresses over the fabric link."""
    other, (via4, via6) = (lab.other_host, FABRIC_A) if host == lab.host else (lab.host, FABRIC_B)
    sh("ip", "netns", "exec", other, "ip", "route", "add", f"{endpoint.ipv4}/32", "via", via4)
    sh(
        "ip",
        "netns",
        "exec",
        other,
        "ip",
        "-6",
        "route",
        "add",
        f"{endpoint.ipv6}/128",
        "via",
        via6,
    )


def host_states(endpoints_a: tuple[Endpoint, ...], revision: int) -> tuple[HostState, HostState]:
    def for_host(name: str, endpoints: tuple[Endpoint, ...]) -> HostState:
        return HostState(
            revision=revision,
            host=HostInfo(name, "r1", 4200000001, HOST4),
            endpoints=endpoints,
            networks=(NET_A, NET_B),
            rules=(A_TO_B_HTTP,),
        )

    return for_host("a", endpoints_a), for_host("b", (EP2, EP3))


def terrace_rules(lab: Lab, host: str) -> str:
    text = ""
    for tool in ("iptables-save", "ip6tables-save"):
        saved = sh("ip", "netns", "exec", host, tool, "-t", "filter")
        text += "\n".join(line for line in saved.splitlines() if "TERRACE" in line) + "\n"
    return text + sh("ip", "netns", "exec", host, "ipset", "save")


def test_across_hosts_policy_holds_and_endpoint_churn_stays_local(two_hosts: Lab) -> None:
    lab = two_hosts
    firewall_a = FirewallReconciler(runner=lab.runner_in(lab.host))
    firewall_b = FirewallReconciler(runner=lab.runner_in(lab.other_host))
    state_a, state_b = host_states((EP1,), revision=1)
    firewall_a.apply(state_a)
    firewall_b.apply(state_b)
    expect(lab, [(EP1, EP2), (EP2, EP1)], lambda probe: True)
    expect(
        lab,
        [(EP1, EP3), (EP3, EP1)],
        lambda probe: probe.startswith("c1->c3") and probe.endswith("tcp"),
    )

    before_b = terrace_rules(lab, lab.other_host)
    _wire(lab, EP4, lab.host)
    _route_remote(lab, EP4, lab.host)
    lab.serve(lab.container(EP4), PORT)
    state_a, state_b = host_states((EP1, EP4), revision=2)
    firewall_a.apply(state_a)
    FirewallReconciler(runner=lab.runner_in(lab.other_host)).apply(state_b)
    assert terrace_rules(lab, lab.other_host) == before_b, "host B changed for an endpoint on A"
    expect(lab, [(EP4, EP2), (EP2, EP4), (EP4, EP1)], lambda probe: True)

    lab.in_container(EP1, "ip", "addr", "add", "10.10.0.99/32", "dev", "eth0")
    assert not _pings(lab.container(EP1), EP2.ipv4 or "", source="10.10.0.99")


# ------------------------------------------------------------------- conntrack

_COUNT_FLOWS = (
    "import sys; from pyroute2 import Conntrack\n"
    "with Conntrack() as ct:\n"
    "    ends = [(e.tuple_orig.saddr, e.tuple_orig.daddr) for e in ct.dump_entries()]\n"
    "print(sum(1 for end in ends if sys.argv[1] in end))"
)
_FORGET = (
    "import sys; from speaker.firewall import forget_conntrack; "
    "print(forget_conntrack(frozenset(sys.argv[1:])))"
)
_HOLD = (
    "import socket, sys, time; "
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); time.sleep(120)"
)


def flows_of(lab: Lab, address: str) -> int:
    return int(lab.in_host(sys.executable, "-c", _COUNT_FLOWS, address).strip() or 0)


def test_flows_of_a_deleted_endpoint_are_forgotten(lab: Lab) -> None:
    def forget_in_host(addresses: frozenset[str]) -> int:
        return int(lab.in_host(sys.executable, "-c", _FORGET, *sorted(addresses)).strip())

    firewall = FirewallReconciler(runner=lab.runner, forget_flows=forget_in_host)
    firewall.apply(state(rules=(A_TO_B_HTTP,)))
    holder = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.container(EP1),
            sys.executable,
            "-c",
            _HOLD,
            EP3.ipv4 or "",
            str(PORT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.servers.append(holder)
    wait_for("an established flow c1 -> c3", lambda: flows_of(lab, EP1.ipv4 or ""))
    firewall.apply(replace(state(rules=(A_TO_B_HTTP,)), endpoints=(EP2, EP3)))
    assert flows_of(lab, EP1.ipv4 or "") == 0
