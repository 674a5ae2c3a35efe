"""Why may (or may not) one address reach another: the policy, explained in domain terms.

Owns the answer to "may SRC reach DST with this protocol and port, and why": same
network, the rule that allows it, or default deny, naming networks, endpoints and
rules. It mirrors what `fabric.policy` compiles (the same rule semantics, the same
invalid-rule handling) so the answer matches what the hosts enforce. Pure: the caller
(`GET /v1/explain`, `terrace explain`) gathers networks, rules and endpoints. Must never
read iptables: a user should not need iptables output to debug a drop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fabric.addressing import IPAddress, parse_address
from fabric.policy import parse_port_range
from fabric.state import PROTOCOLS, Endpoint, Network, Rule

Reason = Literal["same-network", "rule", "default-deny", "family-mismatch", "unmanaged-destination"]
Coverage = Literal["full", "partial", "none"]


class ExplainError(ValueError):
    """The question cannot be asked as given; the message says how to ask it."""


@dataclass(frozen=True, slots=True)
class NetworkRef:
    id: str
    name: str
    tenant_id: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer: `allowed` for exactly the asked traffic, and why, in words and ids.

    `partial_rules` are rules that match the source but allow only some protocols or
    ports, not the traffic asked about (e.g. a tcp/443 rule when asked about ping).
    """

    allowed: bool
    reason: Reason
    message: str
    src: str
    dst: str
    protocol: str | None
    port: int | None
    src_network: NetworkRef | None = None
    dst_network: NetworkRef | None = None
    src_endpoint: str | None = None
    dst_endpoint: str | None = None
    rule_id: str | None = None
    partial_rules: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def ref(network: NetworkRef | None) -> dict[str, str] | None:
            if network is None:
                return None
            return {"id": network.id, "name": network.name, "tenant_id": network.tenant_id}

        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "message": self.message,
            "src": self.src,
            "dst": self.dst,
            "protocol": self.protocol,
            "port": self.port,
            "src_network": ref(self.src_network),
            "dst_network": ref(self.dst_network),
            "src_endpoint": self.src_endpoint,
            "dst_endpoint": self.dst_endpoint,
            "rule_id": self.rule_id,
            "partial_rules": list(self.partial_rules),
        }


@dataclass(frozen=True, slots=True)
class _Party:
    address: IPAddress
    network: Network | None
    endpoint: Endpoint | None

    def describe(self) -> str:
        who = f"{self.endpoint.name} ({self.address})" if self.endpoint else str(self.address)
        if self.network is None:
            return f"{who}, in no Terrace network"
        return f"{who}, network {_network_label(self.network)}"


def explain(
    src: str,
    dst: str,
    proto: str | None,
    port: int | None,
    *,
    networks: Iterable[Network],
    rules: Iterable[Rule],
    endpoints: Iterable[Endpoint],
) -> Verdict:
    """May `src` open traffic (`proto`/`port`; None = all traffic) to `dst`, and why."""
    protocol = _check_query(proto, port)
    all_networks = tuple(networks)
    all_endpoints = tuple(endpoints)
    source = _party(src, "source", all_networks, all_endpoints)
    target = _party(dst, "destination", all_networks, all_endpoints)
    base = Verdict(
        allowed=False,
        reason="default-deny",
        message="",
        src=str(source.address),
        dst=str(target.address),
        protocol=protocol,
        port=port,
        src_network=_ref(source.network),
        dst_network=_ref(target.network),
        src_endpoint=source.endpoint.name if source.endpoint else None,
        dst_endpoint=target.endpoint.name if target.endpoint else None,
    )
    question = _Question(source, target, protocol, port)
    return _decide(base, question, tuple(rules))


@dataclass(frozen=True, slots=True)
class _Question:
    source: _Party
    target: _Party
    protocol: str | None
    port: int | None

    def head(self) -> str:
        what = _traffic(self.protocol, self.port)
        return f"{self.source.describe()} → {self.target.describe()}, {what}"


def _decide(base: Verdict, question: _Question, rules: Sequence[Rule]) -> Verdict:
    source, target, head = question.source, question.target, question.head()
    if source.address.version != target.address.version:
        return _with(
            base, "family-mismatch", False, f"{head}: not allowed: IPv4 and IPv6 never mix"
        )
    if target.network is None:
        message = f"{head}: not filtered: the destination is in no Terrace network"
        return _with(base, "unmanaged-destination", True, message)
    if source.network is not None and source.network.id == target.network.id:
        return _with(base, "same-network", True, f"{head}: allowed: same network")
    return _by_rules(base, question, target.network, rules)


