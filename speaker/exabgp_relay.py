"""ExaBGP's API process: relays its stdin/stdout to the speaker over a unix socket.

ExaBGP starts this as `python .../speaker/exabgp_relay.py SOCKET` (stdlib only). Lines
the speaker sends on the socket go to ExaBGP (commands); every line ExaBGP writes (acks,
JSON events, answers) goes back to the speaker, or is dropped while none is connected. The
relay always keeps reading ExaBGP's output (an API process that stops reading blocks
ExaBGP), reconnects when the speaker restarts, and exits only when ExaBGP closes its
stdin (ExaBGP is gone). It must never interpret or change a line.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

RECONNECT_INTERVAL = 0.1


class Relay:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conn: socket.socket | None = None

    def forward_exabgp_output(self) -> None:
        """ExaBGP → speaker; returns when ExaBGP closes our stdin."""
        for line in sys.stdin.buffer:
            with self.lock:
                conn = self.conn
            if conn is None:
                continue
            try:
                conn.sendall(line)
            except OSError:
                self._drop(conn)

    def forward_speaker_commands(self) -> None:
        """Speaker → ExaBGP, reconnecting for as long as the process lives."""
        while True:
            conn = self._connect()
            with conn.makefile("rb") as lines:
                for line in lines:
                    sys.stdout.buffer.write(line)
                    sys.stdout.buffer.flush()
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
        conn.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m speaker.exabgp_relay SOCKET", file=sys.stderr)
        return 2
    relay = Relay(argv[0])
    threading.Thread(target=relay.forward_speaker_commands, daemon=True).start()
    relay.forward_exabgp_output()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
