"""Tenant isolation in the full lab (issue 5): real controller, speakers, iptables, FRR.

The module builds one small world on the shared two-rack `lab`: three tenants with two
networks each, endpoints on both racks, and three rules (same-tenant any, cross-tenant
tcp/7777, cross-tenant icmp). Every test computes what *should* pass from the networks
and rules itself (never by asking the controller) and compares it with real pings and
TCP connects.

Hosts: h1, h2 in rack r1 (leaf1); h3, h4 in rack r2 (leaf2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab import procs
from lab.api import LabApi
from speaker.client import ApiError
from speaker.firewall import FirewallReconciler
from tests.lab.conftest import Lab

pytestmark = pytest.mark.lab

PORT = 7777
FAMILIES = ("ipv4", "ipv6")
PROBES = ("ping", "tcp")
HOSTS = ("h1", "h2", "h3", "h4")
LISTENER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    f"s.bind(('::', {PORT}))\n"
    "s.listen(128)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.close()\n"
)


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class Intent:
    """A rule as the test means it: into `network` from `source`, protocol (ports)."""

    network: str
    source: str
    protocol: str
    ports: tuple[int, ...] = ()

    def allows(self, probe: str) -> bool:
        if probe == "ping":
            return self.protocol in ("any", "icmp")
        return self.protocol == "any" or (self.protocol == "tcp" and PORT in self.ports)


@dataclass
class World:
    """Tenants (name → api), networks (label → id), containers (label → record)."""

    lab: Lab
    tenants: dict[str, LabApi] = field(default_factory=dict)
    tenant_ids: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)
    rule_ids: dict[str, str] = field(default_factory=dict)
    listeners: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def network_of(self, container: str) -> str:
        return str(self.containers[container]["label"])

    def allowed(self, src: str, dst: str, probe: str, intents: Sequence[Intent] = ()) -> bool:
        """The intent, from networks and rules alone."""
        a, b = self.network_of(src), self.network_of(dst)
        if a == b:
            return True
        rules = [*self.intents.values(), *intents]
        return any(r.network == b and r.source == a and r.allows(probe) for r in rules)

    def add_rule(self, label: str, network: str, source: str, protocol: str,
                 ports: tuple[int, ...] = ()) -> str:  # fmt: skip
        """The rule, created by the destination network's owner."""
        api = self.tenants[self.owner[network]]
        body: dict[str, Any] = {"from_network": self.networks[source], "protocol": protocol}
        if ports:
            body["ports"] = list(ports)
        rule = api.post(f"/v1/networks/{self.networks[network]}/rules", body)
        self.intents[label] = Intent(network, source, protocol, ports)
        self.rule_ids[label] = rule["id"]
        return str(rule["id"])

    def delete_rule(self, label: str) -> None:
        intent = self.intents.pop(label)
        self.tenants[self.owner[intent.network]].delete(f"/v1/rules/{self.rule_ids.pop(label)}")

    def add_container(self, label: str, host: str, network: str) -> dict[str, Any]:
        name = self.lab.unique(label.replace("@", "-") + "-")
        record = self.lab.container_add(host, name, self.networks[network])
        record = {**record, "label": network, "host": host}
        self.containers[label] = record
        self.listeners.append(start_listener(self.lab, record["netns"]))
        return record


# Networks: tenant t0 owns a0, a1; t1 owns b0, b1; t2 owns c0, c1.
# x0 networks have an endpoint on each rack (h1, h3); x1 networks one endpoint.
LAYOUT = {
    "a0@h1": ("h1", "a0"),
    "a0@h3": ("h3", "a0"),
    "a1@h4": ("h4", "a1"),
    "b0@h1": ("h1", "b0"),
    "b0@h3": ("h3", "b0"),
    "b1@h2": ("h2", "b1"),
    "c0@h1": ("h1", "c0"),
    "c0@h3": ("h3", "c0"),
    "c1@h4": ("h4", "c1"),
}


