"""BGP part of a host's desired state: an ExaBGP child announcing the host's prefixes.

Pure half: `render_exabgp_config` (one session per peer in `state.peers`, graceful
restart, manual end-of-RIB), `desired_prefixes` (blocks and borrowed addresses) and
`batch_commands` (`terrace announce-nlri|withdraw-nlri ipv4|ipv6 <compact>`, the commands
`speaker.exabgp_launcher` adds to ExaBGP, one family per line, each line under
`MAX_LINE_BYTES`), `parse_api_line` (ExaBGP's JSON encoder).

Acting half: `BgpSpeaker` runs ExaBGP (through `speaker.exabgp_launcher`) with
`speaker.exabgp_relay` as its API process,
talks to it over a unix socket in its runtime directory, always drains acks and events,
announces what is desired and withdraws what is not, re-injects everything when ExaBGP
restarts (it loses its RIB), restarts it when the peers change, and adopts an ExaBGP left
running by a previous speaker (same config) so a speaker restart never drops a session.

It owns only its runtime directory and the ExaBGP it started. It must never announce
a prefix that is not in the desired state, and never send a routing change before the
caller has applied the firewall and the kernel routes for it (the agent's apply order).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fabric.state import HostState, Peer
from speaker.compact_nlri import encode_wire, nlri_wire, parse_prefix
from speaker.exabgp_launcher import ANNOUNCE_COMMAND, WITHDRAW_COMMAND

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 256 * 1024
"""Well under ExaBGP's 1 MiB API line limit; one line (~50,000 /32s) is one BGP batch."""

GRACEFUL_RESTART_SECONDS = 120
WITHDRAW_FLUSH_SECONDS = 1.0
"""ExaBGP acks `clear adj-rib out` when the withdrawals are queued, not yet sent."""
RELAY_SCRIPT = Path(__file__).with_name("exabgp_relay.py")
"""Run by path, not `-m`: it needs only the stdlib, whatever ExaBGP's cwd and sys.path."""
AFI = {4: "ipv4", 6: "ipv6"}
EXABGP_ENV = {
    "exabgp.daemon.user": "root",
    "exabgp.daemon.daemonize": "false",
    "exabgp.api.cli": "false",
    "exabgp.api.ack": "true",
    "exabgp.api.respawn": "true",
    "exabgp.log.destination": "stdout",
}

Action = Literal["announce", "withdraw"]


@dataclass(frozen=True, slots=True)
class Batch:
    """One API line and the prefixes it carries."""

    line: str
    prefixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    peer_address: str
    state: str


@dataclass(frozen=True, slots=True)
class Ack:
    ok: bool


@dataclass(frozen=True, slots=True)
class NeighborTable:
    states: dict[str, str]


ApiMessage = SessionEvent | Ack | NeighborTable


@dataclass(slots=True)
class BgpReport:
    """What BGP looks like after an apply: prefixes announced, sessions, ExaBGP's pid."""

    announced: int = 0
    desired: int = 0
    sessions: list[dict[str, Any]] = field(default_factory=list)
    exabgp_pid: int | None = None
    errors: list[str] = field(default_factory=list)


def desired_prefixes(state: HostState) -> set[str]:
    """The host's blocks and its borrowed single addresses, as canonical CIDRs."""
    prefixes = {str(ipaddress.ip_network(b.cidr)) for b in state.blocks}
    for borrowed in state.borrowed:
        ip = ipaddress.ip_address(borrowed.address)
        prefixes.add(f"{ip}/{ip.max_prefixlen}")
    return prefixes


