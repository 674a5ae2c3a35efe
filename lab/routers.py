"""FRR in a lab namespace: start zebra and bgpd, apply a config, read BGP state.

Each spine and leaf runs its own zebra and bgpd with `-N <netns>` (socket and pid
paths under `/var/run/frr/<netns>/`), started through `ip netns exec` because `-N`
does not enter the namespace itself. The config the lab applies is the controller's
rendering with one local change: the log goes to the router's own file.

Changes are applied with FRR's own `frr-reload.py` (it diffs the running config against
the file and sends only the difference, so sessions are not reset).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from lab.paths import LabError, LabPaths, node_netns
from lab.procs import run

FRR_BIN = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bgpd")
FRR_RELOAD = FRR_BIN / "frr-reload.py"
FAMILIES = ("ipv4Unicast", "ipv6Unicast")


def localize(config: str, log_file: Path) -> str:
    """The rendered config with FRR's log sent to this router's own file."""
    return re.sub(r"^log .*$", f"log file {log_file} informational", config, count=1, flags=re.M)


def config_path(paths: LabPaths, router: str) -> Path:
    return paths.frr_dir(router) / "frr.conf"


def log_path(paths: LabPaths, router: str) -> Path:
    return paths.frr_dir(router) / "frr.log"


def _own_by_frr(path: Path) -> None:
    shutil.chown(path, "frr", "frr")


def start_router(paths: LabPaths, router: str, config: str) -> None:
    """Start zebra and bgpd for `router` and apply `config` (already localized)."""
    netns = node_netns(paths.name, router)
    confdir = paths.frr_dir(router)
    rundir = paths.frr_run_dir(router)
    for directory in (confdir, rundir):
        directory.mkdir(parents=True, exist_ok=True)
        _own_by_frr(directory)
    empty = confdir / "empty.conf"
    empty.write_text("")
    log_path(paths, router).touch()
    _own_by_frr(log_path(paths, router))
    config_path(paths, router).write_text(config)
    for daemon in DAEMONS:
        run(
            [str(FRR_BIN / daemon), "-d", "-N", netns, "-F", "datacenter",
             "-f", str(empty), "-i", str(rundir / f"{daemon}.pid")],
            netns=netns,
        )  # fmt: skip
    _wait_daemons(netns)
    applied = run(["vtysh", "-N", netns, "-f", str(config_path(paths, router))], check=False)
    if applied.returncode != 0:
        raise LabError(
            f"router {router}: FRR refused its config: {(applied.stdout + applied.stderr)[-800:]}"
        )


def _wait_daemons(netns: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        done = run(["vtysh", "-N", netns, "-c", "show daemons"], check=False, timeout=10)
        seen = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and all(d in done.stdout for d in DAEMONS):
            return
        time.sleep(0.1)
    raise LabError(f"{netns}: zebra and bgpd did not come up within {timeout:g} s: {seen}")


def reload_router(paths: LabPaths, router: str, config: str) -> str:
    """Apply a changed config with `frr-reload.py`; returns what it printed."""
    netns = node_netns(paths.name, router)
    path = config_path(paths, router)
    path.write_text(config)
    done = run(
        [
            "python3",
            str(FRR_RELOAD),
            "--reload",
            "--stdout",
            "--bindir",
            "/usr/bin",
            "--confdir",
            str(paths.frr_dir(router)),
            "--rundir",
            str(paths.frr_dir(router)),
            "--pathspace",
            netns,
            str(path),
        ],
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise LabError(f"router {router}: frr-reload failed: {(done.stdout + done.stderr)[-800:]}")
    return done.stdout


def vtysh(paths: LabPaths, router: str, command: str, *, timeout: float = 20) -> str:
    netns = node_netns(paths.name, router)
    return run(["vtysh", "-N", netns, "-c", command], timeout=timeout).stdout


def vtysh_json(paths: LabPaths, router: str, command: str) -> Any:
    text = vtysh(paths, router, command)
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        raise LabError(f"router {router}: `{command}` did not answer JSON: {text[:300]}") from None


def bgp_sessions(paths: LabPaths, router: str) -> dict[str, dict[str, Any]]:
    """`family/peer` → FRR's summary of that session (state, pfxRcd, ...)."""
    summary = vtysh_json(paths, router, "show bgp summary json")
    sessions: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        for peer, info in (summary.get(family) or {}).get("peers", {}).items():
            sessions[f"{family}/{peer}"] = info
    return sessions
