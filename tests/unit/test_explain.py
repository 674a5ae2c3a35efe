"""`explain`: same network, which rule, or default deny, naming the objects."""

from __future__ import annotations

import pytest

from fabric.explain import ExplainError, explain, rule_coverage
from fabric.state import Endpoint, Network, Rule

ALPHA = Network("net-a", "tenant-1", ("10.10.0.0/24", "10.10.1.0/24", "fd00:a::/64"), "alpha")
BETA = Network("net-b", "tenant-2", ("10.20.0.0/24", "fd00:b::/64"), "beta")
GAMMA = Network("net-c", "tenant-1", ("10.30.0.0/24",), "gamma")
C1 = Endpoint("ep-1", "c1", "net-a", "10.10.0.2", "fd00:a::2")
C2 = Endpoint("ep-2", "c2", "net-a", "10.10.1.2", None)
C3 = Endpoint("ep-3", "c3", "net-b", "10.20.0.2", "fd00:b::2")
HTTP = Rule("rule-http", "net-b", "net-a", None, "tcp", ("80", "8000-8080"))
DNS = Rule("rule-dns", "net-b", None, "192.0.2.0/24", "any", ("53",))
PING = Rule("rule-ping", "net-c", "net-b", None, "icmp")


def ask(src, dst, proto=None, port=None, rules=(HTTP, DNS, PING)):
    return explain(
        src,
        dst,
        proto,
        port,
        networks=(ALPHA, BETA, GAMMA),
        rules=rules,
        endpoints=(C1, C2, C3),
    )


def test_same_network_across_subnets_is_allowed_and_named():
    verdict = ask("10.10.0.2", "10.10.1.2")
    assert verdict.allowed and verdict.reason == "same-network"
    assert (verdict.src_endpoint, verdict.dst_endpoint) == ("c1", "c2")
    assert verdict.src_network and verdict.src_network.name == "alpha"
    assert "c1 (10.10.0.2), network alpha [net-a]" in verdict.message


def test_rule_allows_named_port_and_range():
    for port in (80, 8000, 8080):
        verdict = ask("10.10.0.2", "10.20.0.2", "tcp", port)
        assert verdict.allowed and verdict.reason == "rule" and verdict.rule_id == "rule-http"
    assert "rule rule-http of beta [net-b]" in ask("10.10.0.2", "10.20.0.2", "tcp", 80).message


def test_default_deny_outside_the_rule_names_the_partial_rule():
    verdict = ask("10.10.0.2", "10.20.0.2", "tcp", 443)
    assert not verdict.allowed and verdict.reason == "default-deny" and verdict.rule_id is None
    assert verdict.partial_rules == ("rule-http",)
    ping = ask("10.10.0.2", "10.20.0.2", "icmp")
    assert not ping.allowed and ping.partial_rules == ("rule-http",)
    everything = ask("fd00:a::2", "fd00:b::2")
    assert not everything.allowed and everything.partial_rules == ("rule-http",)
    assert "allow only: rule rule-http" in everything.message


def test_rules_are_one_way_and_only_on_the_destination():
    assert not ask("10.20.0.2", "10.10.0.2", "tcp", 80).allowed
    assert ask("10.20.0.2", "10.30.0.9", "icmp").allowed
    assert not ask("10.30.0.9", "10.20.0.2", "icmp").allowed


def test_two_networks_of_one_tenant_are_isolated_without_a_rule():
    verdict = ask("10.10.0.2", "10.30.0.5", "tcp", 22)
    assert not verdict.allowed and verdict.reason == "default-deny"


def test_cidr_rule_any_with_ports_means_tcp_and_udp():
    assert ask("192.0.2.7", "10.20.0.2", "udp", 53).allowed
    assert ask("192.0.2.7", "10.20.0.2", "tcp", 53).rule_id == "rule-dns"
    assert not ask("192.0.2.7", "10.20.0.2", "icmp").allowed
    outside = ask("198.51.100.1", "10.20.0.2", "udp", 53)
    assert not outside.allowed and outside.src_network is None
    assert "in no Terrace network" in outside.message


def test_unmanaged_destination_and_family_mismatch():
    assert ask("10.10.0.2", "8.8.8.8").reason == "unmanaged-destination"
    mixed = ask("10.10.0.2", "fd00:a::2")
    assert not mixed.allowed and mixed.reason == "family-mismatch"


def test_invalid_rules_allow_nothing_like_the_compiler():
    bad_port = Rule("bad", "net-b", "net-a", None, "tcp", ("http",))
    both = Rule("both", "net-b", "net-a", "10.0.0.0/8")
    assert not ask("10.10.0.2", "10.20.0.2", "tcp", 80, rules=(bad_port, both)).allowed