def batch_commands(
    action: Action, prefixes: Iterable[str], *, max_bytes: int = MAX_LINE_BYTES
) -> list[Batch]:
    """`terrace announce-nlri|withdraw-nlri ipv4|ipv6 <compact>` lines (the launcher's
    commands) of at most `max_bytes`, one address family per line, in address order."""
    parsed = sorted((*parse_prefix(p), p) for p in set(prefixes))
    command = ANNOUNCE_COMMAND if action == "announce" else WITHDRAW_COMMAND
    batches: list[Batch] = []
    for family in (4, 6):
        head = f"{command} {AFI[family]} "
        budget = (max_bytes - len(head)) // 4 * 3  # wire bytes whose base64 fits
        wires: list[bytes] = []
        names: list[str] = []
        size = 0
        for _, packed, length, prefix in (p for p in parsed if p[0] == family):
            wire = nlri_wire(packed, length)
            if wires and size + len(wire) > budget:
                batches.append(Batch(head + encode_wire(wires), tuple(names)))
                wires, names, size = [], [], 0
            wires.append(wire)
            names.append(prefix)
            size += len(wire)
        if wires:
            batches.append(Batch(head + encode_wire(wires), tuple(names)))
    return batches


def _neighbor_block(peer: Peer, router_id: str, graceful_restart: int) -> str:
    return f"""neighbor {peer.peer_address} {{
    description "{peer.name}";
    router-id {router_id};
    local-address {peer.local_address};
    local-as {peer.local_asn};
    peer-as {peer.peer_asn};
    hold-time {peer.hold_time};
    manual-eor true;
    group-updates true;
    adj-rib-in false;
    capability {{
        graceful-restart {graceful_restart};
    }}
    family {{
        {AFI[peer.family]} unicast;
    }}
    api {{
        processes [ terrace ];
        neighbor-changes;
    }}
}}
"""


def render_exabgp_config(
    state: HostState, api_command: str, *, graceful_restart: int = GRACEFUL_RESTART_SECONDS
) -> str:
    """ExaBGP's configuration: the relay as API process, one neighbor per peer session."""
    router_id = state.host.address
    if ipaddress.ip_address(router_id).version != 4:
        v4 = [p.local_address for p in state.peers if p.family == 4]
        router_id = v4[0] if v4 else "0.0.0.1"
    process = f"process terrace {{\n    run {api_command};\n    encoder json;\n}}\n"
    peers = sorted(state.peers, key=lambda p: (p.family, p.peer_address))
    return process + "".join(
        "\n" + _neighbor_block(peer, router_id, graceful_restart) for peer in peers
    )


def _neighbor_state(neighbor: dict[str, Any]) -> str:
    """`up`, or the FSM state in lower case (idle, active, connect, opensent, ...)."""
    if neighbor.get("state") == "up" or str(neighbor.get("fsm")).lower() == "established":
        return "up"
    return str(neighbor.get("fsm") or neighbor.get("state") or "down").lower()


def parse_api_line(line: str) -> ApiMessage | None:
    """One line from ExaBGP: an ack, a session state change, or a neighbor table."""
    text = line.strip()
    if text in ("done", "error"):
        return Ack(ok=text == "done")
    if not text.startswith(("{", "[")):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if isinstance(doc, list):
        return NeighborTable(
            {
                str(n.get("peer", {}).get("address")): _neighbor_state(n)
                for n in doc
                if isinstance(n, dict)
            }
        )
    if doc.get("type") == "state":
        neighbor = doc.get("neighbor", {})
        peer = neighbor.get("address", {}).get("peer")
        return SessionEvent(str(peer), str(neighbor.get("state", "unknown")))
    return None


