"""The desired state of one host: the only wire format between controller and speaker.

The controller computes a `HostState` per host from the database and serves it as JSON;
the speaker parses the same JSON back into a `HostState` and reconciles its host to it.
This module owns the shape of that document (typed data plus a JSON schema) and must
never grow I/O: both sides import it, and neither imports the other.

The state is always complete (full state, not deltas): a speaker that missed a change
catches up by reading the next state, so a missed event cannot exist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Protocol = Literal["tcp", "udp", "icmp", "any"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "icmp", "any")


@dataclass(frozen=True, slots=True)
class HostInfo:
    """Who the host is: its name, rack, BGP ASN and underlay addresses."""

    name: str
    rack: str | None
    asn: int
    address: str
    address6: str | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """One BGP session the host opens to a leaf (one per family per leaf)."""

    name: str
    family: int
    peer_address: str
    local_address: str
    peer_asn: int
    local_asn: int
    hold_time: int = 9


@dataclass(frozen=True, slots=True)
class Block:
    """A slice of a subnet affine to this host; announced as one prefix.

    `holes` are addresses inside the block that another host borrowed: they are not
    blackholed here but routed to the fabric, where the borrower announces them.
    """

    cidr: str
    network_id: str
    holes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Borrowed:
    """A single address this host borrowed (announced as /32 or /128)."""

    address: str
    network_id: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One container interface on this host."""

    id: str
    name: str
    network_id: str
    ipv4: str | None
    ipv6: str | None
    netns: str | None = None
    interface: str | None = None


@dataclass(frozen=True, slots=True)
class Network:
    """A logical network: a policy group defined by its subnets."""

    id: str
    tenant_id: str
    subnets: tuple[str, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """Ingress allow into `network_id` from another network or a CIDR."""

    id: str
    network_id: str
    from_network: str | None
    from_cidr: str | None
    protocol: Protocol = "any"
    ports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostState:
    """Everything one host must make true, at one revision of the fabric."""

    revision: int
    host: HostInfo
    peers: tuple[Peer, ...] = ()
    blocks: tuple[Block, ...] = ()
    borrowed: tuple[Borrowed, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    networks: tuple[Network, ...] = ()
    rules: tuple[Rule, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON document served by `GET /v1/hosts/{name}/desired-state`."""
        doc = asdict(self)
        extra = doc.pop("extra")
        doc.update(extra)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HostState:
        """Parse the document; unknown keys are kept in `extra` (forward compatible)."""
        known = {"revision", "host", "peers", "blocks", "borrowed", "endpoints", "networks"}
        known.add("rules")
        return cls(
            revision=int(doc["revision"]),
            host=HostInfo(**doc["host"]),
            peers=tuple(Peer(**p) for p in doc.get("peers", ())),
            blocks=tuple(
                Block(b["cidr"], b["network_id"], tuple(b.get("holes", ())))
                for b in doc.get("blocks", ())
            ),
            borrowed=tuple(Borrowed(**b) for b in doc.get("borrowed", ())),
            endpoints=tuple(Endpoint(**e) for e in doc.get("endpoints", ())),
            networks=tuple(
                Network(n["id"], n["tenant_id"], tuple(n["subnets"]), n.get("name", ""))
                for n in doc.get("networks", ())
            ),
            rules=tuple(
                Rule(
                    r["id"],
                    r["network_id"],
                    r.get("from_network"),
                    r.get("from_cidr"),
                    r.get("protocol", "any"),
                    tuple(str(p) for p in r.get("ports") or ()),
                )
                for r in doc.get("rules", ())
            ),
            extra={k: v for k, v in doc.items() if k not in known},
        )


_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}


def _object(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


HOST_STATE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "HostState",
    **_object(
        {
            "revision": {"type": "integer", "minimum": 0},
            "host": _object(
                {
                    "name": _STR,
                    "rack": _OPT_STR,
                    "asn": {"type": "integer"},
                    "address": _STR,
                    "address6": _OPT_STR,
                },
                ["name", "asn", "address"],
            ),
            "peers": {
                "type": "array",
                "items": _object(
                    {
                        "name": _STR,
                        "family": {"enum": [4, 6]},
                        "peer_address": _STR,
                        "local_address": _STR,
                        "peer_asn": {"type": "integer"},
                        "local_asn": {"type": "integer"},
                        "hold_time": {"type": "integer"},
                    },
                    ["name", "family", "peer_address", "local_address", "peer_asn"],
                ),
            },
            "blocks": {
                "type": "array",
                "items": _object(
                    {"cidr": _STR, "network_id": _STR, "holes": {"type": "array", "items": _STR}},
                    ["cidr", "network_id"],
                ),
            },
            "borrowed": {
                "type": "array",
                "items": _object({"address": _STR, "network_id": _STR}, ["address", "network_id"]),
            },
            "endpoints": {
                "type": "array",
                "items": _object(
                    {
                        "id": _STR,
                        "name": _STR,
                        "network_id": _STR,
                        "ipv4": _OPT_STR,
                        "ipv6": _OPT_STR,
                        "netns": _OPT_STR,
                        "interface": _OPT_STR,
                    },
                    ["id", "name", "network_id", "ipv4", "ipv6"],
                ),
            },
            "networks": {
                "type": "array",
                "items": _object(
                    {
                        "id": _STR,
                        "tenant_id": _STR,
                        "name": _STR,
                        "subnets": {"type": "array", "items": _STR},
                    },
                    ["id", "tenant_id", "subnets"],
                ),
            },
            "rules": {
                "type": "array",
                "items": _object(
                    {
                        "id": _STR,
                        "network_id": _STR,
                        "from_network": _OPT_STR,
                        "from_cidr": _OPT_STR,
                        "protocol": {"enum": list(PROTOCOLS)},
                        "ports": {"type": "array", "items": _STR},
                    },
                    ["id", "network_id", "protocol"],
                ),
            },
        },
        ["revision", "host", "peers", "blocks", "borrowed", "endpoints", "networks", "rules"],
    ),
}
