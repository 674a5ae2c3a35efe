"""`terrace lab up` and `terrace lab down`: a whole fabric on one machine, and its removal.

`up` builds, in order: a namespace per node (forwarding on, DAD off), a veth per link
with the plan's addresses, loopbacks, the hosts' default routes to their leaves; the
controller (root namespace, unix socket + TCP); the fabric applied and a token file per
host; FRR per spine and leaf with the controller's config; the config sync
(`terrace lab sync --watch`); a speaker per host. It returns once every BGP session of
the fabric is Established. Any failure prints the step, the node and the last log
lines, and removes everything built so far.

`down` is idempotent and works after a crash: it finds processes by pidfile, by the run
directory in their command line and inside the lab's namespaces, stops them, and
deletes the namespaces named after the lab.

Lab namespaces are linked only to each other, never to the machine's own network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fabric.plan import FabricPlan, plan_fabric
from fabric.topology import Topology, dump_topology, load_topology
from lab import procs, routers
from lab.api import LabApi
from lab.paths import (
    NETNS_DIR,
    LabError,
    LabPaths,
    LabState,
    check_lab_name,
    node_netns,
    running_labs,
)
from speaker.client import ApiError, ControllerUnavailable

Say = Callable[[str], None]
SESSION_DEADLINE = 90.0
CONTROLLER_DEADLINE = 60.0


@dataclass(frozen=True, slots=True)
class UpOptions:
    """How to bring a lab up; `listen` '' means no TCP listener."""

    name: str | None = None
    database_url: str | None = None
    data_dir: Path | None = None
    listen: str = "127.0.0.1:8080"
    session_deadline: float = SESSION_DEADLINE


def read_topology(file: Path, name: str | None = None) -> Topology:
    try:
        topology = load_topology(file.read_text())
    except OSError as exc:
        raise LabError(f"cannot read {file}: {exc.strerror}") from None
    if name:
        topology = dataclasses.replace(topology, name=check_lab_name(name))
    return topology


# ---------------------------------------------------------------------------- up


def up(file: Path, options: UpOptions, say: Say = print) -> LabState:
    """Build the lab of `file`; on failure tear it down and raise `LabError`."""
    topology = read_topology(file, options.name)
    paths = LabPaths.of(topology.name)
    if paths.state_file.exists() or _lab_namespaces(paths.name, topology):
        raise LabError(
            f"lab {paths.name} is already up (or left over); "
            f"run `terrace lab down --name {paths.name}` first"
        )
    plan = plan_fabric(topology)
    builder = _Builder(file, topology=topology, plan=plan, paths=paths, options=options, say=say)
    try:
        builder.build()
    except BaseException as exc:
        say(f"lab {paths.name}: FAILED: {exc}")
        for line in builder.failure_logs():
            say(line)
        say(f"lab {paths.name}: removing what was built")
        down(paths.name, topology=topology, say=lambda _m: None)
        if isinstance(exc, LabError):
            raise
        raise LabError(f"lab {paths.name}: {type(exc).__name__}: {exc}") from exc
    return builder.state


class _Builder:
    def __init__(
        self,
        file: Path,
        *,
        topology: Topology,
        plan: FabricPlan,
        paths: LabPaths,
        options: UpOptions,
        say: Say,
    ) -> None:
        self.topology = topology
        self.plan = plan
        self.paths = paths
        self.options = options
        self.say = say
        data_dir = options.data_dir or paths.default_data_dir
        self.state = LabState(
            name=paths.name,
            topology_file=str(file.resolve()),
            topology_text=dump_topology(topology),
            data_dir=str(data_dir.resolve()),
            listen=options.listen or None,
            admin_token_file=str(data_dir.resolve() / "admin.token"),
        )
        self.logs: list[Path] = []
        self.api: LabApi | None = None

    def build(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("namespaces", self.namespaces),
            ("links and addresses", self.links),
            ("controller", self.controller),
            ("fabric applied, host tokens", self.fabric),
            ("FRR on spines and leaves", self.frr),
            ("fabric sync", self.sync),
            ("speakers on hosts", self.speakers),
            ("BGP sessions Established", self.sessions),
        ]
        started = time.monotonic()
        for index, (label, step) in enumerate(steps, start=1):
            self.say(f"[{index}/{len(steps)}] {label} …")
            step()
        self.say(f"lab {self.paths.name} is up in {time.monotonic() - started:.1f} s")

    def failure_logs(self) -> list[str]:
        lines: list[str] = []
        for log in self.logs[-3:]:
            lines.append(f"  last lines of {log}:")
            lines.append(procs.log_tail(log))
        return lines

    # -- steps

    def namespaces(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.paths.pids, self.paths.logs, self.paths.tokens):
            directory.mkdir(parents=True, exist_ok=True)
        self.state.save(self.paths)
        for node in self.topology.nodes.values():
            netns = node_netns(self.paths.name, node.name)
            make_namespace(netns, forwarding=True)
            self.state.namespaces.append(netns)
            self.state.save(self.paths)

    def links(self) -> None:
        for link in self.plan.links:
            a_ns, b_ns = node_netns(self.paths.name, link.a), node_netns(self.paths.name, link.b)
            procs.run(
                ["ip", "link", "add", link.a_interface, "netns", a_ns, "type", "veth",
                 "peer", "name", link.b_interface, "netns", b_ns],
            )  # fmt: skip
            for netns, interface, addresses in (
                (a_ns, link.a_interface, (link.a_address4, link.a_address6)),
                (b_ns, link.b_interface, (link.b_address4, link.b_address6)),
            ):
                for address in addresses:
                    _add_address(netns, interface, address)
                procs.run(["ip", "-n", netns, "link", "set", interface, "up"])
        for name, router in self.plan.routers.items():
            netns = node_netns(self.paths.name, name)
            for address in (router.loopback4, router.loopback6):
                _add_address(netns, "lo", address)
        for name, host in self.plan.hosts.items():
            netns = node_netns(self.paths.name, name)
            _add_address(netns, "lo", f"{host.router_id}/32")
            if host.loopback6:
                _add_address(netns, "lo", host.loopback6)
            self._host_default_routes(name)

    def _host_default_routes(self, host: str) -> None:
        """Hosts learn nothing from BGP: a default route (ECMP) to their leaves."""
        netns = node_netns(self.paths.name, host)
        uplinks = self.plan.interfaces_of(host)
        for family, attr in ((4, "peer_address4"), (6, "peer_address6")):
            hops: list[str] = []
            for iface in uplinks:
                gateway = getattr(iface, attr).split("/")[0]
                hops += ["nexthop", "via", gateway, "dev", iface.interface]
            procs.run(["ip", f"-{family}", "-n", netns, "route", "replace", "default", *hops])

    def controller(self) -> None:
        data_dir = Path(self.state.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            *procs.terrace_command(),
            "controller",
            "--unix",
            str(self.paths.socket),
            "--listen",
            self.options.listen,
            "--data-dir",
            str(data_dir),
        ]
        if self.options.database_url:
            argv += ["--database-url", self.options.database_url]
        self.logs.append(self.paths.log("controller"))
        # the lab's admin token is the one in its data dir, whatever this shell exports
        pid = procs.spawn(self.paths, "controller", argv, env={"TERRACE_ADMIN_TOKEN": ""})
        wait_for_controller(self.paths, pid)
        self.api = LabApi(self.paths.url, self.state.admin_token)
        if self.options.listen:
            where = f"http://{self.options.listen}/ and unix:{self.paths.socket}"
            self.say(f"      controller on {where}")

    def fabric(self) -> None:
        assert self.api is not None
        report = self.api.put_text("/v1/fabric", self.state.topology_text)
        tokens: dict[str, str] = report.get("host_tokens") or {}
        for host in self.plan.hosts:
            token = tokens.get(host) or self.api.post(f"/v1/hosts/{host}/token")["token"]
            token_file = self.paths.token_file(host)
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)

    def frr(self) -> None:
        assert self.api is not None
        for router in self.plan.routers:
            self.logs.append(routers.log_path(self.paths, router))
            config = self.api.get(f"/v1/fabric/routers/{router}/frr.conf")
            localized = routers.localize(config, routers.log_path(self.paths, router))
            try:
                routers.start_router(self.paths, router, localized)
            except LabError as exc:
                raise LabError(f"router {router}: {exc}") from None

    def sync(self) -> None:
        self.logs.append(self.paths.log("sync"))
        start_sync(self.paths)

    def speakers(self) -> None:
        for host in self.plan.hosts:
            self.logs.append(self.paths.log(f"speaker-{host}"))
            start_speaker(self.paths, host)

    def sessions(self) -> None:
        wait_for_sessions(self.paths, self.plan, self.options.session_deadline, self.say)


def start_sync(paths: LabPaths) -> int:
    """Start `terrace lab sync --watch` for the lab (also to restart it); its pid."""
    argv = [*procs.terrace_command(), "lab", "sync", "--name", paths.name, "--watch"]
    return procs.spawn(paths, "sync", argv)


def start_speaker(paths: LabPaths, host: str) -> int:
    """Start the speaker of `host` in its namespace (also to restart one); its pid."""
    argv = [
        *procs.terrace_command(),
        "speaker",
        "--controller",
        paths.url,
        "--host",
        host,
        "--token-file",
        str(paths.token_file(host)),
        "--runtime-dir",
        str(paths.speaker_dir(host)),
    ]
    return procs.spawn(paths, f"speaker-{host}", argv, netns=node_netns(paths.name, host))


def make_namespace(netns: str, *, forwarding: bool) -> None:
    procs.run(["ip", "netns", "add", netns])
    procs.run(["ip", "-n", netns, "link", "set", "lo", "up"])
    sysctls = [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ]
    if forwarding:
        sysctls += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
    procs.run(["sysctl", "-q", "-w", *sysctls], netns=netns)


def _add_address(netns: str, interface: str, address: str) -> None:
    extra = ["nodad"] if ipaddress.ip_interface(address).version == 6 else []
    procs.run(["ip", "-n", netns, "addr", "replace", address, "dev", interface, *extra])


def wait_for_controller(
    paths: LabPaths, pid: int | None = None, deadline: float = CONTROLLER_DEADLINE
) -> None:
    """Until the lab's controller answers `/healthz` ok (and while `pid` lives)."""
    end = time.monotonic() + deadline
    seen = "no answer yet"
    while time.monotonic() < end:
        if pid is not None and not procs.alive(pid):
            raise LabError(f"the controller exited: see {paths.log('controller')}")
        if paths.socket.exists():
            try:
                health = LabApi(paths.url, None).get("/healthz")
                if health.get("status") == "ok":
                    return
                seen = str(health)
            except (ApiError, ControllerUnavailable) as exc:
                seen = str(exc)
        time.sleep(0.2)
    raise LabError(f"the controller was not healthy within {deadline:g} s: {seen}")


