"""The launcher's commands against ExaBGP's own objects (no process, no network): the
same outgoing RIB as ExaBGP's `announce|withdraw attributes next-hop self nlri ...`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.state import HostInfo, HostState, Peer
from speaker.bgp import batch_commands, render_exabgp_config
from speaker.exabgp_launcher import register

STATE = HostState(
    revision=1,
    host=HostInfo(name="h1", rack="r1", asn=4200000001, address="10.0.0.1", address6="fd00::1"),
    peers=(
        Peer("leaf1", 4, "10.0.0.254", "10.0.0.1", 65001, 4200000001, hold_time=9),
        Peer("leaf1", 6, "fd00::fe", "fd00::1", 65001, 4200000001, hold_time=9),
    ),
)
V4 = ["10.64.0.0/28", "10.64.0.16/28", "10.65.0.7/32"]
V6 = ["2001:db8::/120", "2001:db8:1::5/128"]


class Answers:
    def __init__(self) -> None:
        self.given: list[str] = []

    def answer_done(self, service: str) -> None:
        self.given.append("done")

    def answer_error(self, service: str) -> None:
        self.given.append("error")


class Reactor:
    """What an API command uses of ExaBGP's reactor, around a real configuration."""

    def __init__(self, config: Path) -> None:
        from exabgp.configuration.configuration import Configuration
        from exabgp.reactor.api import API
        from exabgp.reactor.asynchronous import ASYNC
        from exabgp.rib import RIB

        RIB._cache.clear()  # ExaBGP shares a RIB between configurations of the same name
        self.configuration = Configuration([str(config)])
        assert self.configuration.reload(), self.configuration.error
        self.asynchronous = ASYNC()
        self.processes = Answers()
        self.api = API(self)

    def peers(self, service: str = "") -> list[str]:
        return list(self.configuration.neighbors)

    def run(self, line: str) -> None:
        self.api.process(self, "terrace", line)
        while self.asynchronous.run():
            pass

    def rib(self) -> dict[str, Any]:
        """Per neighbor: the queued changes and the adj-RIB-out, as comparable values."""

        def key(change: Any) -> tuple[Any, ...]:
            nlri = change.nlri
            return (
                change.index(),
                int(nlri.action),
                nlri.nexthop.index(),
                change.attributes.index(),
            )

        out = {}
        for name, neighbor in self.configuration.neighbors.items():
            rib = neighbor.rib.outgoing
            out[str(name)] = (
                sorted(key(c) for c in rib.queued_changes()),
                sorted(key(c) for c in rib.cached_changes()),
            )
        return out


@pytest.fixture(scope="module", autouse=True)
def _exabgp() -> Iterator[None]:
    from exabgp.environment import getenv
    from exabgp.logger import log

    log.init(getenv())
    register()
    yield


def reactor(tmp_path: Path, name: str) -> Reactor:
    config = tmp_path / f"{name}.conf"
    config.write_text(render_exabgp_config(STATE, "/bin/cat"))
    return Reactor(config)


def text_line(action: str, prefixes: list[str]) -> str:
    return f"{action} attributes next-hop self nlri {' '.join(prefixes)}"


def test_compact_commands_fill_the_rib_as_exabgp_text_commands_do(tmp_path: Path) -> None:
    ours, exabgps = reactor(tmp_path, "ours"), reactor(tmp_path, "text")
    for batch in batch_commands("announce", V4 + V6):
        ours.run(batch.line)
    for prefixes in (V4, V6):
        exabgps.run(text_line("announce", prefixes))
    assert ours.processes.given == exabgps.processes.given == ["done", "done"]
    assert ours.rib() == exabgps.rib()
    assert sorted(len(cached) for _, cached in ours.rib().values()) == [len(V6), len(V4)]

    for r in (ours, exabgps):
        for neighbor in r.configuration.neighbors.values():
            list(neighbor.rib.outgoing.updates(True))  # as if sent: the queue empties
    for batch in batch_commands("withdraw", ["10.64.0.16/28", "2001:db8::/120"]):
        ours.run(batch.line)
    exabgps.run(text_line("withdraw", ["10.64.0.16/28"]))
    exabgps.run(text_line("withdraw", ["2001:db8::/120"]))
    assert ours.rib() == exabgps.rib()


def test_an_announcement_already_in_the_adj_rib_out_is_not_queued_again(tmp_path: Path) -> None:
    ours = reactor(tmp_path, "again")
    (batch,) = batch_commands("announce", V4)
    ours.run(batch.line)
    for neighbor in ours.configuration.neighbors.values():
        list(neighbor.rib.outgoing.updates(True))
    ours.run(batch.line)
    assert ours.processes.given == ["done", "done"]
    assert all(not queued for queued, _ in ours.rib().values())


def test_a_line_that_does_not_decode_is_an_error_and_changes_nothing(tmp_path: Path) -> None:
    ours = reactor(tmp_path, "bad")
    ours.run("terrace announce-nlri ipv4 not-base64!")
    ours.run("terrace withdraw-nlri ipv5 AAAA")
    assert ours.processes.given == ["error", "error"]
    assert all(not queued and not cached for queued, cached in ours.rib().values())
