"""`terrace lab sync`: keep the running FRR of a lab equal to the controller's rendering.

For each spine and leaf it fetches `GET /v1/fabric/routers/{name}/frr.conf`, gives the
log its local file (`lab.routers.localize`) and, when the text differs from what the
router runs, applies the difference. With `--watch` it follows the controller's change
feed (`GET /v1/events/stream`, server-sent events; `GET /v1/events?after=N` polled when
the stream is not available) and checks again after every change, coalescing bursts.

Applying: a change that only touches prefix-lists (a host's blocks came or went, the
common case and the one that decides how soon a new block is reachable) is sent as one
`ip prefix-list` command per changed prefix through `vtysh` (`prefix_list_commands`),
followed by a soft inbound refresh of that host's sessions; anything else goes through
FRR's `frr-reload.py`, which diffs the running config and applies the rest without
resetting sessions.

It owns only the lab's router config files. It never edits the rendered config beyond
the log line, and never touches a router that is not in the lab's plan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from lab import procs, routers
from lab.paths import LabError, LabPaths, node_netns
from speaker.client import ControllerClient

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.3
_PREFIX_LIST = re.compile(r"^(ip|ipv6) prefix-list (HOST-(\S+)-V[46]) seq \d+ (permit|deny) \S+$")
_ENTRY = re.compile(r"^(ip|ipv6) prefix-list (HOST-\S+-V[46]) seq (\d+) (permit|deny) (\S+)$")


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """Lines that leave and lines that come, between the running and the new config."""

    removed: tuple[str, ...]
    added: tuple[str, ...]

    @property
    def prefix_lists_only(self) -> bool:
        return all(_PREFIX_LIST.match(line) for line in (*self.removed, *self.added))

    def hosts(self) -> set[str]:
        """Hosts whose inbound prefix-list changes."""
        found = set()
        for line in (*self.removed, *self.added):
            match = _PREFIX_LIST.match(line)
            if match:
                found.add(match.group(3))
        return found


def config_change(old: str, new: str) -> ConfigChange:
    """The set difference of significant lines (comments and `!` dropped)."""

    def lines(text: str) -> list[str]:
        return [
            line.rstrip() for line in text.splitlines() if line.strip() and line[:1] not in "!#"
        ]

    old_lines, new_lines = lines(old), lines(new)
    old_set, new_set = set(old_lines), set(new_lines)
    return ConfigChange(
        removed=tuple(line for line in old_lines if line not in new_set),
        added=tuple(line for line in new_lines if line not in old_set),
    )


DENY_SEQ = 4_000_000_000
"""Where the running `deny any` of a host list is moved by the first incremental update:
far above the template's numbering, so new permits always find a free seq below it."""


@dataclass(slots=True)
class PrefixList:
    """One running prefix-list: permitted prefixes with their seq, and the `deny any` seq."""

    family: str  # "ip" or "ipv6"
    permits: dict[str, int]
    deny: int | None = None


def parse_prefix_lists(config: str) -> dict[str, PrefixList]:
    """The host prefix-lists of a config (`HOST-<host>-V4|V6`)."""
    lists: dict[str, PrefixList] = {}
    for line in config.splitlines():
        match = _ENTRY.match(line.rstrip())
        if not match:
            continue
        family, name, seq, action, prefix = match.groups()
        entry = lists.setdefault(name, PrefixList(family, {}))
        if action == "deny":
            entry.deny = int(seq)
        else:
            entry.permits[prefix] = int(seq)
    return lists