def expected_sessions(plan: FabricPlan, router: str) -> int:
    """BGP sessions of a router: one IPv4 and one IPv6 per link."""
    return 2 * len(plan.interfaces_of(router))


def session_report(paths: LabPaths, plan: FabricPlan) -> dict[str, dict[str, str]]:
    """router → {family/peer: state}; a router that cannot answer shows its error."""
    report: dict[str, dict[str, str]] = {}
    for router in plan.routers:
        try:
            sessions = routers.bgp_sessions(paths, router)
            report[router] = {k: str(v.get("state")) for k, v in sessions.items()}
        except LabError as exc:
            report[router] = {"error": str(exc)}
    return report


def wait_for_sessions(paths: LabPaths, plan: FabricPlan, deadline: float, say: Say) -> None:
    end = time.monotonic() + deadline
    report: dict[str, dict[str, str]] = {}
    while time.monotonic() < end:
        report = session_report(paths, plan)
        missing = _not_established(plan, report)
        if not missing:
            total = sum(len(s) for s in report.values())
            say(f"      {total} sessions Established on {len(report)} routers")
            return
        time.sleep(0.5)
    lines = [f"{r}: {s}" for r, s in sorted(_not_established(plan, report).items())]
    raise LabError(
        f"BGP sessions not Established within {deadline:g} s:\n    " + "\n    ".join(lines)
    )


