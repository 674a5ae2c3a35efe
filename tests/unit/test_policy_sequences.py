"""Sequences of host states: step-by-step diffs end where compiling the last state does.

Like Felix's calc-graph tests, a sequence is replayed forwards, reversed and squashed
(first to last in one step); the in-memory netfilter refuses any script the kernel
would refuse (dangling jumps, deleting a referenced chain or set), so every
intermediate patch is also checked to be applicable.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.policy import (
    FROM_ENDPOINT_CHAIN,
    TO_ENDPOINT_CHAIN,
    RuleSet,
    compile_host_policy,
    diff,
    dispatch_bucket,
    egress_chain,
    ingress_chain,
)
from fabric.state import Endpoint, HostInfo, HostState, Network, Rule
from speaker.firewall import FirewallReconciler
from tests.unit.netfilter_fake import FakeNetfilter

NETWORK_IDS = [f"n{i}" for i in range(4)]
SUBNETS = {
    n: (f"10.{i}.0.0/24", f"10.{i}.1.0/24", f"2001:db8:{i}::/64") for i, n in enumerate(NETWORK_IDS)
}
ENDPOINTS = [
    Endpoint(
        f"e{k}",
        f"c{k}",
        NETWORK_IDS[k % 4],
        f"10.{k % 4}.0.{k + 2}" if k % 3 else None,
        f"2001:db8:{k % 4}::{k + 2}" if k % 2 else None,
    )
    for k in range(6)
]
RULES = [
    Rule("r0", "n0", "n1", None, "tcp", ("80",)),
    Rule("r1", "n0", "n2", None, "any"),
    Rule("r2", "n1", None, "192.0.2.0/24", "udp", ("53", "5000-5010")),
    Rule("r3", "n2", "n0", None, "icmp"),
    Rule("r4", "n3", None, "2001:db8:ff::/48", "any", ("443",)),
    Rule("r5", "n1", "n3", None, "any"),
]


@st.composite
def host_states(draw: st.DrawFn) -> HostState:
    networks = tuple(
        Network(n, "t", tuple(draw(st.lists(st.sampled_from(SUBNETS[n]), unique=True))), n)
        for n in draw(st.lists(st.sampled_from(NETWORK_IDS), unique=True))
    )
    return HostState(
        revision=0,
        host=HostInfo("h", None, 65000, "192.0.2.10"),
        endpoints=tuple(draw(st.lists(st.sampled_from(ENDPOINTS), unique=True))),
        networks=networks,
        rules=tuple(draw(st.lists(st.sampled_from(RULES), unique=True))),
    )


sequences = st.lists(host_states(), min_size=1, max_size=6)


def replay(states: list[HostState], fake: FakeNetfilter | None = None) -> FakeNetfilter:
    fake = fake or FakeNetfilter()
    for state in states:
        firewall = FirewallReconciler(runner=fake)  # a fresh object, as after a restart
        firewall.apply(state)
        assert firewall.installed().owned() == compile_host_policy(state).installed()
    return fake


@settings(max_examples=60, deadline=None)
@given(sequences)
def test_forwards_reversed_and_squashed_replays_end_at_the_last_state(states):
    for order in (states, states[::-1], [states[0], states[-1]]):
        fake = replay(order)
        assert FirewallReconciler(runner=fake).installed().owned() == (
            compile_host_policy(order[-1]).installed()
        )


@settings(max_examples=60, deadline=None)
@given(sequences)
def test_pure_diffs_chain_from_rule_set_to_rule_set(states):
    fake = FakeNetfilter()
    previous = RuleSet.empty()
    for state in states:
        current = compile_host_policy(state)
        patch = diff(previous, current)
        fake.ipset_restore(patch.ipset, exist=True)
        for family, script in patch.iptables.items():
            fake.restore(family, script)
        fake.ipset_restore(patch.ipset_cleanup, exist=True)
        previous = current
    reader = FirewallReconciler(runner=fake)
    assert reader.installed().owned() == previous.installed()
    assert diff(previous, previous).empty


@settings(max_examples=40, deadline=None)
@given(host_states(), st.randoms(use_true_random=False))
def test_rule_text_does_not_depend_on_order(state, random):
    def shuffled(items):
        items = list(items)
        random.shuffle(items)
        return tuple(items)

    permuted = HostState(
        revision=state.revision + 1,
        host=state.host,
        endpoints=shuffled(state.endpoints),
        networks=tuple(
            Network(n.id, n.tenant_id, shuffled(n.subnets), n.name)
            for n in shuffled(state.networks)
        ),
        rules=shuffled(state.rules),
    )
    one, other = compile_host_policy(state), compile_host_policy(permuted)
    assert one.ipset_restore() == other.ipset_restore()
    for family in (4, 6):
        assert one.iptables_restore(family) == other.iptables_restore(family)


@settings(max_examples=60, deadline=None)
@given(host_states(), st.sampled_from(ENDPOINTS))
def test_a_new_endpoint_rewrites_no_other_endpoints_chain(state, added):
    """Endpoint churn is local: only the dispatch chains and the endpoint's own change."""
    others = tuple(e for e in state.endpoints if e.id != added.id)
    before = compile_host_policy(replace(state, endpoints=others))
    after = compile_host_policy(replace(state, endpoints=(*others, added)))
    mine = {
        egress_chain(added.id),
        ingress_chain(added.id),
        dispatch_bucket(FROM_ENDPOINT_CHAIN, added.id),
        dispatch_bucket(TO_ENDPOINT_CHAIN, added.id),
    }
    for family in (4, 6):
        script = diff(before, after).iptables[family]
        rewritten = {line.split()[1] for line in script.splitlines() if line.startswith("-A")}
        assert rewritten <= mine
    members = {m for s in after.sets.values() for m in s.members}
    assert not any(m.endswith(("/32", "/128")) for m in members)


@settings(max_examples=60, deadline=None)
@given(sequences)
def test_one_long_lived_reconciler_trusting_its_record_stays_exact(states):
    fake = FakeNetfilter()
    firewall = FirewallReconciler(runner=fake, resync_interval=1e9, clock=lambda: 0.0)
    for state in [*states, *states[::-1]]:
        firewall.apply(state)
        reader = FirewallReconciler(runner=fake)
        assert reader.installed().owned() == compile_host_policy(state).installed()
    assert sum(1 for call in fake.calls if call[0] == "iptables-save") == 1 + 2 * len(states)