@pytest.fixture(scope="module")
def world(lab: Lab) -> Iterator[World]:
    w = World(lab)
    try:
        for tenant, nets in (("t0", ("a0", "a1")), ("t1", ("b0", "b1")), ("t2", ("c0", "c1"))):
            made = lab.api.post("/v1/tenants", {"name": lab.unique(f"pol-{tenant}-")})
            w.tenants[tenant] = LabApi(lab.paths.url, made["token"])
            w.tenant_ids[tenant] = made["id"]
            for net in nets:
                w.networks[net] = lab.network(lab.unique(net), tenant_id=made["id"])["id"]
                w.owner[net] = tenant
        w.add_rule("same-tenant", "a1", "a0", "any")
        w.add_rule("cross-tenant-tcp", "b0", "a0", "tcp", (PORT,))
        w.add_rule("cross-tenant-icmp", "c0", "b1", "icmp")
        for label, (host, net) in LAYOUT.items():
            w.add_container(label, host, net)
        wait_listening(lab, [c["netns"] for c in w.containers.values()])
        for host in HOSTS:
            lab.wait_host_applied(host)
        yield w
    finally:
        for listener in w.listeners:
            listener.kill()
            listener.wait(timeout=5)
        for record in w.containers.values():
            lab.container_rm(record["name"])