class ExabgpProcess:
    """The ExaBGP process: spawned by us, or adopted from a previous speaker via its pidfile."""

    def __init__(self, runtime_dir: Path, command: Sequence[str]) -> None:
        self.dir = runtime_dir
        self.command = list(command)
        self.config_path = runtime_dir / "exabgp.conf"
        self.pid_path = runtime_dir / "exabgp.pid"
        self.log_path = runtime_dir / "exabgp.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def running_config(self) -> str | None:
        """The config of an ExaBGP still running from before, if there is one."""
        try:
            pid = int(self.pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if str(self.config_path).encode() not in cmdline:
            return None
        self.pid = pid
        return self.config_path.read_text()

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        if self.pid is None:
            return False
        try:
            status = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return status != "Z"

    def start(self, config: str) -> int:
        self.config_path.write_text(config)
        env = {**os.environ, **EXABGP_ENV}
        with self.log_path.open("ab") as logfile:
            self.popen = subprocess.Popen(
                [*self.command, str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives a killed speaker; the next one adopts it
            )
        self.pid = self.popen.pid
        self.pid_path.write_text(str(self.pid))
        return self.pid

    def stop(self, sig: signal.Signals = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Either way the leaf keeps our routes (graceful restart) unless we withdrew them."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if self.popen is not None:
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        self.popen = None
        self.pid = None
        self.pid_path.unlink(missing_ok=True)

    def last_log_lines(self, count: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-count:])
        except OSError:
            return ""


def default_exabgp_command() -> list[str]:
    """ExaBGP with our compact announce/withdraw commands registered."""
    return [sys.executable, "-m", "speaker.exabgp_launcher"]


class BgpSpeaker:
    """Keeps an ExaBGP announcing exactly the desired prefixes of a `HostState`."""

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str],
        *,
        exabgp_command: Sequence[str] | None = None,
        graceful_restart: int = GRACEFUL_RESTART_SECONDS,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        orphan_timeout: float | None = None,
    ) -> None:
        self.dir = Path(runtime_dir)
        self.graceful_restart = graceful_restart
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.orphan_timeout = orphan_timeout
        self.process = ExabgpProcess(self.dir, exabgp_command or default_exabgp_command())
        self.socket_path = self.dir / "api.sock"
        self.announced_path = self.dir / "announced.json"
        self.desired: set[str] = set()
        self.announced: set[str] = set()
        self.peers: tuple[Peer, ...] = ()
        self.session_states: dict[str, str] = {}
        self.errors: list[str] = []
        self._config: str | None = None
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: deque[asyncio.Future[bool]] = deque()
        self._lock = asyncio.Lock()
        self._synced = asyncio.Event()
        self._connected = asyncio.Event()
        self._eor_due: set[str] = set()
        self._eor_sent: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._restarts = 0

    # ---- public --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for the relay now, so an ExaBGP left by a previous speaker keeps its
        sessions while the first desired state is still on its way (nothing is sent to
        it before the first `apply`)."""
        await self._listen()

    async def apply(self, state: HostState) -> BgpReport:
        """Announce `state`'s prefixes and withdraw the rest; (re)start ExaBGP if needed."""
        await self._listen()
        self.desired = desired_prefixes(state)
        self.peers = state.peers
        if not state.peers:
            await self._withdraw_everything()
            await self._stop_exabgp(signal.SIGTERM)
            return self.report()
        api = f"{sys.executable} {RELAY_SCRIPT} {self.socket_path} {self._orphan_seconds():g}"
        config = render_exabgp_config(state, api, graceful_restart=self.graceful_restart)
        if config != self._config or not self.process.alive():
            await self._start_or_adopt(config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
        await self._sync()
        return self.report()

    def _orphan_seconds(self) -> float:
        """How long ExaBGP outlives a dead speaker: under the shortest hold time, so a
        host whose speaker stays dead loses its routes at the leaf as fast as a dead host."""
        if self.orphan_timeout is not None:
            return self.orphan_timeout
        return max(2.0, min(p.hold_time for p in self.peers) * 2 / 3)

    def report(self) -> BgpReport:
        sessions = [
            {
                "name": p.name,
                "family": p.family,
                "peer_address": p.peer_address,
                "state": self.session_states.get(p.peer_address, "unknown"),
            }
            for p in self.peers
        ]
        return BgpReport(
            announced=len(self.announced),
            desired=len(self.desired),
            sessions=sessions,
            exabgp_pid=self.process.pid if self.process.alive() else None,
            errors=list(self.errors),
        )

    async def close(self, *, stop_exabgp: bool = True) -> None:
        """Stop talking to ExaBGP; unless told not to, withdraw everything and stop it."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        if stop_exabgp:
            await self._withdraw_everything()
            await self._stop_exabgp(signal.SIGTERM)
        for task in list(self._tasks):
            task.cancel()
        # Stop accepting first: a relay that reconnected now would keep its ExaBGP from
        # ever seeing itself orphaned.
        if self._server is not None:
            self._server.close()
            self._server = None
        self.socket_path.unlink(missing_ok=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._relays:  # each ends at the EOF of its closed connection
            await asyncio.wait(self._relays, timeout=1.0)

    # ---- process -------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._on_relay, path=str(self.socket_path))
        self._supervisor = asyncio.create_task(self._supervise())

    async def _start_or_adopt(self, config: str) -> None:
        if self._config is None and self.process.running_config() == config:
            self._config = config
            self.announced = self._load_announced()
            log.info("adopted running ExaBGP pid %s", self.process.pid)
            return
        await self._stop_exabgp(signal.SIGKILL)  # graceful restart keeps the leaf's routes
        self._config = config
        self._spawn()

    def _spawn(self) -> None:
        self.announced = set()
        self.announced_path.unlink(missing_ok=True)
        self.session_states = {}
        self._eor_due.clear()
        self._eor_sent.clear()
        pid = self.process.start(self._config or "")
        log.info("started ExaBGP pid %s", pid)

    async def _withdraw_everything(self) -> None:
        """Before a deliberate stop: ExaBGP closes its sessions without a Cease, and a
        leaf doing graceful restart would keep our routes as stale for minutes."""
        if self._writer is None or not self.process.alive():
            return
        async with self._lock:
            if await self._command("clear adj-rib out"):
                await asyncio.sleep(WITHDRAW_FLUSH_SECONDS)

    async def _stop_exabgp(self, sig: signal.Signals) -> None:
        if self.process.pid is not None:
            log.info("stopping ExaBGP pid %s with %s", self.process.pid, sig.name)
        await asyncio.to_thread(self.process.stop, sig)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._connected.clear()
        self._fail_acks()
        self._config = None
        self.announced = set()
        self.announced_path.unlink(missing_ok=True)
        self.session_states = {}

    async def _supervise(self) -> None:
        """Restart ExaBGP when it dies (with backoff), and refresh session states."""
        backoff = 0.5
        ticks = 0
        while True:
            await asyncio.sleep(0.5)
            ticks += 1
            if ticks % 10 == 0 and self._synced.is_set():
                self._spawn_task(self._refresh_sessions())
            if self._config is not None and not self.process.alive():
                tail = self.process.last_log_lines()
                self.errors = [f"ExaBGP exited; restarting. Last log lines:\n{tail}"]
                log.warning("ExaBGP pid %s exited; restarting", self.process.pid)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._restarts += 1
                self._spawn()
            elif self._writer is not None:  # up and talking: a later crash starts over
                backoff = 0.5

    # ---- API connection ------------------------------------------------------------

    async def _on_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A relay connected: the API of a new or adopted ExaBGP. Re-sync, then keep reading."""
        relay = asyncio.current_task()
        if relay is not None:
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)
        if self._writer is not None:
            self._writer.close()
        self._fail_acks()
        self._writer = writer
        self._connected.set()
        self._synced.clear()
        self._spawn_task(self._sync())
        try:
            while line := await reader.readline():
                self._handle(line.decode(errors="replace"))
        except ConnectionError:
            pass  # ExaBGP and its relay are gone; the supervisor restarts them
        finally:
            if self._writer is writer:
                self._writer = None
                self._connected.clear()
                self._fail_acks()
            writer.close()

    def _handle(self, line: str) -> None:
        message = parse_api_line(line)
        if isinstance(message, Ack):
            if self._acks:
                future = self._acks.popleft()
                if not future.done():
                    future.set_result(message.ok)
        elif isinstance(message, SessionEvent):
            self._on_session_event(message)
        elif isinstance(message, NeighborTable):
            self._on_neighbor_table(message)

    def _on_session_event(self, message: SessionEvent) -> None:
        previous = self.session_states.get(message.peer_address)
        self.session_states[message.peer_address] = message.state
        if previous != message.state:
            log.info("BGP session %s %s", message.peer_address, message.state)
        self._eor_sent.discard(message.peer_address)  # a new session needs its own
        self._eor_due.discard(message.peer_address)
        if message.state == "up":
            self._end_of_rib_due(message.peer_address)

    def _on_neighbor_table(self, message: NeighborTable) -> None:
        self.session_states.update(message.states)
        for peer, state in message.states.items():
            # sessions that came up while no relay was connected sent no event
            if state != "up":
                self._eor_sent.discard(peer)
            elif peer not in self._eor_sent and peer not in self._eor_due:
                self._end_of_rib_due(peer)

    def _end_of_rib_due(self, peer_address: str) -> None:
        self._eor_due.add(peer_address)
        self._spawn_task(self._end_of_rib())

    def _spawn_task(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_acks(self) -> None:
        while self._acks:
            future = self._acks.popleft()
            if not future.done():
                future.set_result(False)

    async def _command(self, line: str) -> bool:
        """Send one line and wait for its ack; False if refused or the relay went away."""
        writer = self._writer
        if writer is None:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks.append(future)
        writer.write(line.encode() + b"\n")
        try:
            await writer.drain()
            return await asyncio.wait_for(future, self.ack_timeout)
        except (OSError, TimeoutError):
            return False

    async def _sync(self) -> None:
        """Withdraw what is no longer desired, announce what is missing, in batches."""
        async with self._lock:
            if self._writer is None or self._config is None:
                return  # not connected, or no desired state yet: send nothing
            errors: list[str] = []
            for batch in batch_commands("withdraw", self.announced - self.desired):
                if await self._command(batch.line):
                    self.announced.difference_update(batch.prefixes)
                    log.info("withdrew %s", " ".join(batch.prefixes))
                else:
                    errors.append(f"ExaBGP refused: {batch.line[:120]}")
                    log.warning("%s", errors[-1])
            for batch in batch_commands("announce", self.desired - self.announced):
                if await self._command(batch.line):
                    self.announced.update(batch.prefixes)
                    log.info("announced %s", " ".join(batch.prefixes))
                else:
                    errors.append(f"ExaBGP refused: {batch.line[:120]}")
                    log.warning("%s", errors[-1])
            self._save_announced()
            await self._command("show neighbor json")
            self.errors = errors
            # End-of-RIB follows even a partly refused sync: a leaf waiting for it keeps
            # stale routes (which may be the very ones refused) for minutes
            self._synced.set()

    async def _refresh_sessions(self) -> None:
        async with self._lock:
            await self._command("show neighbor json")

    async def _end_of_rib(self) -> None:
        """After a session came up and a sync ran, tell its leaf our RIB is complete."""
        await self._synced.wait()
        async with self._lock:
            for peer_address in sorted(self._eor_due):
                self._eor_due.discard(peer_address)
                family = next((p.family for p in self.peers if p.peer_address == peer_address), 4)
                line = f"neighbor {peer_address} announce eor {AFI[family]} unicast"
                if await self._command(line):
                    self._eor_sent.add(peer_address)
                else:
                    log.warning("End-of-RIB to %s refused", peer_address)

    def _save_announced(self) -> None:
        tmp = self.announced_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.announced)))
        tmp.replace(self.announced_path)

    def _load_announced(self) -> set[str]:
        try:
            return set(json.loads(self.announced_path.read_text()))
        except (OSError, ValueError):
            return set()
