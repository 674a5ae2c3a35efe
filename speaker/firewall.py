"""The firewall reconciler: makes a host's iptables and ipsets match its desired state.

Owns the I/O around `fabric.policy`: reads what is installed (`iptables-save`,
`ip6tables-save`, `ipset save`; between periodic full reads it trusts its record of
its own chains, see `FirewallReconciler`), asks the compiler for the patch, and runs
it as one `ipset restore`, one `iptables-restore --noflush` and one
`ip6tables-restore --noflush` (plus one `ipset restore` that destroys sets, only when
some became stale: a set can only go after the last rule using it). It runs inside the
host's network namespace and simply calls the binaries through the runner it is given.

Must never flush a table, never touch a chain or set that is not Terrace's
(`TERRACE-…`, `tr-…`), and never edit a rule in FORWARD/INPUT that lacks our comment.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

from pyroute2 import Conntrack

from fabric.policy import (
    BASE_CHAINS,
    FAMILIES,
    Installed,
    Patch,
    RuleSet,
    compile_host_policy,
    counters_by_origin,
    parse_counters,
    parse_ipset_save,
    parse_iptables_save,
    plan,
)
from fabric.state import HostState

log = logging.getLogger(__name__)

_SAVE = {4: "iptables-save", 6: "ip6tables-save"}
_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}
_LIST = {4: "iptables", 6: "ip6tables"}
_WAIT = ("-w", "5")
"""Wait up to 5 s for the xtables lock (legacy backend; harmless with nf_tables)."""


class FirewallError(RuntimeError):
    """A firewall binary failed; the message holds its command and stderr."""


class Runner(Protocol):
    """Runs one command with optional stdin and returns its stdout; raises on failure."""

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> str: ...


def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """The real runner: the binaries of the namespace the speaker runs in."""
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        raise FirewallError(f"{' '.join(argv)} failed ({done.returncode}): {detail}")
    return done.stdout


FlowForgetter = Callable[[frozenset[str]], int]
"""Deletes the conntrack entries to or from some addresses; returns how many."""


def forget_conntrack(addresses: frozenset[str]) -> int:
    """Delete conntrack entries whose original direction involves one of `addresses`.

    Without this, a connection of a deleted endpoint stays ESTABLISHED in conntrack,
    and if its address is handed to a new endpoint (maybe of another network) the old
    peer's packets of that 5-tuple would still be accepted as replies.
    """
    if not addresses:
        return 0
    wanted = {ipaddress.ip_address(a) for a in addresses}
    deleted = 0
    with Conntrack() as conntrack:
        for entry in list(conntrack.dump_entries()):
            ends = (entry.tuple_orig.saddr, entry.tuple_orig.daddr)
            if any(end and ipaddress.ip_address(end) in wanted for end in ends):
                conntrack.delete(entry)
                deleted += 1
    return deleted


class FirewallReconciler:
    """Level-triggered: `apply` may be called with the same state any number of times.

    `forget_flows` (the speaker passes `forget_conntrack`; it must run in the host's
    namespace) is called after each apply with the addresses that left their network,
    so no ESTABLISHED entry outlives the endpoint that owned it.

    The first `apply`, any `apply` after a failure, and at least one every
    `resync_interval` seconds read everything back from the kernel. In between, the
    reconciler trusts its record of the chains it installed (reading ~20k rules back
    costs ~250 ms) but still reads the sets and the FORWARD/INPUT chains live, so a
    foreign rule inserted above our jump is fixed at the next apply. If a patch based
    on the record fails, it is retried once after a full read.
    """

    def __init__(
        self,
        runner: Runner = run_command,
        *,
        resync_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        forget_flows: FlowForgetter | None = None,
    ) -> None:
        self._run = runner
        self._forget_flows = forget_flows
        self._endpoint_addresses: frozenset[tuple[str, str]] = frozenset()
        self._to_forget: frozenset[str] = frozenset()
        self._resync_interval = resync_interval
        self._clock = clock
        self._record: Installed | None = None
        self._read_at = 0.0
        self.applied: RuleSet | None = None
        """The rule set installed by the last successful `apply` (hash → origin lookups)."""
        self.last_patch: Patch | None = None
        """The scripts the last `apply`/`remove_all` ran (empty when already in sync)."""

    def apply(self, state: HostState) -> None:
        """Compile the state, diff it against the kernel and install the difference."""
        desired = compile_host_policy(state)
        for problem in desired.problems:
            log.warning("policy for host %s: %s", state.host.name, problem)
        self._install(desired)
        self.applied = desired
        self._forget_departed(state)

    def _forget_departed(self, state: HostState) -> None:
        """After the rules are in place: drop the flows of addresses that left or moved.

        An address counts as departed when no endpoint of the same network holds it
        any more. Best effort: a failure is logged and retried at the next apply.
        """
        current = frozenset(
            (address, e.network_id)
            for e in state.endpoints
            for address in (e.ipv4, e.ipv6)
            if address
        )
        departed = frozenset(address for address, _ in self._endpoint_addresses - current)
        self._endpoint_addresses = current
        self._to_forget |= departed
        if not self._to_forget or self._forget_flows is None:
            return
        try:
            self._forget_flows(self._to_forget)
            self._to_forget = frozenset()
        except Exception:
            log.warning(
                "could not forget conntrack flows of %s", sorted(self._to_forget), exc_info=True
            )

    def remove_all(self) -> None:
        """Remove every Terrace chain, jump and set (endpoints become unfiltered)."""
        self._record = None
        self._install(RuleSet.empty())
        self.applied = None

    def installed(self) -> Installed:
        """What the kernel holds now, restricted to Terrace's objects and base chains."""
        saves = [[_SAVE[f], "-t", "filter"] for f in FAMILIES]
        sets_text, *tables_text = self._run_together([["ipset", "save"], *saves])
        tables = {
            f: parse_iptables_save(text) for f, text in zip(FAMILIES, tables_text, strict=True)
        }
        return Installed(sets=parse_ipset_save(sets_text), tables=tables)

    def counters(self) -> dict[str, int]:
        """Packets per rule hash (`tr:<hash>` comments), IPv4 and IPv6 summed."""
        totals: dict[str, int] = {}
        for text in self._run_together([[_SAVE[f], "-c", "-t", "filter"] for f in FAMILIES]):
            for rule_hash, packets in parse_counters(text).items():
                totals[rule_hash] = totals.get(rule_hash, 0) + packets
        return totals

    def counters_by_origin(self) -> dict[str, int]:
        """Packets per intent of the last applied rule set: `rule:<id>`,
        `same-network:<network id>`, `default-drop:<endpoint id>`,
        `spoofed-source:<endpoint id>`, … (empty before the first apply)."""
        if self.applied is None:
            return {}
        return counters_by_origin(self.counters(), self.applied)

    def _install(self, desired: RuleSet) -> None:
        trusted = self._trusted_view()
        if trusted is not None:
            try:
                self._patch(trusted, desired)
                return
            except Exception:  # the record was wrong: read everything, try once more
                log.warning("firewall patch from the record failed; resyncing", exc_info=True)
        self._record = None
        now = self._clock()
        self._patch(self.installed(), desired)
        self._read_at = now

    def _patch(self, installed: Installed, desired: RuleSet) -> None:
        patch = plan(installed, desired)
        self.last_patch = patch
        if patch.ipset:
            self._run(["ipset", "restore", "-exist"], patch.ipset)
        self._restore_tables(patch)
        if patch.ipset_cleanup:
            self._run(["ipset", "restore", "-exist"], patch.ipset_cleanup)
        self._record = desired.installed()

    def _trusted_view(self) -> Installed | None:
        """The record of our chains plus live sets and base chains, or None to read all."""
        record = self._record
        if record is None or self._clock() - self._read_at >= self._resync_interval:
            return None
        listings = [
            [_LIST[f], *_WAIT, "-t", "filter", "-S", c] for f in FAMILIES for c in BASE_CHAINS
        ]
        sets_text, *chains = self._run_together([["ipset", "save"], *listings])
        tables = {}
        for i, family in enumerate(FAMILIES):
            listing = "".join(chains[i * len(BASE_CHAINS) : (i + 1) * len(BASE_CHAINS)])
            base = parse_iptables_save(f"*filter\n{listing}COMMIT\n").base
            tables[family] = replace(record.tables[family], base=base)
        return Installed(sets=parse_ipset_save(sets_text), tables=tables)

    def _restore_tables(self, patch: Patch) -> None:
        """IPv4 and IPv6 are independent tables: restore them side by side."""
        commands = [
            ([_RESTORE[f], *_WAIT, "--noflush"], patch.iptables[f])
            for f in FAMILIES
            if patch.iptables.get(f)
        ]
        self._run_together([argv for argv, _ in commands], [script for _, script in commands])

    def _run_together(
        self, commands: Sequence[Sequence[str]], stdins: Sequence[str | None] | None = None
    ) -> list[str]:
        """Run independent commands concurrently; outputs in order; the first error raises."""
        inputs = list(stdins) if stdins is not None else [None] * len(commands)
        if len(commands) <= 1:
            return [self._run(argv, stdin) for argv, stdin in zip(commands, inputs, strict=True)]
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            futures = [
                pool.submit(self._run, argv, stdin)
                for argv, stdin in zip(commands, inputs, strict=True)
            ]
            return [future.result() for future in futures]