def _not_established(plan: FabricPlan, report: dict[str, dict[str, str]]) -> dict[str, str]:
    missing: dict[str, str] = {}
    for router, sessions in report.items():
        down_ = {k: v for k, v in sessions.items() if v != "Established"}
        if down_ or len(sessions) < expected_sessions(plan, router):
            missing[router] = (
                f"{len(sessions) - len(down_)}/{expected_sessions(plan, router)} up; "
                + ", ".join(f"{k} {v}" for k, v in sorted(down_.items()))
            )
    return missing


# ---------------------------------------------------------------------------- down


def down(name: str, *, topology: Topology | None = None, say: Say = print) -> None:
    """Stop every process of lab `name` and delete its namespaces and run directory."""
    paths = LabPaths.of(name)
    if topology is None:
        topology = _recorded_topology(paths)
    namespaces = _lab_namespaces(name, topology)
    pids = _lab_pids(paths, namespaces)
    if pids:
        say(f"lab {name}: stopping {len(pids)} processes")
    procs.stop(pids)
    # Processes started inside a namespace after the first sweep (a speaker's ExaBGP).
    procs.stop(_lab_pids(paths, namespaces), grace=2)
    for netns in namespaces:
        procs.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(Path("/var/run/frr") / netns, ignore_errors=True)
    if namespaces:
        say(f"lab {name}: deleted {len(namespaces)} namespaces")
    shutil.rmtree(paths.root, ignore_errors=True)
    say(f"lab {name} is down")


def _recorded_topology(paths: LabPaths) -> Topology | None:
    with contextlib.suppress(LabError, ValueError, OSError):
        return load_topology(LabState.load(paths).topology_text)
    return None


def _lab_namespaces(name: str, topology: Topology | None) -> list[str]:
    """The lab's namespaces present now: its nodes, its containers, and (with no
    topology known) every `name-*` namespace that no other running lab claims."""
    present = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    containers = node_netns(name, "c-")
    mine = {n for n in present if n.startswith(containers)}
    if topology is not None:
        mine |= {node_netns(name, n) for n in topology.nodes} & set(present)
        return sorted(mine)
    others = [lab for lab in running_labs() if lab != name and lab.startswith(f"{name}-")]
    for netns in present:
        if netns.startswith(f"{name}-") and not any(netns.startswith(f"{o}-") for o in others):
            mine.add(netns)
    return sorted(mine)


def _lab_pids(paths: LabPaths, namespaces: list[str]) -> set[int]:
    pids: set[int] = set()
    if paths.pids.is_dir():
        for pidfile in paths.pids.glob("*.pid"):
            pid = procs.pidfile_pid(pidfile)
            if pid is not None and procs.alive(pid):
                pids.add(pid)
    pids |= procs.pids_matching(f"{paths.root}/")
    for netns in namespaces:
        pids |= procs.netns_pids(netns)
        pids |= procs.pids_matching(f"-N {netns} ")
    pids.discard(os.getpid())
    return pids
