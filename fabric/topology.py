"""The physical fabric as read from a containerlab file: nodes, roles, racks and links.

This module owns the typed topology model, the reading of a containerlab YAML document
into it (with Terrace labels `terrace.role` and `terrace.rack` on each node), the checks
that make a topology a valid RFC 7938 Clos (spines above leaves, hosts below leaves of
their own rack) and the writing of a model back into a containerlab document.

Everything containerlab needs survives a round trip: the lab `name`, `topology.kinds`
and other unknown keys, per-node `kind`, `image`, `binds`, `labels` and any other key,
and `links` with `endpoints: ["a:eth1", "b:eth1"]`. Only the brief link form is read.

It must never do I/O: callers pass the file's text and get text back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import yaml

Role = Literal["spine", "leaf", "host"]
ROLES: tuple[Role, ...] = ("spine", "leaf", "host")
ROLE_LABEL = "terrace.role"
RACK_LABEL = "terrace.rack"

# Linux limits interface names to 15 characters; node names end up in namespace and
# interface names, so both are restricted to a portable alphabet.
MAX_INTERFACE_NAME = 15
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NODE_KEYS = ("kind", "image", "binds", "labels")
# Which roles may be linked to each other (an unordered pair, sorted).
_ALLOWED_PAIRS = {("leaf", "spine"), ("host", "leaf")}


def name_key(name: str) -> tuple[tuple[int, str, int], ...]:
    """Natural order for node and rack names: leaf2 before leaf10."""
    return tuple(
        (1, "", int(part)) if part.isdigit() else (0, part, 0)
        for part in re.split(r"(\d+)", name)
        if part
    )


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the node or link at fault."""


@dataclass(frozen=True, slots=True)
class Node:
    """One containerlab node with its Terrace role and rack.

    `labels` holds every label of the node, the Terrace ones included; `extra` holds
    the node keys this model does not interpret (kept for the round trip).
    """

    name: str
    role: Role
    rack: str | None = None
    kind: str | None = None
    image: str | None = None
    binds: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, order=True)
class LinkEnd:
    """One end of a link: a node and its interface, written `node:interface`."""

    node: str
    interface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}"


@dataclass(frozen=True, slots=True)
class Link:
    """A point-to-point link between two node interfaces."""

    a: LinkEnd
    b: LinkEnd
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ends(self) -> tuple[LinkEnd, LinkEnd]:
        return (self.a, self.b)

    def __str__(self) -> str:
        return f"{self.a} -- {self.b}"


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole fabric: the lab name, its nodes in file order and its links.

    `extra` holds unknown top-level keys and `topology_extra` unknown keys of the
    `topology` section (`kinds`, `defaults`, ...), both kept for the round trip.
    The helpers return names and nodes in natural name order (`name_key`: leaf2 before
    leaf10), so callers get a stable order that does not depend on the file.
    """

    name: str
    nodes: Mapping[str, Node]
    links: tuple[Link, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    topology_extra: Mapping[str, Any] = field(default_factory=dict)

    def with_role(self, role: Role) -> tuple[Node, ...]:
        nodes = (n for n in self.nodes.values() if n.role == role)
        return tuple(sorted(nodes, key=lambda n: name_key(n.name)))

    def spines(self) -> tuple[Node, ...]:
        return self.with_role("spine")

    def leaves(self) -> tuple[Node, ...]:
        return self.with_role("leaf")

    def hosts(self) -> tuple[Node, ...]:
        return self.with_role("host")

    def racks(self) -> tuple[str, ...]:
        """Every rack named by a leaf or a host, sorted."""
        return tuple(
            sorted({n.rack for n in self.nodes.values() if n.rack is not None}, key=name_key)
        )

    def hosts_in(self, rack: str) -> tuple[Node, ...]:
        return tuple(n for n in self.hosts() if n.rack == rack)

    def leaves_in(self, rack: str) -> tuple[Node, ...]:
        return tuple(n for n in self.leaves() if n.rack == rack)

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Names of the nodes linked to `name`, sorted (each once)."""
        return tuple(sorted({end.node for end, _ in self._far_ends(name)}, key=name_key))

    def leaves_of(self, host: str) -> tuple[str, ...]:
        """Names of the leaves a host is linked to, sorted."""
        return tuple(n for n in self.neighbours(host) if self.nodes[n].role == "leaf")

    def links_of(self, name: str) -> tuple[Link, ...]:
        return tuple(link for link in self.links if name in (link.a.node, link.b.node))

    def _far_ends(self, name: str) -> Iterator[tuple[LinkEnd, LinkEnd]]:
        """(far end, near end) of every link of `name`."""
        for link in self.links:
            if link.a.node == name:
                yield link.b, link.a
            elif link.b.node == name:
                yield link.a, link.b


