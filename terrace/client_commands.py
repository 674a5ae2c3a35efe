"""Client commands over the REST API: `terrace pool|tenant|rack|host|network|subnet|
endpoint|rule|status|explain …`. Each is declared once as (method, path, body fields,
table columns); the code that runs them is shared."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrace.cli import CliError, call, client_args, output


@dataclass(frozen=True)
class Arg:
    name: str
    help: str = ""
    type: Callable[[str], Any] = str
    optional: bool = False  # an --option rather than a positional
    flag: bool = False  # a store_true option
    many: bool = False


@dataclass(frozen=True)
class Command:
    group: str
    action: str
    method: str
    path: str  # may use {arg} placeholders
    help: str
    args: tuple[Arg, ...] = ()
    body: tuple[str, ...] = ()  # arg names sent in the JSON body
    query: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _port(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _family(text: str) -> int:
    if text not in ("4", "6"):
        raise argparse.ArgumentTypeError("family must be 4 or 6")
    return int(text)


POOL_COLS = ("id", "cidr", "family")
TENANT_COLS = ("id", "name")
HOST_COLS = ("name", "rack", "asn", "address", "address6", "revision")
NET_COLS = ("id", "name", "tenant", "auto_grow", "subnets")
SUBNET_COLS = ("id", "cidr", "family", "block_prefix_length", "network_id")
EP_COLS = ("id", "name", "network", "host", "ipv4", "ipv6")
RULE_COLS = ("id", "network_id", "from_network", "from_cidr", "protocol", "ports")

COMMANDS: tuple[Command, ...] = (
    Command(
        "pool",
        "create",
        "POST",
        "/v1/pools",
        "add a pool",
        (Arg("cidr"),),
        ("cidr",),
        columns=POOL_COLS,
    ),
    Command("pool", "list", "GET", "/v1/pools", "list pools", columns=(*POOL_COLS, "subnets")),
    Command("pool", "delete", "DELETE", "/v1/pools/{id}", "remove a pool", (Arg("id"),)),
    Command(
        "tenant",
        "create",
        "POST",
        "/v1/tenants",
        "create a tenant (prints its token)",
        (Arg("name"),),
        ("name",),
        columns=(*TENANT_COLS, "token"),
    ),
    Command("tenant", "list", "GET", "/v1/tenants", "list tenants", columns=TENANT_COLS),
    Command("tenant", "show", "GET", "/v1/tenants/{id}", "show a tenant", (Arg("id"),)),
    Command("tenant", "delete", "DELETE", "/v1/tenants/{id}", "delete a tenant", (Arg("id"),)),
    Command(
        "rack",
        "create",
        "POST",
        "/v1/racks",
        "create a rack",
        (Arg("name"), Arg("asn", type=int, optional=True)),
        ("name", "asn"),
        columns=("id", "name", "asn"),
    ),
    Command(
        "rack", "list", "GET", "/v1/racks", "list racks", columns=("id", "name", "asn", "hosts")
    ),
    Command(
        "host",
        "create",
        "POST",
        "/v1/hosts",
        "register a host (prints its token)",
        (
            Arg("name"),
            Arg("rack", optional=True),
            Arg("address", optional=True),
            Arg("address6", optional=True),
            Arg("asn", type=int, optional=True),
        ),
        ("name", "rack", "address", "address6", "asn"),
        columns=(*HOST_COLS[:5], "token"),
    ),
    Command("host", "list", "GET", "/v1/hosts", "list hosts", columns=(*HOST_COLS, "endpoints")),
    Command(
        "host", "show", "GET", "/v1/hosts/{name}", "show a host and its status", (Arg("name"),)
    ),
    Command("host", "delete", "DELETE", "/v1/hosts/{name}", "remove a host", (Arg("name"),)),
    Command(
        "network",
        "create",
        "POST",
        "/v1/networks",
        "create a logical network",
        (Arg("name"), Arg("auto_grow", flag=True, optional=True), Arg("tenant_id", optional=True)),
        ("name", "auto_grow", "tenant_id"),
        columns=NET_COLS,
    ),
    Command(
        "network",
        "list",
        "GET",
        "/v1/networks",
        "list networks",
        (Arg("tenant_id", optional=True),),
        query=("tenant_id",),
        columns=(*NET_COLS, "endpoints"),
    ),
    Command("network", "show", "GET", "/v1/networks/{id}", "show a network", (Arg("id"),)),
    Command("network", "delete", "DELETE", "/v1/networks/{id}", "delete a network", (Arg("id"),)),
    Command(
        "subnet",
        "create",
        "POST",
        "/v1/networks/{network}/subnets",
        "add a subnet to a network",
        (
            Arg("network"),
            Arg("family", type=_family, optional=True),
            Arg("prefix_length", type=int, optional=True),
            Arg("block_prefix_length", type=int, optional=True),
            Arg("rack_prefix_length", type=int, optional=True),
            Arg("cidr", optional=True),
        ),
        ("family", "prefix_length", "block_prefix_length", "rack_prefix_length", "cidr"),
        columns=SUBNET_COLS,
    ),
    Command("subnet", "delete", "DELETE", "/v1/subnets/{id}", "delete a subnet", (Arg("id"),)),
    Command(
        "endpoint",
        "create",
        "POST",
        "/v1/endpoints",
        "create an endpoint",
        (
            Arg("name"),
            Arg("network_id", optional=True),
            Arg("host", optional=True),
            Arg("netns", optional=True),
            Arg("interface", optional=True),
        ),
        ("name", "network_id", "host", "netns", "interface"),
        columns=EP_COLS,
    ),
    Command(
        "endpoint",
        "list",
        "GET",
        "/v1/endpoints",
        "list endpoints",
        (Arg("network_id", optional=True), Arg("host", optional=True)),
        query=("network_id", "host"),
        columns=EP_COLS,
    ),
    Command("endpoint", "show", "GET", "/v1/endpoints/{id}", "show an endpoint", (Arg("id"),)),
    Command(
        "endpoint", "delete", "DELETE", "/v1/endpoints/{id}", "delete an endpoint", (Arg("id"),)
    ),
    Command(
        "rule",
        "create",
        "POST",
        "/v1/networks/{network}/rules",
        "allow ingress into a network",
        (
            Arg("network"),
            Arg("from_network", optional=True),
            Arg("from_cidr", optional=True),
            Arg("protocol", optional=True),
            Arg("ports", type=_port, optional=True, many=True),
        ),
        ("from_network", "from_cidr", "protocol", "ports"),
        columns=RULE_COLS,
    ),
    Command(
        "rule",
        "list",
        "GET",
        "/v1/networks/{network}/rules",
        "list rules into a network",
        (Arg("network"),),
        columns=RULE_COLS,
    ),
    Command("rule", "delete", "DELETE", "/v1/rules/{id}", "delete a rule", (Arg("id"),)),
)


def register(sub: Any) -> None:
    groups: dict[str, Any] = {}
    for command in COMMANDS:
        if command.group not in groups:
            parser = sub.add_parser(command.group, help=f"manage {command.group}s")
            groups[command.group] = parser.add_subparsers(metavar="ACTION")
        p = groups[command.group].add_parser(command.action, help=command.help)
        for arg in command.args:
            _add_arg(p, arg)
        client_args(p)
        p.set_defaults(run=_runner(command))
    status = sub.add_parser("status", help="fabric revision, counts, borrowed addresses")
    client_args(status)
    status.set_defaults(run=lambda a: output(a, call(a, "GET", "/v1/status")))
    _fabric_commands(sub)
    _explain_command(sub)


def _explain_command(sub: Any) -> None:
    p = sub.add_parser("explain", help="may SRC reach DST, and why")
    p.add_argument("src", help="address, endpoint id or endpoint name")
    p.add_argument("dst", help="address, endpoint id or endpoint name")
    p.add_argument("--proto", choices=("tcp", "udp", "icmp", "any"))
    p.add_argument("--port", type=int)
    client_args(p)
    p.set_defaults(run=_explain)


def _explain(args: argparse.Namespace) -> int:
    verdict = call(
        args,
        "GET",
        "/v1/explain",
        params={"src": args.src, "dst": args.dst, "proto": args.proto, "port": args.port},
    )
    if args.json:
        return output(args, verdict)
    print(("ALLOWED  " if verdict["allowed"] else "DENIED   ") + verdict["message"])
    live = verdict.get("destination_host")
    if live:
        sync = "in sync" if live["in_sync"] else "NOT in sync"
        print(
            f"destination host {live['host']}: revision {live['applied_revision']} applied "
            f"of {live['revision']} ({sync})"
        )
    return 0 if verdict["allowed"] else 3


def _fabric_commands(sub: Any) -> None:
    fabric = sub.add_parser("fabric", help="the physical fabric: apply, show, render, routes")
    actions = fabric.add_subparsers(metavar="ACTION")
    apply = actions.add_parser("apply", help="apply a containerlab topology file")
    apply.add_argument("file", type=Path)
    client_args(apply)
    apply.set_defaults(run=_fabric_apply)
    show = actions.add_parser("show", help="the applied topology and its plan")
    client_args(show)
    show.set_defaults(run=lambda a: output(a, call(a, "GET", "/v1/fabric")))
    render = actions.add_parser("render", help="print a router's FRR config")
    render.add_argument("router")
    client_args(render)
    render.set_defaults(run=_fabric_render)
    routes = actions.add_parser("routes", help="prefixes per router, with/without aggregation")
    client_args(routes)
    routes.set_defaults(
        run=lambda a: output(
            a,
            call(a, "GET", "/v1/fabric/routes")["routers"]
            if not a.json
            else call(a, "GET", "/v1/fabric/routes"),
            ("router", "role", "without_aggregation", "with_aggregation", "borrowed4", "borrowed6"),
        )
    )


def _fabric_apply(args: argparse.Namespace) -> int:
    try:
        body = args.file.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    report = call(args, "PUT", "/v1/fabric", raw_body=body, content_type="application/yaml")
    if args.json:
        return output(args, report)
    added = ", ".join(f"{len(v)} {k}" for k, v in report["added"].items() if v) or "nothing"
    removed = ", ".join(f"{len(v)} {k}" for k, v in report["removed"].items() if v) or "nothing"
    print(
        f"fabric {report['name']}: added {added}; removed {removed}; "
        f"{len(report['hosts_changed'])} host(s) changed"
    )
    return 0


def _fabric_render(args: argparse.Namespace) -> int:
    print(call(args, "GET", f"/v1/fabric/routers/{args.router}/frr.conf"), end="")
    return 0


def _add_arg(p: argparse.ArgumentParser, arg: Arg) -> None:
    if arg.flag:
        p.add_argument(
            "--" + arg.name.replace("_", "-"),
            dest=arg.name,
            action="store_true",
            default=None,
            help=arg.help,
        )
    elif arg.optional:
        p.add_argument(
            "--" + arg.name.replace("_", "-"),
            dest=arg.name,
            type=arg.type,
            nargs="+" if arg.many else None,
            help=arg.help,
        )
    else:
        p.add_argument(arg.name, type=arg.type, help=arg.help)


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        values = vars(args)
        try:
            path = command.path.format(**values)
        except KeyError as exc:
            raise CliError(f"missing {exc}") from None
        body = {k: values[k] for k in command.body if values.get(k) is not None}
        params = {k: values[k] for k in command.query if values.get(k) is not None}
        data = call(
            args,
            command.method,
            path,
            body=body if command.method == "POST" else None,
            params=params,
        )
        return output(args, data, command.columns)

    return run
