"""`terrace lab …`: the command line of the namespace lab (registered by `terrace.cli`).

up, down, status, exec, container add|rm, ping, sync, export. Each command is a thin
layer over `lab.runner`, `lab.ops`, `lab.frr_sync` and `lab.export`; errors are
`LabError` and become one line on stderr (the build failure report is printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from fabric.topology import TopologyError, load_topology
from lab import export, frr_sync, ops, runner
from lab.paths import LabError, LabPaths, LabState, resolve_lab, running_labs
from terrace.cli import CliError, print_table


def register(sub: Any) -> None:
    lab = sub.add_parser("lab", help="a whole fabric in network namespaces on this machine")
    actions = lab.add_subparsers(metavar="ACTION")
    _up(actions)
    _down(actions)
    _status(actions)
    _exec(actions)
    _container(actions)
    _ping(actions)
    _sync(actions)
    _export(actions)


def _guard(run: Any) -> Any:
    """Lab errors are user errors: one line (the runner already printed the details)."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except (LabError, TopologyError) as exc:
            raise CliError(str(exc)) from None

    return wrapped


def _name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the lab (default: the only lab that is up)")


# ---------------------------------------------------------------------------- up, down


def _up(actions: Any) -> None:
    p = actions.add_parser("up", help="build the fabric of a containerlab file")
    p.add_argument("file", type=Path)
    p.add_argument("--name", help="lab name (default: the file's `name`)")
    p.add_argument("--database-url", default=os.environ.get("TERRACE_DATABASE_URL"))
    p.add_argument("--data-dir", type=Path, help="controller data (default /run/terrace/LAB/data)")
    p.add_argument(
        "--listen", default="127.0.0.1:8080", help="controller HOST:PORT for people ('' for none)"
    )
    p.set_defaults(run=_guard(_run_up))


def _run_up(args: argparse.Namespace) -> int:
    options = runner.UpOptions(
        name=args.name,
        database_url=args.database_url or None,
        data_dir=args.data_dir,
        listen=args.listen,
    )
    state = runner.up(args.file, options, say=_say)
    print(f"admin token: {state.admin_token_file}")
    if state.listen:
        print(f"controller:  http://{state.listen}/")
    return 0


def _say(message: str) -> None:
    print(message, flush=True)


def _down(actions: Any) -> None:
    p = actions.add_parser("down", help="stop and remove a lab (idempotent)")
    p.add_argument("file", type=Path, nargs="?")
    _name_arg(p)
    p.set_defaults(run=_guard(_run_down))


def _run_down(args: argparse.Namespace) -> int:
    if args.file is not None and not args.name:
        topology = runner.read_topology(args.file)
        runner.down(topology.name, topology=topology, say=_say)
        return 0
    if not args.name and not running_labs():
        print("no lab is up")
        return 0
    runner.down(resolve_lab(args.name).name, say=_say)
    return 0


# ---------------------------------------------------------------------------- status


def _status(actions: Any) -> None:
    p = actions.add_parser("status", help="sessions, prefixes, endpoints, lagging hosts")
    _name_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_guard(_run_status))


def _run_status(args: argparse.Namespace) -> int:
    report = ops.status(resolve_lab(args.name))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"lab {report['name']}")
    rows = []
    for router, info in report["routers"].items():
        if "error" in info:
            rows.append({"router": router, "session": "-", "state": info["error"]})
            continue
        for session, detail in info["sessions"].items():
            rows.append({"router": router, "session": session, **detail})
        rows.append(
            {
                "router": router,
                "session": "(rib)",
                "prefixes": "/".join(str(v) for v in info["prefixes"].values()),
            }
        )
    print_table(rows, ("router", "session", "state", "prefixes"))
    print()
    hosts = [{"host": h, **v} for h, v in report["hosts"].items()]
    print_table(
        hosts, ("host", "endpoints", "revision", "applied_revision", "lagging", "last_error")
    )
    return 0


# ---------------------------------------------------------------------------- exec, ping


def _exec(actions: Any) -> None:
    p = actions.add_parser("exec", help="run a command in a node's or container's namespace")
    p.add_argument("node")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")
    _name_arg(p)
    p.set_defaults(run=_guard(_run_exec))


