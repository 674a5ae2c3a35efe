"""The policy compiler and the firewall reconciler against an in-memory netfilter."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fabric.naming import host_interface
from fabric.policy import (
    FORWARD_CHAIN,
    FROM_ENDPOINT_CHAIN,
    TO_ENDPOINT_CHAIN,
    RuleSet,
    compile_host_policy,
    counters_by_origin,
    diff,
    dispatch_bucket,
    egress_chain,
    ingress_chain,
    network_set,
    parse_counters,
    parse_ipset_save,
    parse_iptables_save,
    parse_port_range,
)
from fabric.state import Endpoint, HostInfo, HostState, Network, Rule
from speaker.firewall import FirewallReconciler
from tests.unit.netfilter_fake import FakeNetfilter, NetfilterError

WEB = Network("net-web", "t1", ("10.0.0.0/24", "2001:db8:0:1::/64"), "web")
DB = Network("net-db", "t2", ("10.0.1.0/24",), "db")
E1 = Endpoint("ep-1", "web-1", "net-web", "10.0.0.2", "2001:db8:0:1::2")
E2 = Endpoint("ep-2", "db-1", "net-db", "10.0.1.2", None)
HTTP = Rule("rule-http", "net-web", "net-db", None, "tcp", ("80", "8000-8080"))


def host_state(*, endpoints=(E1, E2), networks=(WEB, DB), rules=(HTTP,), revision=1):
    return HostState(
        revision=revision,
        host=HostInfo("h1", "r1", 65001, "192.0.2.1"),
        endpoints=tuple(endpoints),
        networks=tuple(networks),
        rules=tuple(rules),
    )


def lines(ruleset: RuleSet, family: int = 4) -> list[str]:
    return ruleset.iptables_restore(family).splitlines()


def test_host_interface_is_tr_plus_11_hex():
    name = host_interface("ep-1")
    assert name.startswith("tr") and len(name) == 13
    assert ingress_chain("ep-1").endswith(name[2:])


def test_sets_hold_subnets_per_family_never_endpoint_addresses():
    ruleset = compile_host_policy(host_state())
    web4, web6 = network_set("net-web", 4), network_set("net-web", 6)
    assert ruleset.sets[web4].members == {"10.0.0.0/24"}
    assert ruleset.sets[web6].members == {"2001:db8:0:1::/64"}
    assert ruleset.sets[network_set("net-db", 6)].members == frozenset()
    assert "10.0.0.2" not in ruleset.ipset_restore()


def test_ingress_chain_same_network_then_rules_then_counted_drop():
    chain = compile_host_policy(host_state()).tables[4].chains[ingress_chain("ep-1")]
    assert [r.origin for r in chain] == [
        "same-network:net-web",
        "rule:rule-http",
        "rule:rule-http",
        "default-drop:ep-1",
    ]
    db4 = network_set("net-db", 4)
    assert chain[1].match == f"-m set --match-set {db4} src -p tcp --dport 80"
    assert chain[2].match.endswith("--dport 8000:8080")


def test_rule_from_cidr_lands_only_in_its_family():
    rule = Rule("rule-cidr", "net-web", None, "198.51.100.0/24", "udp", ("53",))
    ruleset = compile_host_policy(host_state(rules=(rule,)))
    assert any("-s 198.51.100.0/24 -p udp --dport 53" in line for line in lines(ruleset, 4))
    assert not any("198.51.100" in line for line in lines(ruleset, 6))


def test_protocol_any_with_ports_means_tcp_and_udp_and_icmp_maps_per_family():
    any_ports = Rule("rule-any", "net-web", "net-db", None, "any", ("53",))
    ping = Rule("rule-ping", "net-web", "net-db", None, "icmp")
    ruleset = compile_host_policy(host_state(rules=(any_ports, ping)))
    v4, v6 = "\n".join(lines(ruleset, 4)), "\n".join(lines(ruleset, 6))
    assert "-p tcp --dport 53" in v4 and "-p udp --dport 53" in v4
    assert "-p icmp -m comment" in v4 and "-p ipv6-icmp -m comment" in v6


def test_invalid_rule_is_left_out_never_widened():
    bad = Rule("rule-bad", "net-web", "net-db", None, "tcp", ("80", "http"))
    ruleset = compile_host_policy(host_state(rules=(bad,)))
    chain = ruleset.tables[4].chains[ingress_chain("ep-1")]
    assert "rule:rule-bad" not in [r.origin for r in chain]
    assert any("rule-bad" in p for p in ruleset.problems)


def test_anti_spoofing_allows_only_own_address_per_family():
    ruleset = compile_host_policy(host_state())
    out4 = ruleset.tables[4].chains[egress_chain("ep-1")]
    out6 = ruleset.tables[6].chains[egress_chain("ep-1")]
    assert [r.match for r in out4] == ["-s 10.0.0.2/32", ""]
    assert [r.match for r in out6] == ["-s 2001:db8:0:1::2/128", ""]
    no_v6 = ruleset.tables[6].chains[egress_chain("ep-2")]
    assert [r.action for r in no_v6] == ["-j DROP"]


def test_unknown_terrace_veth_is_dropped_in_both_directions():
    ruleset = compile_host_policy(host_state(endpoints=()))
    for name in (FROM_ENDPOINT_CHAIN, TO_ENDPOINT_CHAIN):
        assert ruleset.tables[4].chains[name][-1].action == "-j DROP"
    forward = ruleset.tables[4].chains[FORWARD_CHAIN]
    assert [r.match for r in forward] == ["-i tr+", "-o tr+", "-i tr+"]


def test_router_advertisements_from_endpoints_are_dropped():
    chain = compile_host_policy(host_state()).tables[6].chains["TERRACE-INPUT"]
    assert chain[0].origin == "router-advertisement" and chain[0].action == "-j DROP"


def test_hashes_do_not_depend_on_input_order():
    one = compile_host_policy(host_state())
    other = compile_host_policy(
        host_state(
            endpoints=(E2, E1),
            networks=(DB, WEB),
            rules=(dataclasses.replace(HTTP, ports=("8000-8080", "80")),),
        )
    )
    assert one.ipset_restore() == other.ipset_restore()
    assert lines(one) == lines(other) and lines(one, 6) == lines(other, 6)


def test_adding_a_subnet_changes_one_set_and_no_rule():
    before = compile_host_policy(host_state())
    grown = dataclasses.replace(DB, subnets=(*DB.subnets, "10.0.9.0/24"))
    after = compile_host_policy(host_state(networks=(WEB, grown)))
    patch = diff(before, after)
    assert patch.ipset == f"add {network_set('net-db', 4)} 10.0.9.0/24\n"
    assert patch.iptables == {4: "", 6: ""} and patch.ipset_cleanup == ""


def test_new_endpoint_touches_only_dispatch_and_its_own_chains():
    before = compile_host_policy(host_state(endpoints=(E1,)))
    e3 = Endpoint("ep-3", "web-2", "net-web", "10.0.0.3", None)
    after = compile_host_policy(host_state(endpoints=(E1, e3)))
    script = diff(before, after).iptables[4]
    touched = {
        line.lstrip(":").split()[0] if line.startswith(":") else line.split()[1]
        for line in script.splitlines()
        if line.startswith(("-F", ":"))
    }
    assert touched == {
        dispatch_bucket(FROM_ENDPOINT_CHAIN, "ep-3"),
        dispatch_bucket(TO_ENDPOINT_CHAIN, "ep-3"),
        egress_chain("ep-3"),
        ingress_chain("ep-3"),
    }


def test_parsers_read_back_real_save_formats():
    save = """# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
