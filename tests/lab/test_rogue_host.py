"""R8: a rogue host announces what is not its own; the leaf keeps the fabric honest.

h2's speaker is replaced by one that runs Terrace's own BGP code (`BgpSpeaker`, adopting
h2's running ExaBGP) on a tampered desired state: h2's real state plus the victim host
h1's block, more-specifics of the victim's addresses (a hijack by longest match) and a
default route. ExaBGP accepts and sends all of it; leaf1's per-host inbound filter must
drop every one, so no router learns them from h2 and a continuous ping from rack r2 to
the victim loses nothing. A real speaker restarted on h2 then withdraws the lot.

Hosts: h1, h2 in rack r1 (leaf1); h3, h4 in rack r2 (leaf2).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from lab import procs
from tests.conftest import record_figure
from tests.lab.conftest import Lab

pytestmark = pytest.mark.lab

ROGUE = """
import asyncio, json, sys
from fabric.state import HostState
from speaker.bgp import BgpSpeaker

async def main() -> None:
    state = HostState.from_json(json.loads(sys.stdin.read()))
    bgp = BgpSpeaker(sys.argv[1])
    await bgp.start()
    report = await bgp.apply(state)
    print(json.dumps({"announced": sorted(bgp.announced), "errors": report.errors}))
    await bgp.close(stop_exabgp=False)

asyncio.run(main())
"""


def _single(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _tampered(state: dict[str, Any], victim_blocks: list[dict[str, Any]],
              victim: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:  # fmt: skip
    """h2's state plus what belongs to h1 (and to nobody), and the prefixes added."""
    network_id = victim_blocks[0]["network_id"]
    stolen = [{"cidr": b["cidr"], "network_id": b["network_id"]} for b in victim_blocks]
    stolen += [{"cidr": "0.0.0.0/0", "network_id": network_id},
               {"cidr": "::/0", "network_id": network_id}]  # fmt: skip
    borrowed = [{"address": victim[f], "network_id": network_id} for f in ("ipv4", "ipv6")]
    doc = {**state, "blocks": [*state["blocks"], *stolen],
           "borrowed": [*state["borrowed"], *borrowed]}  # fmt: skip
    added = {b["cidr"] for b in stolen} | {_single(b["address"]) for b in borrowed}
    return doc, added


def _peer_address(lab: Lab, router: str, node: str, family: int) -> str:
    for iface in lab.plan.interfaces_of(router):
        if iface.peer == node:
            return str(getattr(iface, f"peer_address{family}")).split("/")[0]
    raise AssertionError(f"{router} has no link to {node}")


def _updates_from(lab: Lab, router: str, node: str) -> int:
    """BGP UPDATE messages `router` received from `node`, both families."""
    total = 0
    for family in (4, 6):
        peer = _peer_address(lab, router, node, family)
        doc = lab.vtysh_json(router, f"show bgp neighbors {peer} json")
        total += int(doc.get(peer, {}).get("messageStats", {}).get("updatesRecv", 0))
    return total


def _paths_through(lab: Lab, asn: int, prefixes: set[str]) -> dict[str, list[str]]:
    """Per router, the given prefixes it holds with `asn` in a path (or at all, for
    prefixes that belong to nobody)."""
    found: dict[str, list[str]] = {}
    for router in lab.plan.routers:
        for family in (4, 6):
            table = lab.vtysh_json(router, f"show bgp ipv{family} unicast json")
            for prefix, paths in (table.get("routes") or {}).items():
                if prefix not in prefixes:
                    continue
                through = [p for p in paths if str(asn) in str(p.get("path", "")).split()]
                if through:
                    found.setdefault(router, []).append(f"{prefix} via {through[0]['path']}")
    return found


def _announced(lab: Lab, host: str) -> set[str] | None:
    """What the host's speaker last recorded as announced (None before its first sync)."""
    try:
        return set(json.loads((lab.paths.speaker_dir(host) / "announced.json").read_text()))
    except (OSError, ValueError):
        return None


