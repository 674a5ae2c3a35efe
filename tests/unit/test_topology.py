"""Reading and writing containerlab topology files, and the errors for bad ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.topology import (
    Link,
    LinkEnd,
    TopologyError,
    dump_topology,
    load_topology,
    topology_from_document,
)
from tests.unit.fabric_samples import clos, shuffled

TOPOLOGIES = Path(__file__).resolve().parents[2] / "lab" / "topologies"
SHIPPED = ["two-rack.clab.yml", "four-rack.clab.yml"]


def _text(name: str) -> str:
    return (TOPOLOGIES / name).read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_round_trips(name: str) -> None:
    topology = load_topology(_text(name))
    again = load_topology(dump_topology(topology))
    assert again == topology
    assert yaml.safe_load(dump_topology(topology)) == yaml.safe_load(_text(name))


def test_two_rack_shape() -> None:
    t = load_topology(_text("two-rack.clab.yml"))
    assert t.name == "two-rack"
    assert [n.name for n in t.spines()] == ["spine1", "spine2"]
    assert [n.name for n in t.leaves()] == ["leaf1", "leaf2"]
    assert len(t.hosts()) == 4
    assert t.racks() == ("r1", "r2")
    assert all(len(t.hosts_in(rack)) == 2 for rack in t.racks())
    assert t.leaves_of("h1") == ("leaf1",)
    spine = t.nodes["spine1"]
    assert (spine.kind, spine.image) == ("linux", "quay.io/frrouting/frr:8.4.1")


def test_four_rack_shape() -> None:
    t = load_topology(_text("four-rack.clab.yml"))
    assert len(t.spines()) == 2
    assert len(t.leaves()) == 4
    assert all(len(t.hosts_in(rack)) == 3 for rack in t.racks())
    assert len(t.racks()) == 4


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_names_fit_interface_limits(name: str) -> None:
    t = load_topology(_text(name))
    # The lab names veths after `<node>-<interface>`; Linux allows 15 characters.
    for link in t.links:
        for end in link.ends:
            assert len(f"{end.node}-{end.interface}") <= 15


def _doc() -> dict[str, Any]:
    return {
        "name": "lab",
        "mgmt": {"network": "clab"},
        "topology": {
            "kinds": {"linux": {"image": "alpine:3"}},
            "nodes": {
                "s1": {"kind": "linux", "labels": {"terrace.role": "spine"}},
                "l1": {
                    "kind": "linux",
                    "image": "quay.io/frrouting/frr:8.4.1",
                    "binds": ["a:/b"],
                    "exec": ["ip link"],
                    "labels": {"terrace.role": "leaf", "terrace.rack": "r1", "team": "x"},
                },
                "h1": {"labels": {"terrace.role": "host", "terrace.rack": "r1"}},
            },
            "links": [
                {"endpoints": ["s1:eth1", "l1:eth1"], "mtu": 9000},
                {"endpoints": ["l1:eth2", "h1:eth1"]},
            ],
        },
    }


def test_unknown_keys_survive_the_round_trip() -> None:
    doc = _doc()
    t = topology_from_document(doc)
    assert t.nodes["l1"].extra == {"exec": ["ip link"]}
    assert t.nodes["l1"].labels["team"] == "x"
    assert t.links[0] == Link(LinkEnd("s1", "eth1"), LinkEnd("l1", "eth1"), {"mtu": 9000})
    assert yaml.safe_load(dump_topology(t)) == doc


def test_dump_writes_endpoints_in_flow_style() -> None:
    text = dump_topology(topology_from_document(_doc()))
    assert 'endpoints: ["s1:eth1", "l1:eth1"]' in text


_HOST = {"labels": {"terrace.role": "host", "terrace.rack": "r1"}}
_LEAF2 = {"labels": {"terrace.role": "leaf", "terrace.rack": "r2"}}

# Each bad file: (nodes to add or replace, links to add, labels to drop: node -> label).
_BROKEN: dict[str, tuple[dict[str, Any], list[list[str]], dict[str, str]]] = {
    "unknown role": ({"h1": {"labels": {"terrace.role": "router"}}}, [], {}),
    "host without rack": ({}, [], {"h1": "terrace.rack"}),
    "leaf without rack": ({}, [], {"l1": "terrace.rack"}),
    "unknown node": ({}, [["l1:eth3", "h9:eth1"]], {}),
    "duplicate interface": ({"h2": _HOST}, [["l1:eth2", "h2:eth1"]], {}),
    "host not linked": ({"h2": _HOST}, [], {}),
    "spine to host": ({}, [["s1:eth2", "h1:eth2"]], {}),
    "leaf without spine": ({"l2": _LEAF2}, [], {}),
    "host in other rack": ({"l2": _LEAF2}, [["s1:eth2", "l2:eth1"], ["l2:eth2", "h1:eth2"]], {}),
    "bad endpoint": ({}, [["l1-eth3", "h1:eth2"]], {}),
    "long interface": ({}, [["l1:averyveryverylongname", "h1:eth9"]], {}),
    "self link": ({}, [["l1:eth5", "l1:eth6"]], {}),
    "parallel link": ({}, [["l1:eth5", "h1:eth5"]], {}),
    "spine with rack": (
        {"s1": {"labels": {"terrace.role": "spine", "terrace.rack": "r1"}}},
        [],
        {},
    ),
}


def _broken(change: str) -> dict[str, Any]:
    doc = _doc()
    nodes, links, drop = _BROKEN[change]
    doc["topology"]["nodes"].update(nodes)
    doc["topology"]["links"] += [{"endpoints": ends} for ends in links]
    for node, label in drop.items():
        del doc["topology"]["nodes"][node]["labels"][label]
    return doc


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("unknown role", "node h1"),
        ("host without rack", "host h1"),
        ("leaf without rack", "leaf l1"),
        ("unknown node", "'h9'"),
        ("duplicate interface", "l1:eth2"),
        ("host not linked", "host h2"),
        ("spine to host", "s1:eth2 -- h1:eth2"),
        ("leaf without spine", "leaf l2"),
        ("host in other rack", "host h1"),
        ("bad endpoint", "link #3"),
        ("long interface", "link #3"),
        ("self link", "l1:eth5 -- l1:eth6"),
        ("parallel link", "l1:eth5 -- h1:eth5"),
        ("spine with rack", "spine s1"),
    ],
)
def test_bad_file_error_names_the_culprit(change: str, named: str) -> None:
    with pytest.raises(TopologyError) as err:
        topology_from_document(_broken(change))
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "topology"),
        ("[1, 2]", "mapping"),
        ("name: [\n", "YAML"),
        ("name: bad name\ntopology: {nodes: {}}\n", "name"),
        ("name: x\ntopology: {nodes: {}}\n", "nodes"),
    ],
)
def test_bad_documents(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        load_topology(text)


@settings(max_examples=30, deadline=None)
@given(
    racks=st.integers(min_value=1, max_value=5),
    hosts=st.integers(min_value=1, max_value=4),
    dual=st.booleans(),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_generated_topologies_round_trip(racks: int, hosts: int, dual: bool, seed: int) -> None:
    topology = topology_from_document(shuffled(clos(racks, hosts, dual_homed=dual), seed))
    assert load_topology(dump_topology(topology)) == topology
    assert len(topology.hosts()) == racks * hosts
    assert all(len(topology.leaves_of(h.name)) == (2 if dual else 1) for h in topology.hosts())