def start_listener(lab: Lab, netns: str) -> subprocess.Popen[bytes]:
    """A tiny TCP server on `PORT` (both families) inside a container namespace."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-c", LISTENER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_listening(lab: Lab, namespaces: Sequence[str]) -> None:
    pending = list(namespaces)

    def listening() -> bool:
        pending[:] = [n for n in pending if not connects(n, "::1")]
        return not pending

    lab.wait("the listeners", listening, lambda: pending, deadline=15)


# ----------------------------------------------------------------------------- probes


def run_in(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def pings(netns: str, address: str, source: str | None = None, count: int = 1) -> bool:
    family = "-6" if ":" in address else "-4"
    via = ["-I", source] if source else []
    done = run_in(netns, "ping", family, "-n", "-c", str(count), "-W", "1", *via, address)
    return done.returncode == 0


def connects(netns: str, address: str) -> bool:
    """A TCP connect to `PORT` within 1 s (a dropped SYN times out, a refused one fails)."""
    done = run_in(netns, "timeout", "1", "bash", "-c", f": <>/dev/tcp/{address}/{PORT}")
    return done.returncode == 0


Cell = tuple[str, str, str, str]  # src label, dst label, family, probe


def probe(world: World, cell: Cell) -> bool:
    src, dst, family, kind = cell
    netns = world.containers[src]["netns"]
    address = world.containers[dst][family]
    return pings(netns, address) if kind == "ping" else connects(netns, address)


def probe_all(world: World, cells: Sequence[Cell]) -> dict[Cell, bool]:
    with ThreadPoolExecutor(max_workers=24) as pool:
        return dict(zip(cells, pool.map(lambda c: probe(world, c), cells), strict=True))


def render_matrix(
    world: World, labels: Sequence[str], seen: dict[Cell, bool], want: dict[Cell, bool]
) -> str:
    """src rows, dst columns; per cell ping4 tcp4 ping6 tcp6: `+` allowed as intended,
    `.` denied as intended, `L` leaked (passed, should be denied), `X` blocked (should
    pass)."""

    def mark(cell: Cell) -> str:
        if cell not in seen:
            return " "
        return {(True, True): "+", (False, False): ".", (True, False): "L", (False, True): "X"}[
            (seen[cell], want[cell])
        ]

    width = max(len(x) for x in labels)
    lines = ["     ".rjust(width) + " " + " ".join(d.ljust(width) for d in labels)]
    for src in labels:
        row = [
            "".join(mark((src, dst, f, p)) for f in FAMILIES for p in PROBES).ljust(width)
            for dst in labels
        ]
        lines.append(src.ljust(width) + "      " + " ".join(row))
    lines.append("cells: ping4 tcp4 ping6 tcp6; + allowed . denied L leaked X blocked")
    return "\n".join(lines)


def check_reachability(
    world: World, labels: Sequence[str], *, retry_blocked_for: float = 20
) -> tuple[dict[Cell, bool], dict[Cell, bool]]:
    """Probe every ordered pair of `labels`; returns (seen, intended).

    A leak (passes but should not) fails at once: the policy of every host is applied
    before probing. A blocked cell (should pass) is probed again until the deadline:
    the route may still be on its way through BGP.
    """
    cells = [
        (s, d, f, p) for s in labels for d in labels if s != d for f in FAMILIES for p in PROBES
    ]
    want = {c: world.allowed(c[0], c[1], c[3]) for c in cells}
    seen = probe_all(world, cells)
    end = time.monotonic() + retry_blocked_for
    while time.monotonic() < end:
        blocked = [c for c in cells if want[c] and not seen[c]]
        if not blocked or any(seen[c] and not want[c] for c in cells):
            break
        seen.update(probe_all(world, blocked))
    return seen, want


# ----------------------------------------------------------------------------- 1


def test_isolation_matrix_three_tenants_both_racks_v4_v6(world: World) -> None:
    labels = list(LAYOUT)
    started = time.monotonic()
    seen, want = check_reachability(world, labels)
    took = time.monotonic() - started
    matrix = render_matrix(world, labels, seen, want)
    print(f"{len(seen)} probes in {took:.1f} s\n{matrix}")
    wrong = sorted(c for c in seen if seen[c] != want[c])
    assert not wrong, f"{len(wrong)} cells differ from the intent:\n{matrix}\n{wrong[:20]}"
    assert sum(want.values()) and not all(want.values())  # the matrix tests both sides


# ----------------------------------------------------------------------------- 2


def test_rule_added_allows_deleted_denies_only_owner_may_create(world: World) -> None:
    lab = world.lab
    src, dst = "c1@h4", "a0@h3"  # tenant t2 → tenant t0: nothing allows it
    assert not world.allowed(src, dst, "ping") and not world.allowed(src, dst, "tcp")
    cells = [(src, dst, f, p) for f in FAMILIES for p in PROBES]

    def all_are(value: bool) -> bool:
        return all(v == value for v in probe_all(world, cells).values())

    def show() -> str:
        return json.dumps({"/".join(c): v for c, v in probe_all(world, cells).items()})

    # The source's owner (t2) may not open t0's network: 404, as if it did not exist.
    body = {"from_network": world.networks["c1"], "protocol": "any"}
    with pytest.raises(ApiError) as refused:
        world.tenants["t2"].post(f"/v1/networks/{world.networks['a0']}/rules", body)
    assert refused.value.status == 404, refused.value
    assert all_are(False), show()

    world.add_rule("opened", "a0", "c1", "any")  # by t0, the destination's owner
    try:
        lab.wait("the new rule to allow c1 → a0", lambda: all_are(True), show, deadline=15)
    finally:
        world.delete_rule("opened")
    lab.wait("the deleted rule to deny again", lambda: all_are(False), show, deadline=15)
    assert world.allowed(src, dst, "ping") is False


# ----------------------------------------------------------------------------- 3


def icmp_echoes_received(netns: str) -> dict[str, int]:
    """Echo requests the namespace's stack received, per family (from /proc)."""
    snmp = run_in(netns, "cat", "/proc/net/snmp").stdout.splitlines()
    icmp = [line.split()[1:] for line in snmp if line.startswith("Icmp:")]
    v4 = int(dict(zip(icmp[0], icmp[1], strict=True))["InEchos"])
    snmp6 = run_in(netns, "cat", "/proc/net/snmp6").stdout
    found = re.search(r"^Icmp6InEchos\s+(\d+)", snmp6, re.M)
    return {"ipv4": v4, "ipv6": int(found.group(1)) if found else -1}