def _pinger(netns: str, address: str) -> subprocess.Popen[str]:
    family = "-6" if ":" in address else "-4"
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "ping", family, "-n", "-i", "0.05", "-W", "1", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop_pinger(pinger: subprocess.Popen[str]) -> tuple[int, int, str]:
    """SIGINT (ping prints its summary), then (sent, received, output)."""
    pinger.send_signal(signal.SIGINT)
    output = pinger.communicate(timeout=10)[0]
    for line in output.splitlines():
        if "packets transmitted" in line:
            parts = line.split()
            return int(parts[0]), int(parts[3]), output
    return 0, 0, output


def test_rogue_host_announcing_another_hosts_block_is_rejected_by_its_leaf(lab: Lab) -> None:
    network = lab.network(block4=28, block6=120)
    victim = lab.container_add("h1", lab.unique("victim"), network["id"])
    client = lab.container_add("h3", lab.unique("client"), network["id"])
    for family in ("ipv4", "ipv6"):
        lab.wait_ping(client["name"], victim[family])
    h1_state = lab.api.get("/v1/hosts/h1/desired-state", timeout=0)
    victim_blocks = [b for b in h1_state["blocks"] if b["network_id"] == network["id"]]
    assert victim_blocks, h1_state["blocks"]
    rogue_state, stolen = _tampered(
        lab.api.get("/v1/hosts/h2/desired-state", timeout=0), victim_blocks, victim
    )
    rogue_asn = lab.plan.hosts["h2"].asn
    updates_before = _updates_from(lab, "leaf1", "h2")

    pingers = [_pinger(client["netns"], victim[f]) for f in ("ipv4", "ipv6")]
    speaker = lab.speaker_pid("h2")
    assert speaker is not None
    os.kill(speaker, signal.SIGKILL)  # its ExaBGP keeps running; the rogue adopts it
    try:
        lab.wait("h2's speaker to be gone", lambda: not procs.alive(speaker), lambda: speaker)
        rogue = subprocess.run(
            ["ip", "netns", "exec", lab.host_netns("h2"), sys.executable, "-c", ROGUE,
             str(lab.paths.speaker_dir("h2"))],
            input=json.dumps(rogue_state), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert rogue.returncode == 0, rogue.stderr[-2000:]
        report = json.loads(rogue.stdout.strip().splitlines()[-1])
        assert stolen <= set(report["announced"]), report  # ExaBGP sent them all
        lab.wait(
            "leaf1 to receive h2's rogue UPDATEs",
            lambda: _updates_from(lab, "leaf1", "h2") > updates_before,
            lambda: f"updates from h2: {_updates_from(lab, 'leaf1', 'h2')}",
        )
        # The leaf answered them (its UPDATE count moved): nothing of it anywhere.
        accepted = lab.prefixes_from("leaf1", "h2") & stolen
        learned = _paths_through(lab, rogue_asn, stolen)
        record_figure("R8", "rogue prefixes sent by h2 / accepted by leaf1",
                      f"{len(stolen)} / {len(accepted)}")  # fmt: skip
        assert accepted == set()
        assert learned == {}
        time.sleep(1)  # the window: traffic to the victim keeps flowing after the hijack
    finally:
        results = [_stop_pinger(p) for p in pingers]
        lab.start_speaker("h2")
    for family, (sent, received, output) in zip(("ipv4", "ipv6"), results, strict=True):
        record_figure("R8", f"{family} pings to the victim lost during the hijack",
                      f"{sent - received} of {sent}")  # fmt: skip
        assert sent > 10 and received == sent, output
    lab.wait_host_applied("h2")
    lab.wait(
        "h2's real speaker to withdraw the rogue prefixes from its ExaBGP",
        lambda: (announced := _announced(lab, "h2")) is not None and not stolen & announced,
        lambda: _announced(lab, "h2"),
    )
    lab.container_rm(victim["name"])
    lab.container_rm(client["name"])
