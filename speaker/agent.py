"""The speaker's main loop: long-poll the host's desired state, apply it in order, report.

Apply order (ARCHITECTURE invariant 4): firewall, then kernel, then BGP for everything
that appears; BGP, then kernel, then firewall for everything that goes away. It is done
in two passes over whole states: when something leaves, a *bridge* state (the new state
plus what is leaving) is applied forward, firewall → kernel → BGP, which only adds; then
the new state is applied in reverse, BGP → kernel → firewall, which only removes. When
nothing leaves, one forward pass is enough. A failed step stops its pass, so nothing is
announced or routed before the steps before it succeeded; the next round retries.

This module owns the loop, the retries and the status report. It must never talk to
the kernel, iptables or ExaBGP itself (the reconcilers do), and never import the
controller: the only contract with it is `fabric.state.HostState` over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from fabric.state import HostState
from speaker.bgp import BgpReport
from speaker.kernel import KernelReport

log = logging.getLogger(__name__)

RETRY_SOON = 1.0
"""Poll timeout while something is pending (a missing netns, a failed step)."""

MAX_COUNTERS_REPORTED = 500


class Firewall(Protocol):
    def apply(self, state: HostState) -> None: ...

    def remove_all(self) -> None: ...

    def counters(self) -> dict[str, int]: ...


class Kernel(Protocol):
    def apply(self, state: HostState) -> KernelReport: ...


class Bgp(Protocol):
    async def start(self) -> None: ...

    async def apply(self, state: HostState) -> BgpReport: ...

    def report(self) -> BgpReport: ...

    async def close(self, *, stop_exabgp: bool = True) -> None: ...


class StateSource(Protocol):
    """The controller as the speaker sees it (`speaker.client.ControllerClient`)."""

    async def desired_state(self, host: str, after: int, timeout: float) -> dict[str, Any]: ...

    async def post_status(self, host: str, status: dict[str, Any]) -> None: ...


def _merge(new: Sequence[Any], old: Sequence[Any], key: str) -> tuple[Any, ...]:
    """`new`, then the items of `old` whose key is not in `new`."""
    present = {getattr(item, key) for item in new}
    return (*new, *(item for item in old if getattr(item, key) not in present))


def bridge_state(previous: HostState | None, new: HostState) -> HostState | None:
    """`new` plus what `previous` had and `new` drops; None when nothing is dropped.

    Applying the bridge only adds; applying `new` after it only removes. Leaving
    endpoints whose addresses are reused by a new endpoint are left out of the bridge
    (two routes for one address cannot coexist; the old one is going anyway).
    """
    if previous is None:
        return None
    new_ids = {e.id for e in new.endpoints}
    used = {a for e in new.endpoints for a in (e.ipv4, e.ipv6) if a}
    leaving = tuple(
        e for e in previous.endpoints if e.id not in new_ids and not ({e.ipv4, e.ipv6} & used)
    )
    new_cidrs = {b.cidr for b in new.blocks}
    new_borrowed = {b.address for b in new.borrowed}
    dropped = (
        leaving
        or any(b.cidr not in new_cidrs for b in previous.blocks)
        or any(b.address not in new_borrowed for b in previous.borrowed)
    )
    if not dropped:
        return None
    return replace(
        new,
        endpoints=(*new.endpoints, *leaving),
        blocks=_merge(new.blocks, previous.blocks, "cidr"),
        borrowed=_merge(new.borrowed, previous.borrowed, "address"),
        networks=_merge(new.networks, previous.networks, "id"),
    )


@dataclass(slots=True)
class ApplyResult:
    """One round: which revision is in place and what each reconciler said."""

    revision: int | None = None
    kernel: KernelReport | None = None
    bgp: BgpReport | None = None
    error: str | None = None
    pending: dict[str, str] = field(default_factory=dict)


class Speaker:
    """Applies states in the fixed order and remembers the last one fully applied."""

    def __init__(self, firewall: Firewall, kernel: Kernel, bgp: Bgp) -> None:
        self.firewall = firewall
        self.kernel = kernel
        self.bgp = bgp
        self.applied: HostState | None = None

    async def apply(self, state: HostState) -> ApplyResult:
        result = ApplyResult(revision=self.applied.revision if self.applied else None)
        bridge = bridge_state(self.applied, state)
        try:
            if bridge is None:
                await self._forward(state, result)
            else:
                await self._forward(bridge, result)
                await self._reverse(state, result)
        except Exception as exc:  # reported and retried next round; never crash the loop
            log.warning("revision %s not applied: %s", state.revision, exc)
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        self.applied = state
        result.revision = state.revision
        return result

    async def _forward(self, state: HostState, result: ApplyResult) -> None:
        await asyncio.to_thread(self.firewall.apply, state)
        result.kernel = await asyncio.to_thread(self.kernel.apply, state)
        result.bgp = await self.bgp.apply(state)

    async def _reverse(self, state: HostState, result: ApplyResult) -> None:
        result.bgp = await self.bgp.apply(state)
        result.kernel = await asyncio.to_thread(self.kernel.apply, state)
        await asyncio.to_thread(self.firewall.apply, state)


def status_document(speaker: Speaker, result: ApplyResult) -> dict[str, Any]:
    """The body of `POST /v1/hosts/{name}/status`."""
    bgp = speaker.bgp.report()
    kernel = result.kernel or KernelReport()
    errors = [*kernel.errors, *kernel.problems, *bgp.errors]
    if result.error:
        errors.insert(0, result.error)
    try:
        counters = speaker.firewall.counters()
    except Exception as exc:
        counters = {}
        errors.append(f"firewall counters: {exc}")
    top = dict(sorted(counters.items(), key=lambda kv: -kv[1])[:MAX_COUNTERS_REPORTED])
    return {
        "applied_revision": result.revision,
        "last_error": "; ".join(errors)[:2000] if errors else None,
        "bgp": {
            "sessions": bgp.sessions,
            "announced": bgp.announced,
            "desired": bgp.desired,
            "exabgp_pid": bgp.exabgp_pid,
        },
        "counts": {
            "endpoints": kernel.endpoints,
            "routes": kernel.routes,
            "pending_endpoints": len(kernel.skipped),
            "announced": bgp.announced,
            "firewall_rules": len(counters),
        },
        "pending_endpoints": kernel.skipped,
        "firewall_counters": top,
    }


def _describe(result: ApplyResult) -> str:
    kernel = result.kernel
    bgp = result.bgp
    parts = [f"revision {result.revision}"]
    if kernel is not None:
        parts.append(f"kernel {kernel.changes} changes, {kernel.endpoints} endpoints")
        if kernel.skipped:
            parts.append(f"{len(kernel.skipped)} endpoints waiting for their netns")
    if bgp is not None:
        parts.append(f"{bgp.announced}/{bgp.desired} prefixes announced")
    return ", ".join(parts)


async def run_speaker(
    controller_url: str,
    host: str,
    token: str,
    *,
    firewall: Firewall,
    kernel: Kernel,
    bgp: Bgp,
    poll_timeout: float = 30,
    client: StateSource | None = None,
    stop: asyncio.Event | None = None,
    backoff: tuple[float, float] = (0.5, 10.0),
    withdraw_on_exit: bool = False,
) -> None:
    """Reconcile `host` to its desired state until `stop` is set (or forever)."""
    if client is None:
        from speaker.client import ControllerClient

        client = ControllerClient(controller_url, token)
    stop = stop or asyncio.Event()
    speaker = Speaker(firewall, kernel, bgp)
    try:
        await bgp.start()
        await _loop(host, client, speaker, stop, poll_timeout=poll_timeout, backoff=backoff)
    finally:
        await bgp.close(stop_exabgp=withdraw_on_exit)
        closer = getattr(client, "close", None)
        if closer is not None:
            await closer()


async def _loop(
    host: str,
    client: StateSource,
    speaker: Speaker,
    stop: asyncio.Event,
    *,
    poll_timeout: float,
    backoff: tuple[float, float],
) -> None:
    delay = backoff[0]
    pending = False
    outage = False
    while not stop.is_set():
        after = speaker.applied.revision if speaker.applied else -1
        try:
            doc = await _until_stopped(
                client.desired_state(host, after, RETRY_SOON if pending else poll_timeout), stop
            )
            if doc is None:
                return
            state = HostState.from_json(doc)
        except Exception as exc:  # controller down, bad answer: keep the last state, retry
            if not outage:
                log.warning("controller unavailable, keeping revision %s: %s", after, exc)
            outage = True
            await _sleep_unless_stopped(delay, stop)
            delay = min(delay * 2, backoff[1])
            continue
        if outage:
            log.info("controller reachable again")
        outage, delay = False, backoff[0]
        changed = state.revision != after
        result = await speaker.apply(state)
        kernel = result.kernel
        pending = bool(result.error or (kernel and (kernel.skipped or kernel.errors)))
        if changed or (result.kernel and result.kernel.changes):
            log.info("%s", _describe(result))
        await _post_status(client, host, status_document(speaker, result))


async def _post_status(client: StateSource, host: str, status: dict[str, Any]) -> None:
    try:
        await client.post_status(host, status)
    except Exception as exc:  # the next round reports again
        log.debug("status not posted: %s", exc)


async def _until_stopped(work: Any, stop: asyncio.Event) -> Any:
    """Await `work` unless `stop` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# ---- command line: `terrace speaker` ------------------------------------------------


