"""BgpSpeaker against a real FRR leaf: sessions, announcements, withdrawals, ExaBGP restarts."""

from __future__ import annotations

import asyncio
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
from pathlib import Path
from typing import Any

import pytest

from fabric.state import Block, Borrowed, HostInfo, HostState, Peer
from speaker.bgp import BgpSpeaker

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
    if subprocess.run([sys.executable, "-m", "exabgp", "version"], capture_output=True).returncode:
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


async def wait_for(what: str, probe: Callable[[], Any], deadline: float = 60.0) -> Any:
    """Poll `probe` until truthy; fail with the last value seen."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}")


LEAF_CONF = f"""frr defaults datacenter
hostname leaf
log file {{logdir}}/frr.log
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
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(Path("/var/run/frr") / self.leaf, ignore_errors=True)
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
    command = ["ip", "netns", "exec", fabric.host, sys.executable, "-m", "exabgp"]
    return BgpSpeaker(fabric.dir / "speaker", exabgp_command=command)


def both_up(fabric: Fabric) -> Callable[[], Any]:
    def probe() -> Any:
        states = fabric.established()
        return states if states.get(HOST4) == states.get(HOST6) == "Established" else None

    return probe


async def test_announce_withdraw_and_reinject_after_exabgp_dies(fabric: Fabric) -> None:
    speaker = speaker_in(fabric)
    try:
        blocks = ("10.64.0.0/28", "10.64.0.16/28", "2001:db8:64::/120")
        report = await speaker.apply(host_state(1, blocks, borrowed=("10.65.0.7",)))
        assert report.exabgp_pid, report
        await wait_for("both sessions Established", both_up(fabric))
        await wait_for(
            "IPv4 blocks and the borrowed /32 at the leaf",
            lambda: {"10.64.0.0/28", "10.64.0.16/28", "10.65.0.7/32"} <= fabric.leaf_prefixes(4)
            or fabric.leaf_prefixes(4),
        )
        assert {"10.64.0.0/28", "10.64.0.16/28", "10.65.0.7/32"} <= fabric.leaf_prefixes(4)
        await wait_for("IPv6 block at the leaf", lambda: "2001:db8:64::/120" in fabric.leaf_prefixes(6))
        await wait_for("the leaf installs the block", lambda: "10.64.0.0/28 nhid" in fabric.leaf_kernel_routes() or "10.64.0.0/28 via" in fabric.leaf_kernel_routes())

        await speaker.apply(host_state(2, ("10.64.0.0/28",)))
        await wait_for(
            "withdrawn prefixes gone from the leaf",
            lambda: fabric.leaf_prefixes(4) == {"10.64.0.0/28"} and not fabric.leaf_prefixes(6),
        )
        assert speaker.report().announced == 1
        sessions = speaker.report().sessions
        await wait_for(
            "speaker reports both sessions up",
            lambda: all(s["state"] == "up" for s in speaker.report().sessions) or sessions,
        )
        assert all(s["state"] == "up" for s in speaker.report().sessions), speaker.report()

        old_pid = speaker.report().exabgp_pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_for(
            "a new ExaBGP",
            lambda: speaker.report().exabgp_pid not in (None, old_pid) and speaker.report(),
        )
        await wait_for(
            "re-injected after the restart",
            lambda: speaker.report().announced == 1 and speaker.report(),
        )
        await wait_for("sessions back", both_up(fabric))
        await wait_for("block still at the leaf", lambda: fabric.leaf_prefixes(4) == {"10.64.0.0/28"})
    finally:
        await speaker.close()