def test_forged_source_never_reaches_any_destination(world: World) -> None:
    """The attacker borrows the address of a real endpoint of the victims' own network
    (so the ingress policy would let it in): only anti-spoofing stands in the way."""
    lab = world.lab
    net = lab.network(lab.unique("spoof"))
    make = lambda host, name: lab.container_add(host, lab.unique(name), net["id"])  # noqa: E731
    attacker, owner = make("h1", "atk"), make("h2", "own")
    victims = [make("h1", "vic"), make("h3", "vic"), make("h4", "vic")]
    try:
        for victim in victims:
            for family in FAMILIES:
                lab.wait_ping(attacker["name"], victim[family])  # the real source passes
        for family in FAMILIES:
            length = "/32" if family == "ipv4" else "/128"
            extra = ["nodad"] if family == "ipv6" else []
            done = run_in(attacker["netns"], "ip", "addr", "add", owner[family] + length,
                          "dev", "eth0", *extra)  # fmt: skip
            assert done.returncode == 0, done.stderr
        before = {v["name"]: icmp_echoes_received(v["netns"]) for v in victims}
        forged = [(victim[family], owner[family]) for victim in victims for family in FAMILIES]
        with ThreadPoolExecutor(max_workers=len(forged)) as pool:
            answered = list(
                pool.map(lambda d: pings(attacker["netns"], d[0], d[1], count=3), forged)
            )
        after = {v["name"]: icmp_echoes_received(v["netns"]) for v in victims}
        assert not any(answered), list(zip(forged, answered, strict=True))
        assert after == before, f"a forged echo reached a victim: {before} → {after}"
        # And the positive control of the measure: a real echo is counted.
        # (from the attacker's own address: with the forged one on eth0 too, the kernel
        # may pick either as the source of an unbound ping)
        real = victims[1]["ipv6"]
        lab.wait(
            f"{attacker['name']} to reach {real} from its own address",
            lambda: pings(attacker["netns"], real, attacker["ipv6"]),
            lambda: lab.route_state(attacker["name"], real),
        )
        assert icmp_echoes_received(victims[1]["netns"])["ipv6"] > after[victims[1]["name"]]["ipv6"]
    finally:
        for record in (attacker, owner, *victims):
            lab.container_rm(record["name"])


# ----------------------------------------------------------------------------- 4