[9:900] -A PREROUTING -m comment --comment "tr:ffff" -j ACCEPT
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:TERRACE-X - [0:0]
:DOCKER - [0:0]
[5:300] -A FORWARD -s 1.2.3.4/32 -j ACCEPT
[7:420] -A FORWARD -m comment --comment tr:aaaa -j TERRACE-X
[3:180] -A TERRACE-X -p tcp -m tcp --dport 80 -m comment --comment "tr:bbbb" -j ACCEPT
[1:60] -A TERRACE-X -j DROP
COMMIT
"""
    table = parse_iptables_save(save)
    assert table.chains == {"TERRACE-X": ("bbbb", None)}
    assert [r.ours for r in table.base["FORWARD"]] == [False, True]
    assert parse_counters(save) == {"aaaa": 7, "bbbb": 3}
    sets = parse_ipset_save(
        "create tr-x-4 hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12\n"
        "add tr-x-4 10.0.0.1\nadd tr-x-4 10.1.0.0/16\ncreate other hash:ip family inet\n"
    )
    assert set(sets) == {"tr-x-4"} and sets["tr-x-4"].members == {"10.0.0.1/32", "10.1.0.0/16"}


@pytest.mark.parametrize(
    ("text", "expected"), [("80", (80, 80)), ("8000-8080", (8000, 8080)), (" 22 ", (22, 22))]
)
def test_port_ranges(text, expected):
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "90-80", "http", "1-2-3", ""])
def test_bad_port_ranges_raise(text):
    with pytest.raises(ValueError, match="port"):
        parse_port_range(text)


# ------------------------------------------------------------------ reconciler


def foreign_netfilter() -> FakeNetfilter:
    fake = FakeNetfilter()
    for family in (4, 6):
        fake.restore(
            family, "*filter\n:DOCKER - [0:0]\n-A FORWARD -j DOCKER\n-A INPUT -j ACCEPT\nCOMMIT\n"
        )
    fake.ipset_restore("create other hash:ip family inet\nadd other 1.2.3.4\n", exist=False)
    return fake


def test_reconciler_installs_and_is_idempotent():
    fake = foreign_netfilter()
    firewall = FirewallReconciler(runner=fake)
    firewall.apply(host_state())
    assert firewall.installed().owned() == compile_host_policy(host_state()).installed()
    assert fake.tables[4].chains["FORWARD"][0].endswith(f"-j {FORWARD_CHAIN}")
    firewall.apply(host_state())
    assert firewall.last_patch is not None and firewall.last_patch.empty
    restores = [c for c in fake.calls if "restore" in c[0] or c[1:2] == ["restore"]]
    assert len(restores) == 3  # ipset, iptables, ip6tables: once


def test_reconciler_moves_its_jump_back_to_the_top_and_keeps_foreign_rules():
    fake = foreign_netfilter()
    FirewallReconciler(runner=fake).apply(host_state())
    fake.restore(4, "*filter\n-I FORWARD 1 -s 9.9.9.9/32 -j ACCEPT\nCOMMIT\n")
    FirewallReconciler(runner=fake).apply(host_state())
    forward = fake.tables[4].chains["FORWARD"]
    assert forward[0].endswith(f"-j {FORWARD_CHAIN}")
    assert forward[1:] == ["-s 9.9.9.9/32 -j ACCEPT", "-j DOCKER"]
    assert fake.tables[4].chains["INPUT"][-1] == "-j ACCEPT"


def test_reconciler_removes_leftovers_and_remove_all_leaves_only_foreign_objects():
    fake = foreign_netfilter()
    fake.restore(4, "*filter\n:TERRACE-OLD - [0:0]\n-A TERRACE-OLD -j DROP\nCOMMIT\n")
    fake.ipset_restore("create tr-old-4 hash:net family inet\n", exist=False)
    firewall = FirewallReconciler(runner=fake)
    firewall.apply(host_state())
    assert "TERRACE-OLD" not in fake.tables[4].chains and "tr-old-4" not in fake.sets
    firewall.remove_all()
    assert set(fake.sets) == {"other"}
    for family in (4, 6):
        assert fake.tables[family].chains == {
            "INPUT": ["-j ACCEPT"],
            "FORWARD": ["-j DOCKER"],
            "OUTPUT": [],
            "DOCKER": [],
        }


def test_removed_network_set_is_destroyed_after_the_rules_using_it():
    fake = foreign_netfilter()
    firewall = FirewallReconciler(runner=fake)
    firewall.apply(host_state())
    firewall.apply(host_state(endpoints=(E1,), rules=()))
    assert network_set("net-db", 4) not in fake.sets
    assert (
        firewall.installed().owned()
        == compile_host_policy(host_state(endpoints=(E1,), rules=())).installed()
    )


def test_counters_are_read_back_by_hash_and_summed_by_origin():
    fake = foreign_netfilter()
    firewall = FirewallReconciler(runner=fake)
    firewall.apply(host_state())
    assert firewall.applied is not None
    drop = firewall.applied.tables[4].chains[ingress_chain("ep-1")][-1]
    fake.tables[4].counters[drop.body()] = 5
    fake.tables[6].counters[drop.body()] = 2
    counters = firewall.counters()
    assert counters[drop.hash] == 7
    assert counters_by_origin(counters, firewall.applied)["default-drop:ep-1"] == 7
    assert firewall.counters_by_origin()["default-drop:ep-1"] == 7


def test_failed_restore_is_reported_with_the_command(caplog):
    def broken(argv, stdin=None):
        if argv[0] == "iptables-restore":
            raise NetfilterError("iptables-restore: line 3 failed")
        return FakeNetfilter()(argv, stdin)

    with caplog.at_level(logging.WARNING), pytest.raises(NetfilterError, match="line 3"):
        FirewallReconciler(runner=broken).apply(host_state())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def full_reads(fake: FakeNetfilter) -> int:
    return sum(1 for call in fake.calls if call[0] == "iptables-save")


def test_between_resyncs_the_record_is_trusted_but_base_chains_are_read_live():
    fake, clock = foreign_netfilter(), Clock()
    firewall = FirewallReconciler(runner=fake, resync_interval=30, clock=clock)
    firewall.apply(host_state())
    fake.restore(4, "*filter\n-I FORWARD 1 -s 9.9.9.9/32 -j ACCEPT\nCOMMIT\n")
    clock.now = 10
    firewall.apply(host_state(rules=()))
    assert full_reads(fake) == 1
    assert fake.tables[4].chains["FORWARD"][0].endswith(f"-j {FORWARD_CHAIN}")
    assert firewall.installed().owned() == compile_host_policy(host_state(rules=())).installed()
    clock.now = 45
    before = full_reads(fake)
    firewall.apply(host_state(rules=()))
    assert full_reads(fake) == before + 1


def test_a_wrong_record_is_repaired_by_one_full_read():
    fake, clock = foreign_netfilter(), Clock()
    firewall = FirewallReconciler(runner=fake, resync_interval=30, clock=clock)
    firewall.apply(host_state())
    chain = ingress_chain("ep-1")
    for family in (4, 6):  # someone removed one of our chains behind our back
        bucket = dispatch_bucket(TO_ENDPOINT_CHAIN, "ep-1")
        fake.restore(family, f"*filter\n-F {bucket}\n-F {chain}\n-X {chain}\nCOMMIT\n")
    firewall.apply(host_state(rules=()))
    assert firewall.installed().owned() == compile_host_policy(host_state(rules=())).installed()


def test_departed_addresses_have_their_flows_forgotten_after_the_rules():
    fake, forgotten = foreign_netfilter(), []

    def forget(addresses):
        assert "TERRACE-IN" in "".join(fake.tables[4].chains)  # rules are in place first
        forgotten.append(set(addresses))
        return 0

    firewall = FirewallReconciler(runner=fake, forget_flows=forget)
    firewall.apply(host_state())
    moved = dataclasses.replace(E2, network_id="net-web")
    firewall.apply(host_state(endpoints=(moved,)))
    assert forgotten == [{"10.0.0.2", "2001:db8:0:1::2", "10.0.1.2"}]
    firewall.apply(host_state(endpoints=(moved,)))
    assert len(forgotten) == 1


def test_a_failed_forget_is_retried_at_the_next_apply():
    calls = []

    def flaky(addresses):
        calls.append(set(addresses))
        if len(calls) == 1:
            raise OSError("netlink busy")
        return 1

    firewall = FirewallReconciler(runner=foreign_netfilter(), forget_flows=flaky)
    firewall.apply(host_state())
    firewall.apply(host_state(endpoints=(E1,)))
    firewall.apply(host_state(endpoints=(E1,)))
    assert calls == [{"10.0.1.2"}, {"10.0.1.2"}]
