"""`terrace lab export FILE OUTDIR`: what `containerlab deploy` needs beside the file.

Writes, relative to OUTDIR (the directory the containerlab file's `binds` are read
from): `frr/<router>.conf` for each spine and leaf (rendered by `fabric.frr` with no
allocations yet: the leaves' host filters deny everything until the controller's sync
replaces the file), `frr/daemons` (zebra and bgpd only, `-F datacenter`), and per host
`speaker/<host>.env` (the speaker's settings) and `speaker/<host>.sh` (underlay
addresses and default routes, for the node's `exec`), plus a copy of the topology.
Every bind source in the file must be among the files written; a bind it cannot satisfy
is an error that names the node.

The content is computed by `export_files` (pure); `export_lab` only writes it.
"""

from __future__ import annotations

from pathlib import Path

from fabric.frr import render_router_config
from fabric.plan import FabricPlan, plan_fabric
from fabric.topology import Topology, dump_topology, load_topology
from lab.paths import LabError

DAEMONS = """\
# FRR daemons for a Terrace spine or leaf (written by `terrace lab export`).
zebra=yes
bgpd=yes
ospfd=no
ospf6d=no
ripd=no
ripngd=no
isisd=no
pimd=no
ldpd=no
nhrpd=no
eigrpd=no
babeld=no
sharpd=no
pbrd=no
bfdd=no
fabricd=no
vrrpd=no
pathd=no
vtysh_enable=yes
frr_profile="datacenter"
zebra_options="  -A 127.0.0.1 -s 90000000"
bgpd_options="   -A 127.0.0.1"
"""

CONTROLLER_URL = "http://controller:8080"


def export_files(topology: Topology, plan: FabricPlan) -> dict[str, str]:
    """Relative path → content of every file containerlab needs for this topology."""
    files: dict[str, str] = {"frr/daemons": DAEMONS}
    for router in plan.routers:
        files[f"frr/{router}.conf"] = render_router_config(plan, router, {})
    for host in plan.hosts:
        files[f"speaker/{host}.env"] = _speaker_env(host)
        files[f"speaker/{host}.sh"] = _host_setup(plan, host)
    files[f"{topology.name}.clab.yml"] = dump_topology(topology)
    _check_binds(topology, files)
    return files


def _speaker_env(host: str) -> str:
    return (
        f"# terrace speaker settings for host {host}\n"
        f"TERRACE_CONTROLLER={CONTROLLER_URL}\n"
        f"TERRACE_HOST={host}\n"
        f"TERRACE_TOKEN_FILE=/etc/terrace/{host}.token\n"
    )


def _host_setup(plan: FabricPlan, host: str) -> str:
    """Underlay addresses and default routes of a host (its leaves are its gateways)."""
    lines = ["#!/bin/sh", f"# underlay of host {host} (written by `terrace lab export`)", "set -e"]
    info = plan.hosts[host]
    lines.append(f"ip addr replace {info.router_id}/32 dev lo")
    if info.loopback6:
        lines.append(f"ip addr replace {info.loopback6} dev lo")
    hops4, hops6 = [], []
    for iface in plan.interfaces_of(host):
        lines.append(f"ip addr replace {iface.address4} dev {iface.interface}")
        lines.append(f"ip addr replace {iface.address6} dev {iface.interface} nodad")
        lines.append(f"ip link set {iface.interface} up")
        hops4.append(f"nexthop via {iface.peer_address4.split('/')[0]} dev {iface.interface}")
        hops6.append(f"nexthop via {iface.peer_address6.split('/')[0]} dev {iface.interface}")
    lines.append(f"ip -4 route replace default {' '.join(hops4)}")
    lines.append(f"ip -6 route replace default {' '.join(hops6)}")
    lines.append("sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
    return "\n".join(lines) + "\n"


def _check_binds(topology: Topology, files: dict[str, str]) -> None:
    for node in topology.nodes.values():
        for bind in node.binds:
            source = bind.split(":", 1)[0]
            if source not in files:
                raise LabError(
                    f"node {node.name}: bind {bind!r} needs {source}, which "
                    f"`terrace lab export` does not write"
                )


def export_lab(topology_text: str, outdir: Path) -> list[Path]:
    """Write `export_files` under `outdir`; returns the paths written."""
    topology = load_topology(topology_text)
    files = export_files(topology, plan_fabric(topology))
    written = []
    for relative, content in sorted(files.items()):
        path = outdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        if relative.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
