"""BgpSpeaker against a real FRR leaf: sessions, announcements, withdrawals, ExaBGP restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fabric.state import Block, Borrowed, HostInfo, HostState, Peer
from speaker.bgp import BgpSpeaker, default_exabgp_command

pytestmark = pytest.mark.lab

FRR = Path("/usr/lib/frr")
HOST_ASN = 4200000001
LEAF_ASN = 65001
HOST4, LEAF4 = "10.255.1.1", "10.255.1.2"
HOST6, LEAF6 = "fd00:255:1::1", "fd00:255:1::2"


def _require_lab() -> None:
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [str(FRR / d) for d in ("zebra", "bgpd") if not (FRR / d).exists()]
    missing += [t for t in ("ip", "vtysh") if shutil.which(t) is None]
    version = [sys.executable, "-m", "exabgp", "version"]
    if subprocess.run(version, capture_output=True, check=False).returncode:
        missing.append("exabgp")
    if missing:
        message = f"lab test needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


async def wait_until(
    what: str, condition: Callable[[], bool], seen: Callable[[], Any], deadline: float = 60.0
) -> None:
    """Poll `condition` until true; on timeout fail with what `seen` shows last."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        await asyncio.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}; last seen: {seen()!r}")


LEAF_CONF = f"""frr defaults datacenter
hostname leaf
log file {{logdir}}/frr.log
log timestamp precision 6
!
router bgp {LEAF_ASN}
 bgp router-id {LEAF4}
 no bgp ebgp-requires-policy
 bgp graceful-restart
 neighbor {HOST4} remote-as {HOST_ASN}
 neighbor {HOST4} timers 3 9
 neighbor {HOST6} remote-as {HOST_ASN}
 neighbor {HOST6} timers 3 9
 address-family ipv4 unicast
  neighbor {HOST4} activate
  no neighbor {HOST6} activate
 exit-address-family
 address-family ipv6 unicast
  neighbor {HOST6} activate
 exit-address-family
!
"""