# ---------------------------------------------------------------------------- reading


def load_topology(text: str) -> Topology:
    """Parse a containerlab YAML document into a checked `Topology`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"topology file is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise TopologyError("topology file must be a mapping with `name` and `topology`")
    return topology_from_document(doc)


def topology_from_document(doc: Mapping[str, Any]) -> Topology:
    """Build a checked `Topology` from an already parsed document (YAML or JSON)."""
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise TopologyError(
            f"lab `name` must be a simple name (letters, digits, -, _), not {name!r}"
        )
    section = doc.get("topology")
    if not isinstance(section, dict):
        raise TopologyError(f"lab {name}: missing `topology` mapping")
    raw_nodes = section.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise TopologyError(f"lab {name}: `topology.nodes` must be a non-empty mapping")
    nodes = {str(key): _read_node(str(key), value) for key, value in raw_nodes.items()}
    raw_links = section.get("links") or []
    if not isinstance(raw_links, list):
        raise TopologyError(f"lab {name}: `topology.links` must be a list")
    links = tuple(_read_link(i, raw) for i, raw in enumerate(raw_links))
    topology = Topology(
        name=name,
        nodes=nodes,
        links=links,
        extra={k: v for k, v in doc.items() if k not in ("name", "topology")},
        topology_extra={k: v for k, v in section.items() if k not in ("nodes", "links")},
    )
    check_topology(topology)
    return topology


def _read_node(name: str, raw: object) -> Node:
    if not _NAME.match(name):
        raise TopologyError(f"node {name!r}: name must use letters, digits, - and _ only")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TopologyError(f"node {name}: must be a mapping")
    labels = _read_labels(name, raw.get("labels"))
    role = labels.get(ROLE_LABEL)
    if role not in ROLES:
        raise TopologyError(
            f"node {name}: label {ROLE_LABEL} must be one of {', '.join(ROLES)}, not {role!r}"
        )
    return Node(
        name=name,
        role=cast(Role, role),  # checked against ROLES above
        rack=labels.get(RACK_LABEL),
        kind=_optional_str(name, "kind", raw.get("kind")),
        image=_optional_str(name, "image", raw.get("image")),
        binds=_read_binds(name, raw.get("binds")),
        labels=labels,
        extra={k: v for k, v in raw.items() if k not in _NODE_KEYS},
    )


def _read_labels(node: str, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TopologyError(f"node {node}: `labels` must be a mapping")
    return {str(k): str(v) for k, v in raw.items()}


def _read_binds(node: str, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(b, str) for b in raw):
        raise TopologyError(f"node {node}: `binds` must be a list of strings")
    return tuple(raw)


def _optional_str(node: str, key: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TopologyError(f"node {node}: `{key}` must be a string, not {value!r}")


def _read_link(index: int, raw: object) -> Link:
    where = f"link #{index + 1}"
    if not isinstance(raw, dict) or "endpoints" not in raw:
        raise TopologyError(
            f'{where}: must be a mapping with `endpoints: ["a:eth1", '
            f'"b:eth1"]` (only the brief link form is supported)'
        )
    endpoints = raw["endpoints"]
    if not isinstance(endpoints, list) or len(endpoints) != 2:
        raise TopologyError(
            f"{where} {endpoints!r}: `endpoints` must list exactly two `node:interface` strings"
        )
    a, b = (_read_end(where, e) for e in endpoints)
    return Link(a, b, extra={k: v for k, v in raw.items() if k != "endpoints"})


def _read_end(where: str, raw: object) -> LinkEnd:
    if not isinstance(raw, str) or raw.count(":") != 1:
        raise TopologyError(f"{where}: endpoint {raw!r} must be written `node:interface`")
    node, interface = raw.split(":")
    if not _INTERFACE.match(interface) or len(interface) > MAX_INTERFACE_NAME:
        raise TopologyError(
            f"{where} ({raw}): interface {interface!r} must be 1..{MAX_INTERFACE_NAME} "
            f"characters of letters, digits, '.', '-' and '_'"
        )
    return LinkEnd(node, interface)


# ---------------------------------------------------------------------------- checking


def check_topology(topology: Topology) -> None:
    """Raise `TopologyError` naming the first node or link that breaks the Clos rules."""
    for node in topology.nodes.values():
        _check_node(node)
    seen: set[LinkEnd] = set()
    pairs: set[frozenset[str]] = set()
    for link in topology.links:
        _check_link(topology, link, seen, pairs)
    for host in topology.hosts():
        _check_host_attachment(topology, host)
    if topology.spines():
        for leaf in topology.leaves():
            if not any(topology.nodes[n].role == "spine" for n in topology.neighbours(leaf.name)):
                raise TopologyError(f"leaf {leaf.name} is not linked to any spine")


def _check_node(node: Node) -> None:
    if node.role in ("leaf", "host") and not node.rack:
        raise TopologyError(
            f"{node.role} {node.name} has no {RACK_LABEL} label; "
            f"every leaf and host belongs to a rack"
        )
    if node.rack is not None and not _NAME.match(node.rack):
        raise TopologyError(
            f"node {node.name}: rack {node.rack!r} must use letters, digits, - and _ only"
        )
    if node.role == "spine" and node.rack is not None:
        raise TopologyError(f"spine {node.name} has a {RACK_LABEL} label; spines belong to no rack")


def _check_link(
    topology: Topology, link: Link, seen: set[LinkEnd], pairs: set[frozenset[str]]
) -> None:
    for end in link.ends:
        if end.node not in topology.nodes:
            raise TopologyError(f"link {link}: unknown node {end.node!r}")
        if end in seen:
            raise TopologyError(f"link {link}: interface {end} is already used by another link")
        seen.add(end)
    if link.a.node == link.b.node:
        raise TopologyError(f"link {link}: links a node to itself")
    pair = frozenset((link.a.node, link.b.node))
    if pair in pairs:
        raise TopologyError(
            f"link {link}: {link.a.node} and {link.b.node} are already "
            f"linked; parallel links are not supported"
        )
    pairs.add(pair)
    roles = tuple(sorted((topology.nodes[link.a.node].role, topology.nodes[link.b.node].role)))
    if roles not in _ALLOWED_PAIRS:
        raise TopologyError(
            f"link {link}: a {roles[0]} cannot be linked to a {roles[1]}; "
            f"links go spine--leaf or leaf--host"
        )


def _check_host_attachment(topology: Topology, host: Node) -> None:
    leaves = topology.leaves_of(host.name)
    if not leaves:
        raise TopologyError(f"host {host.name} is not linked to any leaf")
    for leaf in leaves:
        if topology.nodes[leaf].rack != host.rack:
            raise TopologyError(
                f"host {host.name} (rack {host.rack}) is linked to leaf "
                f"{leaf} of rack {topology.nodes[leaf].rack}"
            )


# ---------------------------------------------------------------------------- writing


class _FlowList(list[str]):
    """A list written in flow style (`[a, b]`), as containerlab files show endpoints."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_flow_list(dumper: yaml.SafeDumper, data: _FlowList) -> yaml.Node:
    items = [dumper.represent_scalar("tag:yaml.org,2002:str", item, style='"') for item in data]
    return yaml.SequenceNode("tag:yaml.org,2002:seq", items, flow_style=True)


_Dumper.add_representer(_FlowList, _represent_flow_list)


def dump_topology(topology: Topology) -> str:
    """Write a topology back as a containerlab YAML document."""
    return yaml.dump(
        topology_to_document(topology),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )


def topology_to_document(topology: Topology) -> dict[str, Any]:
    """The containerlab document of a topology, as plain data (YAML or JSON ready)."""
    section: dict[str, Any] = dict(topology.topology_extra)
    section["nodes"] = {n.name: _node_document(n) for n in topology.nodes.values()}
    section["links"] = [_link_document(link) for link in topology.links]
    return {"name": topology.name, **topology.extra, "topology": section}


def _node_document(node: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if node.kind is not None:
        doc["kind"] = node.kind
    if node.image is not None:
        doc["image"] = node.image
    if node.binds:
        doc["binds"] = list(node.binds)
    labels = dict(node.labels)
    labels[ROLE_LABEL] = node.role
    if node.rack is not None:
        labels[RACK_LABEL] = node.rack
    else:
        labels.pop(RACK_LABEL, None)
    doc["labels"] = labels
    doc.update(node.extra)
    return doc


def _link_document(link: Link) -> dict[str, Any]:
    return {"endpoints": _FlowList([str(link.a), str(link.b)]), **link.extra}