def _by_rules(
    base: Verdict, question: _Question, network: Network, rules: Sequence[Rule]
) -> Verdict:
    head, label = question.head(), _network_label(network)
    partial: list[Rule] = []
    for rule in sorted((r for r in rules if r.network_id == network.id), key=lambda r: r.id):
        if not _source_matches(rule, question.source):
            continue
        if rule_coverage(rule, question.protocol, question.port) == "full":
            message = f"{head}: allowed by rule {rule.id} of {label} ({_rule_text(rule)})"
            return _with(base, "rule", True, message, rule_id=rule.id)
        partial.append(rule)  # it lets this source in, only not for what was asked
    message = f"{head}: denied by default: no rule of {label} allows it"
    if partial:
        only = "; ".join(f"rule {r.id}: {_rule_text(r)}" for r in partial)
        message += f" (rules for this source allow only: {only})"
    return _with(base, "default-deny", False, message, partial=tuple(r.id for r in partial))


def _with(
    base: Verdict,
    reason: Reason,
    allowed: bool,
    message: str,
    *,
    rule_id: str | None = None,
    partial: tuple[str, ...] = (),
) -> Verdict:
    return Verdict(
        allowed=allowed,
        reason=reason,
        message=message,
        src=base.src,
        dst=base.dst,
        protocol=base.protocol,
        port=base.port,
        src_network=base.src_network,
        dst_network=base.dst_network,
        src_endpoint=base.src_endpoint,
        dst_endpoint=base.dst_endpoint,
        rule_id=rule_id,
        partial_rules=partial,
    )


def rule_coverage(rule: Rule, protocol: str | None, port: int | None) -> Coverage:
    """How much of the asked traffic one rule allows, as `fabric.policy` compiles it.

    Semantics: protocol `any` without ports is all traffic; `any` with ports is tcp and
    udp on those ports; `icmp` ignores ports; a rule with an invalid port allows nothing.
    """
    if rule.protocol == "icmp":
        return "full" if protocol == "icmp" else ("partial" if protocol is None else "none")
    try:
        ranges = [parse_port_range(p) for p in rule.ports]
    except ValueError:
        return "none"
    if rule.protocol == "any" and not ranges:
        return "full"
    services = {"tcp", "udp"} if rule.protocol == "any" else {rule.protocol}
    if protocol is None:
        return "partial"
    if protocol not in services:
        return "none"
    if not ranges:
        return "full"
    if port is None:
        return "partial"
    return "full" if any(low <= port <= high for low, high in ranges) else "none"


def _source_matches(rule: Rule, source: _Party) -> bool:
    if bool(rule.from_network) == bool(rule.from_cidr):
        return False  # invalid: the compiler leaves it out too
    if rule.from_network:
        return source.network is not None and source.network.id == rule.from_network
    try:
        cidr = ipaddress.ip_network(str(rule.from_cidr), strict=True)
    except ValueError:
        return False
    return cidr.version == source.address.version and source.address in cidr


def _check_query(proto: str | None, port: int | None) -> str | None:
    protocol = None if proto in (None, "", "any") else str(proto).lower()
    if protocol is not None and protocol not in PROTOCOLS:
        raise ExplainError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    if port is not None:
        if protocol not in ("tcp", "udp"):
            raise ExplainError(f"port {port} needs protocol tcp or udp, not {proto or 'none'}")
        if not 1 <= port <= 65535:
            raise ExplainError(f"port {port} is out of range 1..65535")
    return protocol


def _party(
    text: str, role: str, networks: Sequence[Network], endpoints: Sequence[Endpoint]
) -> _Party:
    try:
        address = parse_address(str(text).strip())
    except ValueError:
        raise ExplainError(
            f"{role} {text!r} is not an IP address (e.g. 10.0.0.5 or 2001:db8::5)"
        ) from None
    return _Party(address, _network_of(address, networks), _endpoint_of(address, endpoints))


def _network_of(address: IPAddress, networks: Sequence[Network]) -> Network | None:
    for network in networks:
        for subnet in network.subnets:
            try:
                cidr = ipaddress.ip_network(subnet, strict=True)
            except ValueError:
                continue  # the compiler leaves invalid subnets out too
            if cidr.version == address.version and address in cidr:
                return network
    return None


def _endpoint_of(address: IPAddress, endpoints: Sequence[Endpoint]) -> Endpoint | None:
    for endpoint in endpoints:
        for text in (endpoint.ipv4, endpoint.ipv6):
            if text and _same_address(text, address):
                return endpoint
    return None


def _same_address(text: str, address: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(text.split("/", maxsplit=1)[0]) == address
    except ValueError:
        return False


def _ref(network: Network | None) -> NetworkRef | None:
    return NetworkRef(network.id, network.name, network.tenant_id) if network else None


def _network_label(network: Network) -> str:
    return f"{network.name} [{network.id}]" if network.name else network.id


def _traffic(protocol: str | None, port: int | None) -> str:
    if protocol is None:
        return "all traffic"
    return f"{protocol}/{port}" if port is not None else protocol


def _rule_text(rule: Rule) -> str:
    source = f"from network {rule.from_network}" if rule.from_network else f"from {rule.from_cidr}"
    ports = f" ports {','.join(rule.ports)}" if rule.ports else ""
    return f"{source}, {rule.protocol}{ports}"