@pytest.mark.parametrize(
    ("proto", "port", "message"),
    [
        ("sctp", None, "protocol"),
        ("icmp", 80, "needs protocol"),
        (None, 80, "needs"),
        ("tcp", 0, "range"),
    ],
)
def test_bad_questions_say_how_to_ask(proto, port, message):
    with pytest.raises(ExplainError, match=message):
        ask("10.10.0.2", "10.20.0.2", proto, port)


def test_bad_addresses_say_what_an_address_looks_like():
    with pytest.raises(ExplainError, match="not an IP address"):
        ask("c1", "10.20.0.2")


def test_rule_coverage_table():
    web = Rule("w", "n", "m", None, "tcp", ("443",))
    assert rule_coverage(web, "tcp", 443) == "full"
    assert rule_coverage(web, "tcp", None) == "partial"
    assert rule_coverage(web, None, None) == "partial"
    assert rule_coverage(web, "udp", 443) == "none"
    anything = Rule("a", "n", "m", None)
    assert {rule_coverage(anything, p, None) for p in ("tcp", "icmp", None)} == {"full"}


def test_verdict_json_names_objects():
    doc = ask("10.10.0.2", "10.20.0.2", "tcp", 80).to_json()
    assert doc["allowed"] is True and doc["rule_id"] == "rule-http"
    assert doc["dst_network"] == {"id": "net-b", "name": "beta", "tenant_id": "tenant-2"}
    assert doc["src_endpoint"] == "c1" and doc["dst_endpoint"] == "c3"


# ------------------------------------------------- explain agrees with the compiler

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fabric.policy import compile_host_policy, ingress_chain  # noqa: E402
from fabric.state import HostInfo, HostState  # noqa: E402

SOURCES = ["10.10.0.7", "10.10.1.9", "10.20.0.5", "10.30.0.3", "192.0.2.7", "198.51.100.1"]
SOURCES6 = ["fd00:a::7", "fd00:b::5", "2001:db8:ff::1", "2001:db8:1::1"]
RULE_POOL = [
    HTTP,
    DNS,
    PING,
    Rule("r-any", "net-a", "net-c", None),
    Rule("r-udp", "net-a", None, "198.51.100.0/24", "udp"),
    Rule("r-icmp-ports", "net-b", "net-c", None, "icmp", ("7",)),
    Rule("r-bad", "net-b", "net-c", None, "tcp", ("x",)),
    Rule("r-tcp", "net-c", None, "10.0.0.0/8", "tcp", ("22", "8000-8100")),
    Rule("r-icmp-bad", "net-a", None, "10.0.0.0/8", "icmp", ("x",)),
    Rule("r-v6", "net-b", None, "2001:db8:ff::/48", "udp", ("53",)),
    Rule("r-v6-any", "net-a", None, "2001:db8::/32", "icmp"),
]


def chain_verdict(ruleset, endpoint, src, proto, port):
    """Walk the compiled ingress chain of `endpoint` for one new packet from `src`."""
    import ipaddress

    address = ipaddress.ip_address(src)
    if proto == "icmp" and address.version == 6:
        proto = "ipv6-icmp"
    for rule in ruleset.tables[address.version].chains[ingress_chain(endpoint.id)]:
        words = rule.match.split()
        options = {flag: words[i + 1] for i, flag in enumerate(words[:-1]) if flag.startswith("-")}
        if "--match-set" in words:
            members = ruleset.sets[words[words.index("--match-set") + 1]].members
            if not any(address in ipaddress.ip_network(m) for m in members):
                continue
        if "-s" in options and address not in ipaddress.ip_network(options["-s"]):
            continue
        if "-p" in options and options["-p"] != proto:
            continue
        if "--dport" in options:
            low, _, high = options["--dport"].partition(":")
            if not int(low) <= port <= int(high or low):
                continue
        return rule.action == "-j ACCEPT"
    raise AssertionError("an ingress chain always ends in a drop")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(RULE_POOL), unique=True),
    st.sampled_from(SOURCES + SOURCES6),
    st.sampled_from([C1, C3, Endpoint("ep-g", "g1", "net-c", "10.30.0.2", None)]),
    st.sampled_from(["tcp", "udp", "icmp"]),
    st.sampled_from([22, 53, 80, 443, 8050]),
)
def test_explain_agrees_with_the_compiled_chain(rules, src, endpoint, proto, port):
    state = HostState(
        revision=1,
        host=HostInfo("h", None, 65000, "192.0.2.1"),
        endpoints=(endpoint,),
        networks=(ALPHA, BETA, GAMMA),
        rules=tuple(rules),
    )
    asked_port = None if proto == "icmp" else port
    dst = endpoint.ipv6 if ":" in src else endpoint.ipv4
    assume(dst is not None)
    verdict = explain(
        src, dst, proto, asked_port, networks=state.networks, rules=rules, endpoints=()
    )
    compiled = chain_verdict(compile_host_policy(state), endpoint, src, proto, port)
    assert verdict.allowed == compiled, verdict.message
