"""ExaBGP's API process: relays its stdin/stdout to the speaker over a unix socket.

ExaBGP starts this as `python .../speaker/exabgp_relay.py SOCKET` (stdlib only). Lines
the speaker sends on the socket go to ExaBGP (commands); every line ExaBGP writes (acks,
JSON events, answers) goes back to the speaker, or is dropped while none is connected. The
relay always keeps reading ExaBGP's output (an API process that stops reading blocks
ExaBGP), reconnects when the speaker restarts, and exits only when ExaBGP closes its
stdin (ExaBGP is gone). It must never interpret or change a line.

Two lines are its own: when no speaker has been connected for ORPHAN_SECONDS, it tells
ExaBGP `clear adj-rib out` (withdraw everything) and then `shutdown`. A plain shutdown
would not do: ExaBGP closes its sessions without a Cease, and a leaf doing graceful
restart would keep the host's routes as stale for minutes. So a host whose speaker
stays dead stops attracting traffic within the hold time, while a speaker that restarts
within ORPHAN_SECONDS finds its ExaBGP and sessions intact.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

RECONNECT_INTERVAL = 0.1


class Relay:
    def __init__(self, path: str, orphan_seconds: float) -> None:
        self.path = path
        self.orphan_seconds = orphan_seconds
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.answered = threading.Event()
        self.conn: socket.socket | None = None
        self.alone_since = time.monotonic()

    def watch_for_orphanhood(self) -> None:
        """Ask ExaBGP to shut down once no speaker has been connected for too long."""
        while True:
            time.sleep(0.25)
            with self.lock:
                orphaned = self.conn is None and (
                    time.monotonic() - self.alone_since > self.orphan_seconds
                )
            if orphaned:
                self.answered.clear()
                self._to_exabgp(b"clear adj-rib out\n")
                self.answered.wait(2.0)
                time.sleep(1.0)  # the ack comes when the withdrawals are queued, not sent
                self._to_exabgp(b"shutdown\n")
                return

    def _to_exabgp(self, line: bytes) -> None:
        with self.out_lock:  # not self.lock: a slow ExaBGP must not stall its own output
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()

    def forward_exabgp_output(self) -> None:
        """ExaBGP → speaker; returns when ExaBGP closes our stdin."""
        for line in sys.stdin.buffer:
            with self.lock:
                conn = self.conn
            if conn is None:
                if line.strip() in (b"done", b"error"):
                    self.answered.set()
                continue
            try:
                conn.sendall(line)
            except OSError:
                self._drop(conn)

    def forward_speaker_commands(self) -> None:
        """Speaker → ExaBGP, reconnecting for as long as the process lives."""
        while True:
            conn = self._connect()
            try:
                with conn.makefile("rb") as lines:
                    for line in lines:
                        self._to_exabgp(line)
            except OSError:
                pass  # e.g. reset: connected to a speaker that closed before accepting
            self._drop(conn)

    def _connect(self) -> socket.socket:
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self.path)
            except OSError:
                conn.close()
                time.sleep(RECONNECT_INTERVAL)
                continue
            with self.lock:
                self.conn = conn
            return conn

    def _drop(self, conn: socket.socket) -> None:
        with self.lock:
            if self.conn is conn:
                self.conn = None
                self.alone_since = time.monotonic()
        conn.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: exabgp_relay.py SOCKET [ORPHAN_SECONDS]", file=sys.stderr)
        return 2
    relay = Relay(argv[0], float(argv[1]) if len(argv) == 2 else float("inf"))
    threading.Thread(target=relay.forward_speaker_commands, daemon=True).start()
    threading.Thread(target=relay.watch_for_orphanhood, daemon=True).start()
    relay.forward_exabgp_output()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