def prefix_list_commands(
    running: dict[str, PrefixList], wanted: dict[str, PrefixList]
) -> tuple[list[str], dict[str, PrefixList]]:
    """The vtysh config commands that make `running` permit what `wanted` permits, and
    the running lists afterwards.

    Only what changes is sent, one command per prefix: the rendered seq numbers shift
    when a prefix is inserted, so mirroring them would rewrite the rest of the list. An
    existing seq is never modified in place (FRR keeps the old `le` of the entry, so
    turning `seq N deny any` into a permit would permit every more-specific prefix):
    entries are only added and removed. Permits are added before anything is removed.
    """
    commands: list[str] = []
    after: dict[str, PrefixList] = {}
    for name in sorted(set(running) | set(wanted)):
        old = running.get(name) or PrefixList(wanted[name].family, {})
        new = wanted.get(name)
        head = f"{old.family} prefix-list {name}"
        if new is None:
            commands.append(f"no {head}")
            continue
        state = PrefixList(old.family, dict(old.permits), old.deny)
        if state.deny != DENY_SEQ:
            commands.append(f"{head} seq {DENY_SEQ} deny any")
        used = {*state.permits.values(), *([state.deny] if state.deny is not None else [])}
        for prefix in sorted(set(new.permits) - set(state.permits), key=new.permits.__getitem__):
            seq = _free_seq(new.permits[prefix], used)
            used.add(seq)
            state.permits[prefix] = seq
            commands.append(f"{head} seq {seq} permit {prefix}")
        for prefix in sorted(set(state.permits) - set(new.permits)):
            commands.append(f"no {head} seq {state.permits.pop(prefix)} permit {prefix}")
        if state.deny is not None and state.deny != DENY_SEQ:
            commands.append(f"no {head} seq {state.deny} deny any")
        state.deny = DENY_SEQ
        after[name] = state
    return commands, after


def _free_seq(preferred: int, used: set[int]) -> int:
    seq = preferred
    while seq in used or seq >= DENY_SEQ:
        seq = seq + 1 if seq + 1 < DENY_SEQ else 1
    return seq


class FabricSync:
    """Renders and applies the configs of `router_names` in lab `paths`."""

    def __init__(self, paths: LabPaths, token: str, router_names: Sequence[str]) -> None:
        self.paths = paths
        self.token = token
        self.routers = tuple(router_names)
        self.applied: dict[str, str] = {}
        self.lists: dict[str, dict[str, PrefixList]] = {}
        for router in self.routers:
            try:
                self.applied[router] = routers.config_path(paths, router).read_text()
            except OSError:
                self.applied[router] = ""
            self.lists[router] = parse_prefix_lists(self.applied[router])

    async def sync_once(self, client: ControllerClient) -> list[str]:
        """Bring every router up to date; returns the routers that changed."""
        texts = await asyncio.gather(
            *(client.request("GET", f"/v1/fabric/routers/{r}/frr.conf") for r in self.routers)
        )
        wanted = {
            router: routers.localize(text, routers.log_path(self.paths, router))
            for router, text in zip(self.routers, texts, strict=True)
        }
        changed = [r for r in self.routers if wanted[r] != self.applied.get(r)]
        results = await asyncio.gather(
            *(asyncio.to_thread(self._apply, r, wanted[r]) for r in changed),
            return_exceptions=True,
        )
        failed = [r for r, result in zip(changed, results, strict=True) if result is not None]
        for router, result in zip(changed, results, strict=True):
            if isinstance(result, BaseException):
                log.error("router %s: %s", router, result)
        if failed:
            raise LabError(f"routers not in sync: {', '.join(failed)}")
        return changed

    def _apply(self, router: str, config: str) -> None:
        change = config_change(self.applied.get(router, ""), config)
        started = time.monotonic()
        if self.applied.get(router) and self.lists[router] and change.prefix_lists_only:
            self._apply_prefix_lists(router, change, config)
            routers.config_path(self.paths, router).write_text(config)
            how = "prefix-lists"
        else:
            routers.reload_router(self.paths, router, config)
            self.lists[router] = parse_prefix_lists(config)
            how = "frr-reload"
        self.applied[router] = config
        log.info(
            "router %s: -%d +%d lines applied (%s, %.0f ms)",
            router,
            len(change.removed),
            len(change.added),
            how,
            (time.monotonic() - started) * 1000,
        )
        for line in (*(f"- {x}" for x in change.removed), *(f"+ {x}" for x in change.added))[:40]:
            log.debug("router %s: %s", router, line)

    def _apply_prefix_lists(self, router: str, change: ConfigChange, config: str) -> None:
        edits, after = prefix_list_commands(self.lists[router], parse_prefix_lists(config))
        commands = ["configure terminal", *edits, "end"]
        for host in sorted(change.hosts()):
            commands += [f"clear bgp {afi} unicast {peer} soft in" for afi, peer in _peers(
                config, host
            )]  # fmt: skip
        argv = ["vtysh", "-N", node_netns(self.paths.name, router)]
        for command in commands:
            argv += ["-c", command]
        done = procs.run(argv, check=False, timeout=30)
        if done.returncode != 0:
            self.lists[router] = {}  # unknown now: the next change goes through frr-reload
            raise LabError(f"router {router}: vtysh refused: {(done.stdout + done.stderr)[-500:]}")
        self.lists[router] = after