def add_speaker_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--controller",
        default=env("TERRACE_CONTROLLER"),
        help="controller URL or unix:PATH (env TERRACE_CONTROLLER)",
    )
    parser.add_argument("--host", default=env("TERRACE_HOST"), help="this host's name")
    parser.add_argument(
        "--token-file", default=env("TERRACE_TOKEN_FILE"), help="file holding the host token"
    )
    parser.add_argument(
        "--runtime-dir",
        default=None,
        help="ExaBGP config, pid and API socket (default /run/terrace/speaker-HOST)",
    )
    parser.add_argument("--poll-timeout", type=float, default=30.0)
    parser.add_argument(
        "--withdraw-on-exit",
        action="store_true",
        help="stop ExaBGP on exit (withdraws the host's routes); by default it keeps "
        "running so a restarted speaker adopts it without a session flap",
    )
    parser.add_argument("--log-level", default=env("TERRACE_LOG_LEVEL", "INFO"))


def speaker_main(args: argparse.Namespace) -> int:
    """Entry point of `terrace speaker`; returns the exit status."""
    missing = [f"--{n}" for n in ("controller", "host", "token_file") if not getattr(args, n)]
    if missing:
        print(f"terrace speaker: missing {', '.join(m.replace('_', '-') for m in missing)}")
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        print(f"terrace speaker: cannot read the token file {args.token_file}: {exc}")
        return 2
    from speaker.bgp import BgpSpeaker
    from speaker.firewall import FirewallReconciler, forget_conntrack
    from speaker.kernel import KernelReconciler

    runtime_dir = args.runtime_dir or f"/run/terrace/speaker-{args.host}"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_speaker(
            args.controller,
            args.host,
            token,
            poll_timeout=args.poll_timeout,
            stop=stop,
            withdraw_on_exit=args.withdraw_on_exit,
            # Forget a deleted endpoint's conntrack flows: its address may be reused.
            firewall=FirewallReconciler(forget_flows=forget_conntrack),
            kernel=KernelReconciler(),
            bgp=BgpSpeaker(runtime_dir),
        )

    asyncio.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="terrace speaker")
    add_speaker_arguments(parser)
    return speaker_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
