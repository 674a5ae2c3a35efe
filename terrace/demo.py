"""`make demo`: the two-rack lab with a seeded example; `make demo-down` removes it.

`python -m terrace.demo` brings up `lab/topologies/two-rack.clab.yml` (unless it is
already up), then makes sure the example exists: two pools, two tenants, their networks
with IPv4 and IPv6 subnets, a rule, and containers on both racks. Every step looks
before it creates, so running it twice changes nothing. It ends with the dashboard URL,
the admin token file and a ping to try.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab import ops, runner
from lab.api import LabApi
from lab.paths import LabError, LabPaths, LabState
from speaker.client import ApiError, ControllerUnavailable

TOPOLOGY = Path(__file__).resolve().parent.parent / "lab" / "topologies" / "two-rack.clab.yml"
LISTEN = "127.0.0.1:8080"
POOLS = ("10.64.0.0/16", "2001:db8:100::/40")
# tenant → network → containers (host, name); every network gets a /24 and a /64.
EXAMPLE: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "acme": {
        "web": (("h1", "web1"), ("h2", "web2"), ("h3", "web3")),
        "db": (("h4", "db1"),),
    },
    "globex": {
        "app": (("h2", "app1"), ("h4", "app2")),
    },
}
# acme/db accepts acme/web on tcp 5432; nothing else crosses networks.
RULES = (("acme/db", "acme/web", "tcp", [5432]),)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m terrace.demo", description=__doc__)
    parser.add_argument("--down", action="store_true", help="remove the demo lab")
    args = parser.parse_args(argv)
    name = runner.read_topology(TOPOLOGY).name
    try:
        if args.down:
            runner.down(name)
            return 0
        paths = ensure_lab(name)
        api = LabApi(paths.url, LabState.load(paths).admin_token)
        seed(paths, api)
        print_welcome(paths)
    except (LabError, ApiError, ControllerUnavailable) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


def ensure_lab(name: str) -> LabPaths:
    paths = LabPaths.of(name)
    if paths.state_file.exists():
        try:
            runner.wait_for_controller(paths, deadline=5)
            print(f"lab {name} is already up")
            return paths
        except LabError as exc:
            print(f"lab {name} is not healthy ({exc}); rebuilding it")
            runner.down(name)
    else:
        runner.down(name, say=lambda _m: None)  # leftovers of a crash, if any
    runner.up(TOPOLOGY, runner.UpOptions(listen=LISTEN))
    return paths


def seed(paths: LabPaths, api: LabApi) -> None:
    existing_pools = {p["cidr"] for p in api.get("/v1/pools")}
    for cidr in POOLS:
        if cidr not in existing_pools:
            api.post("/v1/pools", {"cidr": cidr})
            print(f"pool {cidr} added")
    tenants = {t["name"]: t["id"] for t in api.get("/v1/tenants")}
    for tenant, networks in EXAMPLE.items():
        if tenant not in tenants:
            tenants[tenant] = api.post("/v1/tenants", {"name": tenant})["id"]
            print(f"tenant {tenant} created")
        for network, containers in networks.items():
            network_id = ensure_network(api, tenants[tenant], tenant, network)
            for host, container in containers:
                record = ops.container_add(paths, host, container, network_id, api=api)
                print(f"container {container} on {host}: {record['ipv4']} {record['ipv6']}")
    for target, source, protocol, ports in RULES:
        ensure_rule(api, target, source, protocol, ports)


def ensure_network(api: LabApi, tenant_id: str, tenant: str, name: str) -> str:
    found = [n for n in api.get("/v1/networks") if (n["tenant"], n["name"]) == (tenant, name)]
    if found:
        network: dict[str, Any] = found[0]
    else:
        network = api.post("/v1/networks", {"name": name, "tenant_id": tenant_id})
        print(f"network {tenant}/{name} created")
    families = {s["family"] for s in api.get(f"/v1/networks/{network['id']}")["subnets"]}
    for family, length in ((4, 24), (6, 64)):
        if family not in families:
            subnet = api.post(
                f"/v1/networks/{network['id']}/subnets",
                {"family": family, "prefix_length": length},
            )
            print(f"subnet {subnet['cidr']} added to {tenant}/{name}")
    return str(network["id"])


def ensure_rule(api: LabApi, target: str, source: str, protocol: str, ports: list[int]) -> None:
    target_id = ops.resolve_network(api, target)
    source_id = ops.resolve_network(api, source)
    rules = api.get(f"/v1/networks/{target_id}/rules")
    if any(r.get("from_network") == source_id for r in rules):
        return
    api.post(
        f"/v1/networks/{target_id}/rules",
        {"from_network": source_id, "protocol": protocol, "ports": ports},
    )
    print(f"rule: {source} may reach {target} on {protocol} {ports}")


def print_welcome(paths: LabPaths) -> None:
    state = LabState.load(paths)
    print()
    print(f"Dashboard:   http://{state.listen or LISTEN}/")
    print(f"Admin token: {state.admin_token_file}")
    print(f"API:         export TERRACE_TOKEN_FILE={state.admin_token_file}")
    print("Try:         terrace lab ping web1 web3      (acme/web, rack r1 -> rack r2)")
    print("             terrace lab ping web1 app2      (other tenant: denied by policy)")
    print("             terrace lab status")
    print("Stop:        make demo-down")


if __name__ == "__main__":
    sys.exit(main())
