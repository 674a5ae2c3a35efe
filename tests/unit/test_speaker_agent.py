"""The speaker loop against an in-memory host: the apply order is checked as an invariant.

The three fakes write into one `Host`; after every step the host must satisfy
ARCHITECTURE invariant 4: no veth without its policy, no announcement without its
kernel route. The tests check the host, never which calls were made.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fabric.state import Block, Borrowed, Endpoint, HostInfo, HostState, Peer
from speaker.agent import Speaker, bridge_state, run_speaker
from speaker.bgp import BgpReport, desired_prefixes
from speaker.kernel import KernelReport


@dataclass
class Host:
    policed: set[str] = field(default_factory=set)  # endpoints with firewall policy
    veths: set[str] = field(default_factory=set)  # endpoints with a veth and routes
    routed: set[str] = field(default_factory=set)  # prefixes with a blackhole or route
    announced: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def check(self, step: str) -> None:
        if not self.veths <= self.policed:
            self.violations.append(f"after {step}: veth without policy {self.veths - self.policed}")
        if not self.announced <= self.routed:
            self.violations.append(
                f"after {step}: announced {self.announced - self.routed} unrouted"
            )


class FakeFirewall:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.fail = False

    def apply(self, state: HostState) -> None:
        if self.fail:
            raise RuntimeError("iptables-restore: line 3 failed")
        self.host.policed = {e.id for e in state.endpoints}
        self.host.check("firewall")

    def remove_all(self) -> None:
        self.host.policed = set()

    def counters(self) -> dict[str, int]:
        return {"abc": 3}


class FakeKernel:
    def __init__(self, host: Host) -> None:
        self.host = host

    def apply(self, state: HostState) -> KernelReport:
        before = (set(self.host.veths), set(self.host.routed))
        self.host.veths = {e.id for e in state.endpoints}
        self.host.routed = desired_prefixes(state)
        self.host.check("kernel")
        changed = before != (self.host.veths, self.host.routed)
        return KernelReport(changes=int(changed), endpoints=len(state.endpoints))


class FakeBgp:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.closed = False

    async def start(self) -> None:
        pass

    async def apply(self, state: HostState) -> BgpReport:
        self.host.announced = desired_prefixes(state)
        self.host.check("bgp")
        return self.report()

    def report(self) -> BgpReport:
        return BgpReport(announced=len(self.host.announced), desired=len(self.host.announced))

    async def close(self, *, stop_exabgp: bool = True) -> None:
        self.closed = True


HOST = HostInfo(name="h1", rack="r1", asn=4200000001, address="10.0.0.1")
PEER = Peer("leaf1", 4, "10.0.0.254", "10.0.0.1", 65001, 4200000001)


def state(revision: int, *endpoint_ids: int, blocks: tuple[str, ...] = ()) -> HostState:
    endpoints = tuple(
        Endpoint(f"ep-{n}", f"c{n}", "net-a", f"10.64.{n}.1", None, netns=f"c{n}")
        for n in endpoint_ids
    )
    return HostState(
        revision=revision,
        host=HOST,
        peers=(PEER,),
        blocks=tuple(Block(c, "net-a") for c in blocks),
        endpoints=endpoints,
    )


def parts(host: Host) -> tuple[FakeFirewall, FakeKernel, FakeBgp]:
    return FakeFirewall(host), FakeKernel(host), FakeBgp(host)


async def test_states_in_any_sequence_keep_the_apply_order() -> None:
    host = Host()
    speaker = Speaker(*parts(host))
    sequence = [
        state(1, 1, blocks=("10.64.1.0/28",)),
        state(2, 1, 2, blocks=("10.64.1.0/28", "10.64.2.0/28")),
        state(3, 2, blocks=("10.64.2.0/28",)),
        state(4),
        state(5, 3, blocks=("10.64.3.0/28",)),
        state(6, 1, 2, 3, blocks=("10.64.1.0/28", "10.64.2.0/28")),
    ]
    for desired in [*sequence, *reversed(sequence)]:
        result = await speaker.apply(desired)
        assert result.error is None and result.revision == desired.revision
        assert host.policed == host.veths == {e.id for e in desired.endpoints}
        assert host.announced == desired_prefixes(desired)
    assert host.violations == []


def test_bridge_keeps_what_leaves_and_adds_what_comes() -> None:
    old = HostState(
        revision=1,
        host=HOST,
        blocks=(Block("10.64.1.0/28", "n"),),
        borrowed=(Borrowed("10.65.0.1", "n"),),
        endpoints=state(1, 1, 2).endpoints,
    )
    new = HostState(revision=2, host=HOST, blocks=(Block("10.64.2.0/28", "n"),))
    bridge = bridge_state(old, new)
    assert bridge is not None
    assert {b.cidr for b in bridge.blocks} == {"10.64.1.0/28", "10.64.2.0/28"}
    assert {e.id for e in bridge.endpoints} == {"ep-1", "ep-2"}
    assert [b.address for b in bridge.borrowed] == ["10.65.0.1"]
    assert bridge_state(old, old) is None
    assert bridge_state(None, new) is None


def test_bridge_drops_a_leaving_endpoint_whose_address_is_reused() -> None:
    old = state(1, 1)
    reused = Endpoint("ep-9", "c9", "net-a", "10.64.1.1", None, netns="c9")
    new = HostState(revision=2, host=HOST, endpoints=(reused,))
    bridge = bridge_state(old, new)
    assert bridge is None or [e.id for e in bridge.endpoints] == ["ep-9"]


async def test_a_failing_firewall_stops_the_pass_and_nothing_is_routed_or_announced() -> None:
    host = Host()
    firewall, kernel, bgp = parts(host)
    speaker = Speaker(firewall, kernel, bgp)
    await speaker.apply(state(1, 1, blocks=("10.64.1.0/28",)))
    firewall.fail = True
    result = await speaker.apply(state(2, 1, 2, blocks=("10.64.1.0/28", "10.64.2.0/28")))
    assert result.error and "iptables-restore" in result.error
    assert result.revision == 1 and host.veths == {"ep-1"}
    assert host.announced == {"10.64.1.0/28"}
    assert host.violations == []


class FakeController:
    """Serves a scripted list of answers (a state doc or an exception) and records statuses."""

    def __init__(self, answers: list[Any], stop: asyncio.Event) -> None:
        self.answers = answers
        self.stop = stop
        self.statuses: list[dict[str, Any]] = []
        self.asked_after: list[int] = []

    async def desired_state(self, host: str, after: int, timeout: float) -> dict[str, Any]:
        self.asked_after.append(after)
        if not self.answers:
            self.stop.set()
            await asyncio.sleep(3600)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        doc: dict[str, Any] = answer.to_json()
        return doc

    async def post_status(self, host: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)


async def test_loop_survives_outages_keeps_the_last_state_and_reports() -> None:
    host = Host()
    firewall, kernel, bgp = parts(host)
    stop = asyncio.Event()
    controller = FakeController(
        [
            state(1, 1, blocks=("10.64.1.0/28",)),
            ConnectionError("controller down"),
            ConnectionError("controller still down"),
            state(2, 1, 2, blocks=("10.64.1.0/28", "10.64.2.0/28")),
        ],
        stop,
    )
    await asyncio.wait_for(
        run_speaker(
            "unix:/nowhere",
            "h1",
            "token",
            firewall=firewall,
            kernel=kernel,
            bgp=bgp,
            client=controller,
            stop=stop,
            backoff=(0.001, 0.002),
        ),
        timeout=5,
    )
    assert controller.asked_after == [-1, 1, 1, 1, 2]
    assert [s["applied_revision"] for s in controller.statuses] == [1, 2]
    last = controller.statuses[-1]
    assert last["last_error"] is None and last["counts"]["endpoints"] == 2
    assert last["bgp"]["announced"] == 2 and last["firewall_counters"] == {"abc": 3}
    assert host.veths == {"ep-1", "ep-2"} and host.violations == []
    assert bgp.closed
