"""`terrace lab export`: everything containerlab needs is written and agrees with the plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fabric.plan import plan_fabric
from fabric.topology import Node, load_topology
from lab.export import export_files, export_lab
from lab.paths import LabError

TOPOLOGIES = sorted((Path(__file__).resolve().parents[2] / "lab" / "topologies").glob("*.yml"))


@pytest.mark.parametrize("file", TOPOLOGIES, ids=lambda p: p.name)
def test_export_is_complete_and_follows_the_plan(file: Path, tmp_path: Path) -> None:
    topology = load_topology(file.read_text())
    plan = plan_fabric(topology)
    written = {p.relative_to(tmp_path).as_posix() for p in export_lab(file.read_text(), tmp_path)}
    for node in topology.nodes.values():
        for bind in node.binds:
            source = bind.split(":", 1)[0]
            assert source in written, f"{node.name}: {bind}"
            assert (tmp_path / source).read_text()
    daemons = (tmp_path / "frr/daemons").read_text()
    assert "zebra=yes" in daemons and "bgpd=yes" in daemons
    for name, router in plan.routers.items():
        config = (tmp_path / f"frr/{name}.conf").read_text()
        assert f"router bgp {router.asn}\n" in config
        assert f"bgp router-id {router.router_id}\n" in config
        for iface in plan.interfaces_of(name):
            assert f"interface {iface.interface}\n" in config
            assert f" ip address {iface.address4}\n" in config
            assert f" neighbor {iface.peer_address4.split('/')[0]} remote-as " in config
            assert f" neighbor {iface.peer_address6.split('/')[0]} remote-as " in config
    for name in plan.hosts:
        env = (tmp_path / f"speaker/{name}.env").read_text()
        assert f"TERRACE_HOST={name}\n" in env
        setup = (tmp_path / f"speaker/{name}.sh").read_text()
        for iface in plan.interfaces_of(name):
            assert f"ip addr replace {iface.address4} dev {iface.interface}" in setup
            assert f"nexthop via {iface.peer_address4.split('/')[0]}" in setup
            assert f"nexthop via {iface.peer_address6.split('/')[0]}" in setup
        assert (tmp_path / f"speaker/{name}.sh").stat().st_mode & 0o111
    assert load_topology((tmp_path / f"{topology.name}.clab.yml").read_text()) == topology


def test_a_bind_export_cannot_satisfy_is_named() -> None:
    topology = load_topology(TOPOLOGIES[0].read_text())
    spine = topology.spines()[0]
    odd: Node = dataclasses.replace(spine, binds=(*spine.binds, "secrets/x.key:/etc/x.key"))
    broken = dataclasses.replace(topology, nodes={**topology.nodes, spine.name: odd})
    with pytest.raises(LabError, match=rf"node {spine.name}: bind 'secrets/x.key"):
        export_files(broken, plan_fabric(broken))