class NamespaceRunner:
    """`speaker.firewall.Runner` for the binaries of a lab host's namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout


FOREIGN = (
    ["iptables", "-N", "FOREIGN-AUDIT"],
    ["iptables", "-A", "FOREIGN-AUDIT", "-s", "192.0.2.0/24", "-j", "RETURN"],
    ["iptables", "-I", "FORWARD", "1", "-s", "198.51.100.7", "-m", "comment", "--comment",
     "not ours", "-j", "DROP"],
    ["iptables", "-A", "FORWARD", "-j", "FOREIGN-AUDIT"],
    ["iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.0/24", "-j", "MASQUERADE"],
    ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", "203.0.113.9", "-j", "MARK",
     "--set-mark", "7"],
    ["ip6tables", "-N", "FOREIGN-AUDIT6"],
    ["ip6tables", "-A", "FOREIGN-AUDIT6", "-s", "2001:db8:dead::/48", "-j", "RETURN"],
    ["ip6tables", "-I", "FORWARD", "1", "-s", "2001:db8:beef::7", "-j", "DROP"],
    ["ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
    ["ipset", "create", "foreign-block", "hash:net"],
    ["ipset", "add", "foreign-block", "192.0.2.128/25"],
)  # fmt: skip

UNDO = (
    ["iptables", "-D", "FORWARD", "-s", "198.51.100.7", "-m", "comment", "--comment",
     "not ours", "-j", "DROP"],
    ["iptables", "-D", "FORWARD", "-j", "FOREIGN-AUDIT"],
    ["iptables", "-F", "FOREIGN-AUDIT"],
    ["iptables", "-X", "FOREIGN-AUDIT"],
    ["iptables", "-D", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
    ["iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "203.0.113.0/24", "-j", "MASQUERADE"],
    ["iptables", "-t", "mangle", "-D", "PREROUTING", "-s", "203.0.113.9", "-j", "MARK",
     "--set-mark", "7"],
    ["ip6tables", "-F", "FOREIGN-AUDIT6"],
    ["ip6tables", "-X", "FOREIGN-AUDIT6"],
    ["ip6tables", "-D", "FORWARD", "-s", "2001:db8:beef::7", "-j", "DROP"],
    ["ip6tables", "-D", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
    ["ipset", "destroy", "foreign-block"],
)  # fmt: skip

_COUNTERS = re.compile(r"\s*\[\d+:\d+\]")


def saved(netns: str, *, ours: bool) -> str:
    """Every table of both families and the ipsets, without counters; only Terrace's
    lines (`ours`) or only everything else (table headers and COMMIT dropped)."""
    lines: list[str] = []
    for argv in (["iptables-save"], ["ip6tables-save"], ["ipset", "save"]):
        text = run_in(netns, *argv).stdout
        for raw in text.splitlines():
            line = _COUNTERS.sub("", raw).rstrip()
            if not line or line.startswith(("#", "COMMIT")):
                continue
            if line.startswith("*"):
                lines.append(f"{argv[0]} {line}")
                continue
            if _is_terrace(line) == ours:
                lines.append(line)
    return "\n".join(lines)


def _is_terrace(line: str) -> bool:
    """A chain, rule or set line that Terrace owns (by name prefix or comment)."""
    if line.startswith(("create ", "add ")):
        return line.split()[1].startswith("tr-")
    return "TERRACE-" in line or "tr:" in line


def _terrace_first(netns: str) -> str:
    """'' when our jump is the first rule of FORWARD and INPUT in both families."""
    problems = []
    for tool in ("iptables", "ip6tables"):
        for chain in ("FORWARD", "INPUT"):
            rules = run_in(netns, tool, "-S", chain).stdout.splitlines()[1:]
            if not rules or "TERRACE-" not in rules[0]:
                problems.append(f"{tool} {chain}: {rules[:3]}")
    return "\n".join(problems)


def kill_speaker(lab: Lab, host: str) -> None:
    pid = lab.speaker_pid(host)
    assert pid is not None and procs.alive(pid), f"no speaker on {host}"
    os.kill(pid, signal.SIGKILL)
    lab.wait(f"the speaker of {host} to be gone", lambda: not procs.alive(pid), lambda: pid)


def test_foreign_rules_survive_reconciles_and_speaker_restarts(world: World) -> None:
    lab, host = world.lab, "h2"
    netns = lab.host_netns(host)
    net = lab.network(lab.unique("foreign"))
    peer = lab.container_add("h1", lab.unique("peer"), net["id"])
    kill_speaker(lab, host)
    made: list[dict[str, Any]] = []
    try:
        # A host as Terrace first finds it: no Terrace objects, someone else's rules.
        FirewallReconciler(NamespaceRunner(netns)).remove_all()
        assert not saved(netns, ours=True).count("TERRACE-")
        for argv in FOREIGN:
            procs.run(argv, netns=netns)
        foreign = saved(netns, ours=False)
        lab.start_speaker(host)
        made.append(lab.container_add(host, lab.unique("f"), net["id"]))  # a new revision
        lab.wait_host_applied(host)
        for _ in range(4):  # many reconciles: endpoints and rules come and go
            made.append(lab.container_add(host, lab.unique("f"), net["id"]))
            rule = world.tenants["t0"].post(
                f"/v1/networks/{world.networks['a0']}/rules",
                {"from_network": net["id"], "protocol": "tcp", "ports": [PORT]},
            )
            lab.wait_host_applied(host)
            world.tenants["t0"].delete(f"/v1/rules/{rule['id']}")
            lab.container_rm(made.pop()["name"])
            lab.wait_host_applied(host)
        kill_speaker(lab, host)
        lab.start_speaker(host)
        made.append(lab.container_add(host, lab.unique("f"), net["id"]))
        lab.wait_host_applied(host)
        lab.wait("our jumps to be first", lambda: not _terrace_first(netns),
                 lambda: _terrace_first(netns))  # fmt: skip
        after = saved(netns, ours=False)
        assert after == foreign, f"foreign rules changed:\nbefore:\n{foreign}\nafter:\n{after}"
        for record in made:  # and the policy is back in force on the host
            lab.wait_ping(peer["name"], record["ipv4"])
            lab.wait_ping(peer["name"], record["ipv6"])
    finally:
        for argv in UNDO:
            procs.run(argv, netns=netns, check=False)
        pid = lab.speaker_pid(host)
        if pid is None or not procs.alive(pid):
            lab.start_speaker(host)
        for record in (peer, *made):
            lab.container_rm(record["name"])


# ----------------------------------------------------------------------------- 5


def test_endpoint_churn_changes_no_rule_on_other_hosts(world: World) -> None:
    lab, busy = world.lab, "h3"
    others = [h for h in HOSTS if h != busy]
    for host in HOSTS:
        lab.wait_host_applied(host)
    before = {h: saved(lab.host_netns(h), ours=True) for h in HOSTS}
    changed_busy = False
    made: list[dict[str, Any]] = []
    try:
        for round_ in range(3):
            made.append(lab.container_add(busy, lab.unique("churn"), world.networks["a0"]))
            made.append(lab.container_add(busy, lab.unique("churn"), world.networks["b1"]))
            lab.wait_host_applied(busy)
            changed_busy |= saved(lab.host_netns(busy), ours=True) != before[busy]
            lab.container_rm(made.pop(0)["name"])
            lab.wait_host_applied(busy)
            del round_
        while made:
            lab.container_rm(made.pop()["name"])
        lab.wait_host_applied(busy)
    finally:
        for record in made:
            lab.container_rm(record["name"])
    for host in others:
        lab.wait_host_applied(host)
    assert changed_busy, "the endpoints never showed on the busy host: the test saw nothing"
    after = {h: saved(lab.host_netns(h), ours=True) for h in others}
    for host in others:
        assert after[host] == before[host], (
            f"{host}'s Terrace rules changed while endpoints came and went on {busy}:\n"
            + _diff(before[host], after[host])
        )


def _diff(a: str, b: str) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=1))


# ----------------------------------------------------------------------------- 6


def explain(world: World, src: str, dst: str, *extra: str, token: str | None = None,
            as_json: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    lab = world.lab
    argv = [*procs.terrace_command(), "explain", src, dst, *extra,
            "--url", lab.paths.url, "--token", token or lab.admin_token]  # fmt: skip
    if as_json:
        argv.append("--json")
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


def explain_json(world: World, src: str, dst: str, *extra: str) -> dict[str, Any]:
    done = explain(world, src, dst, *extra)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_terrace_explain_in_the_lab(world: World) -> None:
    c = world.containers
    for host in HOSTS:
        world.lab.wait_host_applied(host)

    same = explain_json(world, c["a0@h1"]["ipv4"], c["a0@h3"]["ipv4"])
    assert (same["allowed"], same["reason"]) == (True, "same-network"), same
    assert same["dst_network"]["id"] == world.networks["a0"], same
    live = same.get("destination_host")
    assert live and live["host"] == "h3" and live["in_sync"] is True, same

    by_rule = explain_json(
        world, c["a0@h1"]["ipv6"], c["b0@h3"]["ipv6"], "--proto", "tcp", "--port", str(PORT)
    )
    assert (by_rule["allowed"], by_rule["reason"]) == (True, "rule"), by_rule
    assert by_rule["rule_id"] == world.rule_ids["cross-tenant-tcp"], by_rule
    assert by_rule["destination_host"]["in_sync"] is True, by_rule

    denied = explain_json(world, c["a0@h1"]["ipv4"], c["c1@h4"]["ipv4"])
    assert (denied["allowed"], denied["reason"]) == (False, "default-deny"), denied
    assert denied["destination_host"]["host"] == "h4", denied

    # Ping under the cross-tenant tcp rule: denied, the rule named as partial.
    partial = explain_json(world, c["a0@h1"]["ipv4"], c["b0@h3"]["ipv4"], "--proto", "icmp")
    assert partial["allowed"] is False, partial
    assert world.rule_ids["cross-tenant-tcp"] in partial["partial_rules"], partial

    # The words, by endpoint name, and the exit status a script can test.
    words = explain(world, c["a0@h1"]["name"], c["c1@h4"]["name"], as_json=False)
    assert words.returncode == 3 and words.stdout.startswith("DENIED"), words
    assert "destination host h4" in words.stdout and "in sync" in words.stdout, words.stdout
    words = explain(world, c["a0@h1"]["name"], c["a1@h4"]["name"], as_json=False)
    assert words.returncode == 0 and words.stdout.startswith("ALLOWED"), words

    # A tenant asks about its own traffic; a third tenant's question answers 404.
    mine = explain(world, c["a0@h1"]["ipv4"], c["b0@h3"]["ipv4"],
                   token=_token(world, "t1"))  # fmt: skip
    assert mine.returncode == 0, mine.stderr
    foreign = explain(world, c["a0@h1"]["ipv4"], c["b0@h3"]["ipv4"], token=_token(world, "t2"))
    assert foreign.returncode != 0 and "404" in foreign.stderr + foreign.stdout, foreign


def _token(world: World, tenant: str) -> str:
    return str(world.tenants[tenant].token)
