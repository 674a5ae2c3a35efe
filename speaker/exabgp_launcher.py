"""ExaBGP with two commands of ours: `python -m speaker.exabgp_launcher CONFIG`.

It registers, in ExaBGP 5's API command registry (the one `announce attributes ...` is
in), and then runs ExaBGP's own `main` unchanged:

    terrace announce-nlri ipv4|ipv6 <compact>
    terrace withdraw-nlri ipv4|ipv6 <compact>

`<compact>` is a list of prefixes as `speaker.compact_nlri` encodes it. For every peer of
the calling API process that has the family, the command builds the same Change objects
that `announce|withdraw attributes next-hop self nlri ...` would (unicast, the peer's own
address as next hop, no other attribute) and adds them to that peer's outgoing RIB at
once, then answers `done` (or `error` for a line it cannot decode). What it skips of
ExaBGP's generic path, which made a 10,000-prefix line take seconds: the tokeniser, a
deepcopy of every route to resolve `next-hop self`, one log line per route, and one
scheduler step per route (50 steps per reactor loop, with a 10 ms poll between loops).

Everything else (sessions, the adj-RIB-out cache that re-sends after a session reset,
End-of-RIB, acks, the other API commands) is ExaBGP's. The launcher must never change
ExaBGP's behaviour for any other command.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from speaker.compact_nlri import decode_prefixes

ANNOUNCE_COMMAND = "terrace announce-nlri"
WITHDRAW_COMMAND = "terrace withdraw-nlri"
"""Names that contain no other command's name plus a space: ExaBGP picks the first
registered name a line contains, and `withdraw ipv4 ` would match `... withdraw ipv4 ...`."""
FAMILIES = {"ipv4": 4, "ipv6": 6}


def inject(reactor: Any, service: str, line: str, announce: bool) -> int:
    """Add the line's prefixes to the outgoing RIB of each matching peer; how many
    changes that made. Raises ValueError for a line it cannot decode."""
    from exabgp.bgp.message.update.attribute import Attributes, NextHop
    from exabgp.protocol.family import AFI, SAFI

    words = line.split()
    if len(words) != 4 or words[2] not in FAMILIES:
        raise ValueError(f"expected `{' '.join(words[:2])} ipv4|ipv6 <compact>`")
    prefixes = decode_prefixes(words[3], FAMILIES[words[2]])
    afi = AFI.ipv4 if words[2] == "ipv4" else AFI.ipv6
    peers = set(reactor.peers(service))
    changes = 0
    for name, neighbor in reactor.configuration.neighbors.items():
        if name not in peers or (afi, SAFI.unicast) not in neighbor.families():
            continue
        nexthop = neighbor.ip_self(afi)  # what `next-hop self` resolves to
        attributes = Attributes()  # one object for all: one UPDATE group
        attributes.add(NextHop(str(nexthop), nexthop.pack()))
        built = build_changes(afi, prefixes, nexthop, attributes, announce)
        add_to_rib(neighbor.rib.outgoing, built, announce)
        changes += len(built)
    return changes


def build_changes(
    afi: Any, prefixes: list[tuple[bytes, int]], nexthop: Any, attributes: Any, announce: bool
) -> list[Any]:
    """The Change objects ExaBGP's parser makes for `... next-hop self nlri P ...` once
    `next-hop self` is resolved: unicast INET, `nexthop` on the NLRI, shared attributes.

    A Change's index is its family, the NLRI's family, the path id and the NLRI's wire
    form; all but the last are the same for every prefix here, so the index is set from
    the first one's instead of being worked out (three Family objects) per prefix."""
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update.nlri import CIDR, INET
    from exabgp.protocol.family import SAFI
    from exabgp.rib.change import Change

    action = Action.ANNOUNCE if announce else Action.WITHDRAW
    head: bytes | None = None
    changes = []
    for packed, length in prefixes:
        nlri = INET(afi, SAFI.unicast, action)
        nlri.cidr = CIDR(packed, length)
        nlri.nexthop = nexthop
        change = Change(nlri, attributes)
        wire = bytes((length,)) + packed[: (length + 7) // 8]
        if head is None:
            index = change.index()
            if not index.endswith(wire):
                raise RuntimeError(f"ExaBGP's Change index changed shape: {index!r}")
            head = index[: -len(wire)]
        else:
            change._Change__index = head + wire
        changes.append(change)
    return changes


def add_to_rib(rib: Any, changes: list[Any], announce: bool) -> None:
    """`rib.add_to_rib(change)` for each change (ExaBGP 5.0 rib/outgoing.py, cache.py:
    skip an announcement the adj-RIB-out already holds with the same attributes and next
    hop, queue the change for the next UPDATEs, record it in the adj-RIB-out), with what
    is the same for all of them (family, attributes, next hop) looked up once.
    `tests/unit/test_exabgp_launcher.py` holds it to ExaBGP's own method."""
    if not changes:
        return
    first = changes[0]
    family = first.nlri.family().afi_safi()
    attributes = first.attributes
    attr_index = attributes.index()
    nexthop_index = first.nlri.nexthop.index()
    seen = rib._seen.setdefault(family, {}) if rib.cache else None
    queued = rib._new_attr_af_nlri.setdefault(attr_index, {}).setdefault(family, {})
    new_nlri = rib._new_nlri
    rib._new_attribute[attr_index] = attributes
    for change in changes:
        index = change.index()
        if seen is not None and announce:
            cached = seen.get(index)
            if (
                cached is not None
                and cached.attributes.index() == attr_index
                and cached.nlri.nexthop.index() == nexthop_index
            ):
                continue
        queued[index] = change
        new_nlri[index] = change
        if seen is not None:
            if announce:
                seen[index] = change
            else:
                seen.pop(index, None)


def _command(announce: bool) -> Any:
    def command(api: Any, reactor: Any, service: str, line: str, use_json: bool) -> bool:
        def step() -> Iterator[bool]:
            # one scheduler step, queued like ExaBGP's own commands so answers keep order
            try:
                changes = inject(reactor, service, line, announce)
            except ValueError as exc:
                api.log_failure(f"{line[:60]}...: {exc}")
                reactor.processes.answer_error(service)
                yield True
                return
            what = "announced" if announce else "withdrew"
            api.log_message(f"{what} {changes} prefixes ({line[:40]}...)")
            reactor.processes.answer_done(service)
            yield False

        reactor.asynchronous.schedule(service, line[:40], step())
        return True

    return command


def register() -> None:
    from exabgp.reactor.api.command import Command

    Command.register(ANNOUNCE_COMMAND)(_command(announce=True))
    Command.register(WITHDRAW_COMMAND)(_command(announce=False))


def main(argv: list[str]) -> int:
    from exabgp.application.main import main as exabgp_main

    register()
    sys.argv = ["exabgp", *argv]
    exabgp_main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
