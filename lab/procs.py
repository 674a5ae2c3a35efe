"""Commands and background processes of a lab: run, spawn detached, find, stop.

Every failure is a `LabError` that says what was run and what it printed. Background
processes are started in their own session (they outlive the CLI that started them),
with their output in a log file and their pid in a pidfile of the lab.

This module never decides what to start; `lab.runner` does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lab.paths import LabError, LabPaths


def terrace_command() -> list[str]:
    """How to run the `terrace` CLI in a child process (the console script if installed)."""
    found = shutil.which("terrace") or str(Path(sys.executable).with_name("terrace"))
    if Path(found).exists():
        return [found]
    return [sys.executable, "-c", "import sys; from terrace.cli import main; sys.exit(main())"]


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 60,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure raises `LabError` with its output."""
    command = in_netns(netns, argv)
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            input=input_text,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(command)}` did not finish within {timeout:g} s") from None
    except FileNotFoundError:
        raise LabError(f"`{command[0]}` is not installed") from None
    if check and done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise LabError(f"`{' '.join(command)}` failed ({done.returncode}): {output}")
    return done


def spawn(
    paths: LabPaths,
    process: str,
    argv: Sequence[str],
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a detached background process; its pid goes to `pids/<process>.pid`."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.pids.mkdir(parents=True, exist_ok=True)
    with paths.log(process).open("ab") as log:
        child = subprocess.Popen(
            in_netns(netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=paths.root,
        )
    paths.pidfile(process).write_text(f"{child.pid}\n")
    return child.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # A zombie child of ours is dead for every purpose here.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def pidfile_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pids_matching(pattern: str) -> set[int]:
    """Pids whose full command line contains `pattern` (a literal string)."""
    done = subprocess.run(
        ["pgrep", "-f", "--", re.escape(pattern)], capture_output=True, text=True, check=False
    )
    pids = {int(p) for p in done.stdout.split()}
    pids.discard(os.getpid())
    return pids


def netns_pids(netns: str) -> set[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", netns], check=False, capture_output=True, text=True
    )
    return {int(p) for p in done.stdout.split() if p.isdigit()}


def stop(pids: Iterable[int], *, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds."""
    targets = {p for p in pids if p > 1 and p != os.getpid()}
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        targets = {p for p in targets if alive(p)}
        if not targets:
            return
        time.sleep(0.05)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, preceded by its first error (a traceback is often
    followed by shutdown noise that would hide it)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    all_lines = text.splitlines()
    tail = all_lines[-lines:]
    first_error = next(
        (i for i, line in enumerate(all_lines) if "Traceback" in line or " ERROR " in line),
        None,
    )
    if first_error is not None and first_error < len(all_lines) - lines:
        tail = [*all_lines[first_error : first_error + 12], "...", *tail]
    return "\n".join(f"    {line}" for line in tail) or f"(empty log {path})"
