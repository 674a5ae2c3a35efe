"""A small piece of a planned fabric in network namespaces, for the FRR config lab tests.

`mini_fabric` builds the chosen nodes of a `FabricPlan`: one namespace per node, a veth
for every planned link between chosen nodes, zebra + bgpd with the given config on
routers, ExaBGP on hosts announcing the given prefixes to their leaves. Everything it
starts is stopped and every namespace removed on exit, also when the test fails.
(The full lab runner lives in `lab/`; this is only what the config tests need.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fabric.plan import FabricPlan

FRR_DAEMONS = Path("/usr/lib/frr")
FRR_RUN = Path("/var/run/frr")
T = TypeVar("T")


def missing(what: str) -> None:
    """Fail under CI=true, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} is not available")


def require_lab_tools(*, exabgp: bool) -> None:
    if os.geteuid() != 0:
        missing("root (network namespaces)")
    if not (FRR_DAEMONS / "bgpd").exists() or shutil.which("vtysh") is None:
        missing("FRR (apt install frr)")
    if exabgp and shutil.which("exabgp") is None:
        missing("ExaBGP (pip install exabgp)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
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


def route_prefixes(doc: Any) -> set[str]:
    """Prefixes of a `show bgp ... json` (table, routes, received or advertised routes)."""
    if not isinstance(doc, dict):
        return set()
    for key in ("routes", "receivedRoutes", "advertisedRoutes"):
        if isinstance(doc.get(key), dict):
            return set(doc[key])
    return set()


@dataclass
class MiniFabric:
    plan: FabricPlan
    namespaces: dict[str, str] = field(default_factory=dict)

    def vtysh_json(self, node: str, command: str) -> Any:
        result = run("vtysh", "-N", self.namespaces[node], "-c", command)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            return {"error": result.stdout + result.stderr}


@contextmanager
def mini_fabric(
    plan: FabricPlan,
    nodes: Sequence[str],
    configs: Mapping[str, str],
    announcements: Mapping[str, Sequence[str]],
    workdir: Path,
) -> Iterator[MiniFabric]:
    """Build `nodes` of `plan`; `configs` maps a router to its frr.conf text and
    `announcements` a host to the prefixes its ExaBGP announces."""
    require_lab_tools(exabgp=bool(announcements))
    workdir.chmod(0o755)
    tag = uuid.uuid4().hex[:6]
    fabric = MiniFabric(plan, {node: f"tf{tag}{i}" for i, node in enumerate(nodes)})
    with ExitStack() as stack:
        for ns in fabric.namespaces.values():
            stack.callback(run, "ip", "netns", "del", ns)
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        _wire(fabric)
        for router, text in configs.items():
            stack.callback(_stop_frr, fabric.namespaces[router])
            _start_frr(fabric.namespaces[router], text, workdir / f"{router}.conf", workdir)
        for host, prefixes in announcements.items():
            _start_exabgp(stack, fabric, host, prefixes, workdir)
        yield fabric


def _wire(fabric: MiniFabric) -> None:
    """A veth per planned link between chosen nodes; host ends get their addresses here
    (zebra sets the routers' from their config)."""
    ns = fabric.namespaces
    for link in fabric.plan.links:
        if link.a not in ns or link.b not in ns:
            continue
        subprocess.run(
            ["ip", "link", "add", link.a_interface, "netns", ns[link.a], "type", "veth",
             "peer", "name", link.b_interface, "netns", ns[link.b]],
            check=True,
        )  # fmt: skip
        for node, iface, addresses in (
            (link.a, link.a_interface, (link.a_address4, link.a_address6)),
            (link.b, link.b_interface, (link.b_address4, link.b_address6)),
        ):
            if node in fabric.plan.hosts:
                for address in addresses:
                    nodad = ["nodad"] if ":" in address else []
                    subprocess.run(
                        ["ip", "-n", ns[node], "addr", "add", address, "dev", iface, *nodad],
                        check=True,
                    )
            subprocess.run(["ip", "-n", ns[node], "link", "set", iface, "up"], check=True)


def _start_frr(ns: str, text: str, config: Path, workdir: Path) -> None:
    config.write_text(text)
    config.chmod(0o644)
    empty = workdir / "empty.conf"
    empty.write_text("")
    empty.chmod(0o644)
    rundir = FRR_RUN / ns
    rundir.mkdir(parents=True)
    shutil.chown(rundir, "frr", "frr")
    for daemon in ("zebra", "bgpd"):
        subprocess.run(
            ["ip", "netns", "exec", ns, str(FRR_DAEMONS / daemon), "-d", "-N", ns,
             "-F", "datacenter", "-f", str(empty), "-i", str(rundir / f"{daemon}.pid")],
            check=True,
        )  # fmt: skip

    def daemons_up() -> tuple[bool, str]:
        r = run("vtysh", "-N", ns, "-c", "show daemons")
        return r.returncode == 0 and "bgpd" in r.stdout, r.stdout + r.stderr

    wait_for(f"zebra and bgpd in {ns}", daemons_up, timeout=20)
    applied = run("vtysh", "-N", ns, "-f", str(config))
    assert applied.returncode == 0, applied.stdout + applied.stderr


def _stop_frr(ns: str) -> None:
    rundir = FRR_RUN / ns
    for daemon in ("bgpd", "zebra"):
        pid = rundir / f"{daemon}.pid"
        if pid.exists():
            run("kill", pid.read_text().strip())
    shutil.rmtree(rundir, ignore_errors=True)


def exabgp_config(plan: FabricPlan, host: str, prefixes: Sequence[str]) -> str:
    """One neighbor block per planned session of `host`, announcing `prefixes` of that
    session's family with the host as next hop."""
    router_id = plan.hosts[host].router_id
    blocks = []
    for peer in plan.peers_for_host(host):
        routes = "".join(
            f"        route {p} next-hop {peer.local_address};\n"
            for p in prefixes
            if (":" in p) == (peer.family == 6)
        )
        blocks.append(
            f"neighbor {peer.peer_address} {{\n"
            f"    router-id {router_id};\n"
            f"    local-address {peer.local_address};\n"
            f"    local-as {peer.local_asn};\n"
            f"    peer-as {peer.peer_asn};\n"
            f"    hold-time {peer.hold_time};\n"
            f"    family {{ ipv{peer.family} unicast; }}\n"
            f"    static {{\n{routes}    }}\n"
            f"}}\n"
        )
    return "".join(blocks)


def _start_exabgp(
    stack: ExitStack, fabric: MiniFabric, host: str, prefixes: Sequence[str], workdir: Path
) -> None:
    config = workdir / f"{host}.exabgp.conf"
    config.write_text(exabgp_config(fabric.plan, host, prefixes))
    config.chmod(0o644)
    log = workdir / f"{host}.exabgp.log"
    env = {**os.environ, "exabgp.daemon.user": "root", "exabgp.api.cli": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", fabric.namespaces[host], "exabgp", "server", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    stack.callback(_print_tail, log)
    stack.callback(_stop_process, process)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _print_tail(log: Path) -> None:
    if log.exists():
        print(f"{log.name} tail:\n" + "\n".join(log.read_text().splitlines()[-20:]))