def _peers(config: str, host: str) -> list[tuple[str, str]]:
    """(afi, neighbor address) of the sessions to `host` in a leaf config."""
    found = []
    for match in re.finditer(r"^ neighbor (\S+) description host (\S+) via", config, re.M):
        if match.group(2) == host:
            address = match.group(1)
            found.append(("ipv6" if ":" in address else "ipv4", address))
    return found


# ---------------------------------------------------------------------------- watch


async def watch(sync: FabricSync, *, stop: asyncio.Event | None = None) -> None:
    """Sync now, then after every change the controller reports, until `stop`."""
    stop = stop or asyncio.Event()
    dirty = asyncio.Event()
    dirty.set()
    async with ControllerClient(sync.paths.url, sync.token) as client:
        follower = asyncio.create_task(_follow_events(client, sync, dirty))
        try:
            while not stop.is_set():
                waiter = asyncio.create_task(dirty.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if stop.is_set():
                    break
                dirty.clear()
                try:
                    await sync.sync_once(client)
                except Exception as exc:  # the controller restarting: retry on the next event
                    log.warning("sync failed, retrying: %s", exc)
                    await asyncio.sleep(1)
                    dirty.set()
        finally:
            follower.cancel()


async def _follow_events(client: ControllerClient, sync: FabricSync, dirty: asyncio.Event) -> None:
    after = await _latest_event(client)
    while True:
        try:
            after = await _stream_events(sync, after, dirty)
        except _NoStream:
            after = await _poll_events(client, after, dirty)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("event stream interrupted (%s); reconnecting", exc)
            dirty.set()  # a change may have been missed while disconnected
            await asyncio.sleep(0.5)


class _NoStream(Exception):
    pass


async def _latest_event(client: ControllerClient) -> int:
    while True:
        try:
            events = await client.request("GET", "/v1/events", params={"after": 0, "limit": 1000})
            return max((int(e["id"]) for e in events), default=0)
        except Exception as exc:
            log.info("controller not ready (%s)", exc)
            await asyncio.sleep(0.5)


async def _stream_events(sync: FabricSync, after: int, dirty: asyncio.Event) -> int:
    connector = aiohttp.UnixConnector(path=str(sync.paths.socket))
    headers = {"Authorization": f"Bearer {sync.token}", "Last-Event-ID": str(after)}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get("http://terrace/v1/events/stream", headers=headers) as resp,
    ):
        if resp.status == 404 or not resp.content_type.startswith("text/event-stream"):
            raise _NoStream
        async for raw in resp.content:
            line = raw.decode(errors="replace").strip()
            if line.startswith("id:") and line[3:].strip().isdigit():
                after = int(line[3:].strip())
            elif line.startswith("data:"):
                _note(json.loads(line[5:]), dirty)
    return after


async def _poll_events(client: ControllerClient, after: int, dirty: asyncio.Event) -> int:
    """The fallback for a controller without the stream: poll every 0.3 s for a while."""
    for _ in range(200):
        events = await client.request("GET", "/v1/events", params={"after": after, "limit": 1000})
        for event in events:
            after = max(after, int(event["id"]))
            _note(event, dirty)
        await asyncio.sleep(POLL_INTERVAL)
    return after


def _note(event: dict[str, object], dirty: asyncio.Event) -> None:
    # Rules and tenants never change a router; everything else may (blocks, borrowed
    # addresses, subnets, fabric, hosts), so those are checked rather than guessed.
    if event.get("kind") not in ("rule", "tenant"):
        dirty.set()