def _run_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    # `exec NODE --name LAB -- CMD`: argparse leaves options after NODE in the command.
    if "--" in command:
        before, command = command[: command.index("--")], command[command.index("--") + 1 :]
        if before[:1] == ["--name"] and len(before) == 2:
            args.name = before[1]
        elif before:
            raise LabError(f"unexpected {' '.join(before)} before --")
    if not command:
        raise LabError("give a command after --: terrace lab exec NODE -- ip route")
    netns = ops.node_or_container_netns(resolve_lab(args.name), args.node)
    return subprocess.run(["ip", "netns", "exec", netns, *command], check=False).returncode


def _ping(actions: Any) -> None:
    p = actions.add_parser("ping", help="ping a container's IPv4 and IPv6 from another")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=3)
    _name_arg(p)
    p.set_defaults(run=_guard(_run_ping))


def _run_ping(args: argparse.Namespace) -> int:
    results = ops.ping(resolve_lab(args.name), args.src, args.dst, count=args.count)
    for result in results:
        verdict = "ok" if result.ok else "FAILED"
        summary = next(
            (line for line in result.output.splitlines() if "packets transmitted" in line),
            result.output.splitlines()[-1] if result.output else "",
        )
        print(f"IPv{result.family} {args.src} -> {args.dst} {result.address}: {verdict}  {summary}")
    return 0 if all(r.ok for r in results if r.address) else 1


# ---------------------------------------------------------------------------- containers


def _container(actions: Any) -> None:
    p = actions.add_parser("container", help="lab containers (namespaces behind a veth)")
    sub = p.add_subparsers(metavar="ACTION")
    add = sub.add_parser("add", help="create a container on a host, in a network")
    add.add_argument("host")
    add.add_argument("container_name", metavar="NAME")
    add.add_argument("--network", required=True, help="network id or tenant/name")
    _name_arg(add)
    add.set_defaults(run=_guard(_run_container_add))
    rm = sub.add_parser("rm", help="remove a container and its endpoint")
    rm.add_argument("container")
    _name_arg(rm)
    rm.set_defaults(run=_guard(_run_container_rm))
    ls = sub.add_parser("list", help="the lab's containers")
    _name_arg(ls)
    ls.set_defaults(run=_guard(_run_container_list))


def _run_container_add(args: argparse.Namespace) -> int:
    record = ops.container_add(resolve_lab(args.name), args.host, args.container_name, args.network)
    print(f"container {record['name']} on {record['host']}: {record['ipv4']} {record['ipv6']}")
    return 0


def _run_container_rm(args: argparse.Namespace) -> int:
    ops.container_rm(resolve_lab(args.name), args.container)
    print(f"container {args.container} removed")
    return 0


def _run_container_list(args: argparse.Namespace) -> int:
    state = LabState.load(resolve_lab(args.name))
    print_table(
        list(state.containers.values()), ("name", "host", "ipv4", "ipv6", "netns", "endpoint_id")
    )
    return 0


# ---------------------------------------------------------------------------- sync, export


def _sync(actions: Any) -> None:
    p = actions.add_parser("sync", help="make running FRR equal to the controller's configs")
    _name_arg(p)
    p.add_argument("--watch", action="store_true", help="keep following the change feed")
    p.set_defaults(run=_guard(_run_sync))


def _run_sync(args: argparse.Namespace) -> int:
    paths: LabPaths = resolve_lab(args.name)
    state = LabState.load(paths)
    topology = load_topology(state.topology_text)
    names = [n.name for n in (*topology.spines(), *topology.leaves())]
    sync = frr_sync.FabricSync(paths, state.admin_token, names)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("lab").setLevel(logging.DEBUG)

    async def main() -> None:
        if not args.watch:
            from speaker.client import ControllerClient

            async with ControllerClient(paths.url, state.admin_token) as client:
                changed = await sync.sync_once(client)
            print(f"{len(changed)} router(s) changed: {', '.join(changed) or 'none'}")
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await frr_sync.watch(sync, stop=stop)

    asyncio.run(main())
    return 0


def _export(actions: Any) -> None:
    p = actions.add_parser("export", help="write what containerlab needs beside a file")
    p.add_argument("file", type=Path)
    p.add_argument("outdir", type=Path)
    p.set_defaults(run=_guard(_run_export))


def _run_export(args: argparse.Namespace) -> int:
    written = export.export_lab(args.file.read_text(), args.outdir)
    for path in written:
        print(path)
    return 0