class Fabric:
    """A leaf namespace running FRR and a host namespace for the speaker, one veth apart."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.leaf = f"trb-{tag}-leaf"
        self.host = f"trb-{tag}-host"
        self.dir = Path(tempfile.mkdtemp(prefix=f"trb-{tag}-"))

    def up(self) -> None:
        for ns in (self.leaf, self.host):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.host, "link", "add", "up0", "type", "veth", "peer", "name", "down0")
        sh("ip", "-n", self.host, "link", "set", "down0", "netns", self.leaf)
        for ns, link, v4, v6 in (
            (self.host, "up0", HOST4, HOST6),
            (self.leaf, "down0", LEAF4, LEAF6),
        ):
            sh("ip", "-n", ns, "addr", "add", f"{v4}/30", "dev", link)
            sh("ip", "-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", link, "nodad")
            sh("ip", "-n", ns, "link", "set", link, "up")
        self._start_frr()

    def _start_frr(self) -> None:
        os.chmod(self.dir, 0o777)
        conf = self.dir / "frr.conf"
        conf.write_text(LEAF_CONF.format(logdir=self.dir))
        os.chmod(conf, 0o644)
        rundir = Path("/var/run/frr") / self.leaf
        rundir.mkdir(parents=True, exist_ok=True)
        shutil.chown(rundir, "frr", "frr")
        for daemon in ("zebra", "bgpd"):
            sh(
                "ip", "netns", "exec", self.leaf, str(FRR / daemon), "-d", "-N", self.leaf,
                "-F", "datacenter", "-f", str(conf), "-i", str(rundir / f"{daemon}.pid"),
            )  # fmt: skip

    def down(self) -> None:
        for ns in (self.host, self.leaf):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(Path("/var/run/frr") / self.leaf, ignore_errors=True)
        if os.environ.get("TERRACE_KEEP_LAB"):
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def vtysh(self, command: str) -> Any:
        out = sh("vtysh", "-N", self.leaf, "-c", command, check=False)
        try:
            return json.loads(out)
        except ValueError:
            return {"unparsed": out}

    def established(self) -> dict[str, str]:
        summary = self.vtysh("show bgp summary json")
        states: dict[str, str] = {}
        for family in ("ipv4Unicast", "ipv6Unicast"):
            for peer, info in summary.get(family, {}).get("peers", {}).items():
                states[peer] = info.get("state", "?")
        return states

    def leaf_prefixes(self, family: int) -> set[str]:
        afi = "ipv4" if family == 4 else "ipv6"
        return set(self.vtysh(f"show bgp {afi} unicast json").get("routes", {}))

    def leaf_kernel_routes(self) -> str:
        return sh("ip", "-n", self.leaf, "route") + sh("ip", "-n", self.leaf, "-6", "route")


@pytest.fixture
async def fabric() -> AsyncIterator[Fabric]:
    _require_lab()
    fabric = Fabric()
    try:
        fabric.up()
        yield fabric
    finally:
        fabric.down()


def host_state(revision: int, blocks: tuple[str, ...], borrowed: tuple[str, ...] = ()) -> HostState:
    return HostState(
        revision=revision,
        host=HostInfo(name="h1", rack="r1", asn=HOST_ASN, address=HOST4, address6=HOST6),
        peers=(
            Peer("leaf", 4, LEAF4, HOST4, LEAF_ASN, HOST_ASN, hold_time=9),
            Peer("leaf", 6, LEAF6, HOST6, LEAF_ASN, HOST_ASN, hold_time=9),
        ),
        blocks=tuple(Block(cidr, "net-a") for cidr in blocks),
        borrowed=tuple(Borrowed(a, "net-a") for a in borrowed),
    )


def speaker_in(fabric: Fabric) -> BgpSpeaker:
    command = ["ip", "netns", "exec", fabric.host, *default_exabgp_command()]
    return BgpSpeaker(fabric.dir / "speaker", exabgp_command=command)


def sessions_established(fabric: Fabric) -> bool:
    states = fabric.established()
    return states.get(HOST4) == states.get(HOST6) == "Established"


def end_of_rib_state(fabric: Fabric) -> dict[str, bool]:
    """Per session: did the leaf get our End-of-RIB since the session came up?"""
    received: dict[str, bool] = {}
    for peer, family in ((HOST4, "ipv4Unicast"), (HOST6, "ipv6Unicast")):
        info = fabric.vtysh(f"show bgp neighbors {peer} json").get(peer, {})
        eor = info.get("gracefulRestartInfo", {}).get("endOfRibRecv", {})
        received[peer] = bool(eor.get(family, False))
    return received


async def test_announce_withdraw_and_reinject_after_exabgp_dies(fabric: Fabric) -> None:
    speaker = speaker_in(fabric)
    leaf4 = partial(fabric.leaf_prefixes, 4)
    leaf6 = partial(fabric.leaf_prefixes, 6)
    try:
        blocks = ("10.64.0.0/28", "10.64.0.16/28", "2001:db8:64::/120")
        report = await speaker.apply(host_state(1, blocks, borrowed=("10.65.0.7",)))
        assert report.exabgp_pid, report
        await wait_until(
            "both sessions Established", partial(sessions_established, fabric), fabric.established
        )
        wanted4 = {"10.64.0.0/28", "10.64.0.16/28", "10.65.0.7/32"}
        await wait_until(
            "IPv4 blocks and the borrowed /32 at the leaf", lambda: wanted4 <= leaf4(), leaf4
        )
        await wait_until("IPv6 block at the leaf", lambda: "2001:db8:64::/120" in leaf6(), leaf6)
        await wait_until(
            "the leaf installs the block in its kernel",
            lambda: "10.64.0.0/28" in fabric.leaf_kernel_routes(),
            fabric.leaf_kernel_routes,
        )

        await speaker.apply(host_state(2, ("10.64.0.0/28",)))
        await wait_until(
            "withdrawn prefixes gone from the leaf",
            lambda: leaf4() == {"10.64.0.0/28"} and not leaf6(),
            lambda: (leaf4(), leaf6()),
        )
        assert speaker.report().announced == 1
        await wait_until(
            "speaker reports both sessions up",
            lambda: all(s["state"] == "up" for s in speaker.report().sessions),
            speaker.report,
        )

        old_pid = speaker.report().exabgp_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        seen_at_leaf: list[set[str]] = []

        def restarted_and_reinjected() -> bool:
            seen_at_leaf.append(leaf4())  # graceful restart: the leaf keeps it meanwhile
            report = speaker.report()
            return report.exabgp_pid not in (None, old_pid) and report.announced == 1

        await wait_until(
            "a new ExaBGP, everything re-injected", restarted_and_reinjected, speaker.report
        )
        assert all(s == {"10.64.0.0/28"} for s in seen_at_leaf), seen_at_leaf
        await wait_until("sessions back", partial(sessions_established, fabric), fabric.established)
        await wait_until(
            "End-of-RIB from the new ExaBGP in both families",
            lambda: all(end_of_rib_state(fabric).values()),
            partial(end_of_rib_state, fabric),
        )
        await wait_until("block still at the leaf", lambda: leaf4() == {"10.64.0.0/28"}, leaf4)
    finally:
        await speaker.close()


def established_count(fabric: Fabric) -> dict[str, Any]:
    """How often each session came up, per the leaf: a flap makes it grow."""
    counts: dict[str, Any] = {}
    for peer in (HOST4, HOST6):
        info = fabric.vtysh(f"show bgp neighbors {peer} json").get(peer, {})
        counts[peer] = info.get("connectionsEstablished")
    return counts


async def test_restarted_speaker_adopts_exabgp_without_a_flap(fabric: Fabric) -> None:
    first = speaker_in(fabric)
    leaf4 = partial(fabric.leaf_prefixes, 4)
    state = host_state(1, ("10.64.0.0/28", "2001:db8:64::/120"))
    await first.apply(state)
    await wait_until("sessions", partial(sessions_established, fabric), fabric.established)
    await wait_until("block at the leaf", lambda: "10.64.0.0/28" in leaf4(), leaf4)
    before = established_count(fabric)
    pid = first.report().exabgp_pid
    await first.close(stop_exabgp=False)  # as if the speaker was killed

    second = speaker_in(fabric)
    try:
        report = await second.apply(state)
        assert report.exabgp_pid == pid and report.announced == 2, report
        await second.apply(host_state(2, ("10.64.0.16/28",)))
        await wait_until("moved block at the leaf", lambda: leaf4() == {"10.64.0.16/28"}, leaf4)
        assert established_count(fabric) == before
    finally:
        await second.close()


def running(pid: int | None) -> bool:
    """Alive and not a zombie (the test process, its parent, has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_exabgp_of_a_speaker_that_stays_dead_withdraws_within_the_hold_time(
    fabric: Fabric,
) -> None:
    speaker = speaker_in(fabric)
    leaf4 = partial(fabric.leaf_prefixes, 4)
    await speaker.apply(host_state(1, ("10.64.0.0/28",)))
    await wait_until("block at the leaf", lambda: "10.64.0.0/28" in leaf4(), leaf4)
    pid = speaker.report().exabgp_pid
    await speaker.close(stop_exabgp=False)  # the speaker dies and nobody restarts it
    try:
        # hold time 9 s: the relay shuts ExaBGP down after 6 s alone, with a Cease
        await wait_until("routes withdrawn at the leaf", lambda: not leaf4(), leaf4, deadline=9)
        await wait_until("ExaBGP gone", lambda: not running(pid), fabric.established)
    finally:
        await speaker.close()


async def test_a_deliberate_stop_withdraws_at_once(fabric: Fabric) -> None:
    speaker = speaker_in(fabric)
    leaf4 = partial(fabric.leaf_prefixes, 4)
    leaf6 = partial(fabric.leaf_prefixes, 6)
    try:
        await speaker.apply(host_state(1, ("10.64.0.0/28", "2001:db8:64::/120")))
        await wait_until("blocks at the leaf", lambda: bool(leaf4() and leaf6()), leaf4)
    finally:
        await speaker.close()  # stop_exabgp=True: the host leaves the fabric
    # well under the graceful-restart time (120 s) the leaf would keep stale routes for
    await wait_until("no routes at the leaf", lambda: not leaf4() and not leaf6(), leaf4, 10)


async def test_changed_peers_restart_exabgp_and_keep_routes_at_the_leaf(fabric: Fabric) -> None:
    speaker = speaker_in(fabric)
    leaf4 = partial(fabric.leaf_prefixes, 4)
    leaf6 = partial(fabric.leaf_prefixes, 6)
    both = host_state(1, ("10.64.0.0/28", "2001:db8:64::/120"))
    v4_only = replace(both, revision=0, peers=both.peers[:1])
    try:
        await speaker.apply(v4_only)
        await wait_until("IPv4 block at the leaf", lambda: "10.64.0.0/28" in leaf4(), leaf4)
        assert not leaf6()
        first_pid = speaker.report().exabgp_pid

        await speaker.apply(both)
        assert speaker.report().exabgp_pid not in (None, first_pid), speaker.report()
        seen: list[set[str]] = []

        def ipv6_arrived() -> bool:
            seen.append(leaf4())  # graceful restart: the IPv4 session's route stays
            return "2001:db8:64::/120" in leaf6()

        await wait_until("IPv6 block over the new session", ipv6_arrived, leaf6)
        assert all("10.64.0.0/28" in s for s in seen), seen
    finally:
        await speaker.close()
