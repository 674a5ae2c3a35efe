"""Working with a lab that is up: containers, ping, exec, status.

A lab container is a network namespace `<lab>-c-<name>` with `lo` up, registered as an
endpoint of a host with `netns` set: the host's speaker creates the veth into it and
gives it its addresses and routes. The lab remembers its containers in `lab.json`.

This module only calls the API and reads the lab; it never configures a veth or a route
of an endpoint itself (that is the speaker's job, and the point of the lab).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fabric.topology import load_topology
from lab import procs, routers
from lab.api import LabApi
from lab.paths import LabError, LabPaths, LabState, container_netns, node_netns
from lab.runner import make_namespace
from speaker.client import ApiError

CONTAINER_INTERFACE = "eth0"


@contextlib.contextmanager
def locked_state(paths: LabPaths) -> Iterator[LabState]:
    """The lab state, saved on exit; one writer at a time (several CLIs may run)."""
    with (paths.root / "lab.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = LabState.load(paths)
        yield state
        state.save(paths)


def lab_api(paths: LabPaths) -> LabApi:
    return LabApi(paths.url, LabState.load(paths).admin_token)


def resolve_network(api: LabApi, network: str) -> str:
    """A network id from an id or `tenant/name`."""
    networks = api.get("/v1/networks")
    if "/" in network:
        tenant, name = network.split("/", 1)
        for item in networks:
            if item.get("tenant") == tenant and item.get("name") == name:
                return str(item["id"])
        raise LabError(f"no network {network!r} (write it as tenant/name or give its id)")
    with contextlib.suppress(ValueError):
        return str(uuid.UUID(network))
    matches = [item for item in networks if item.get("name") == network]
    if len(matches) == 1:
        return str(matches[0]["id"])
    raise LabError(f"network {network!r}: give its id or tenant/name")


# ---------------------------------------------------------------------------- containers


def container_add(
    paths: LabPaths, host: str, name: str, network: str, *, api: LabApi | None = None
) -> dict[str, Any]:
    """Create the container namespace and its endpoint; returns the endpoint.

    Adding a container that exists on the same host and network returns it unchanged.
    """
    api = api or lab_api(paths)
    network_id = resolve_network(api, network)
    netns = container_netns(paths.name, name)
    with locked_state(paths) as state:
        known = state.containers.get(name)
        if known is not None:
            if (known["host"], known["network_id"]) != (host, network_id):
                raise LabError(
                    f"container {name} already exists on {known['host']} in network "
                    f"{known['network_id']}; remove it first"
                )
            return known
        if host not in load_topology(state.topology_text).nodes:
            raise LabError(f"lab {paths.name} has no host {host!r}")
        if netns not in state.namespaces:
            make_namespace(netns, forwarding=False)
        body = {
            "name": name,
            "host": host,
            "network_id": network_id,
            "netns": netns,
            "interface": CONTAINER_INTERFACE,
        }
        try:
            endpoint = api.post("/v1/endpoints", body)
        except ApiError:
            procs.run(["ip", "netns", "del", netns], check=False)
            raise
        record = {
            "name": name,
            "host": host,
            "network_id": network_id,
            "endpoint_id": endpoint["id"],
            "netns": netns,
            "ipv4": endpoint.get("ipv4"),
            "ipv6": endpoint.get("ipv6"),
        }
        state.containers[name] = record
        return record


def container_rm(paths: LabPaths, name: str, *, api: LabApi | None = None) -> None:
    """Delete the endpoint, let the speaker remove its veth, then delete the namespace."""
    api = api or lab_api(paths)
    with locked_state(paths) as state:
        record = state.containers.pop(name, None)
    if record is None:
        raise LabError(f"lab {paths.name} has no container {name!r}")
    with contextlib.suppress(ApiError):
        api.delete(f"/v1/endpoints/{record['endpoint_id']}")
    netns = record["netns"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _has_interface(netns):
        time.sleep(0.1)
    procs.stop(procs.netns_pids(netns), grace=1)
    procs.run(["ip", "netns", "del", netns], check=False)


def _has_interface(netns: str) -> bool:
    done = procs.run(
        ["ip", "-n", netns, "-o", "link", "show", CONTAINER_INTERFACE], check=False, timeout=5
    )
    return done.returncode == 0


def container(paths: LabPaths, name: str) -> dict[str, Any]:
    record = LabState.load(paths).containers.get(name)
    if record is None:
        raise LabError(f"lab {paths.name} has no container {name!r}")
    return record


# ---------------------------------------------------------------------------- ping, exec


@dataclass(frozen=True, slots=True)
class PingResult:
    family: int
    address: str | None
    ok: bool
    output: str


def ping(
    paths: LabPaths, src: str, dst: str, *, count: int = 1, wait: float = 1
) -> list[PingResult]:
    """Ping DST's IPv4 and IPv6 addresses from SRC's namespace (container names)."""
    source = container(paths, src)
    target = container(paths, dst)
    results = []
    for family, address in ((4, target.get("ipv4")), (6, target.get("ipv6"))):
        if not address:
            results.append(PingResult(family, None, False, "no address of this family"))
            continue
        done = procs.run(
            ["ping", f"-{family}", "-n", "-c", str(count), "-W", f"{wait:g}", address],
            netns=source["netns"],
            check=False,
            timeout=count * wait + 10,
        )
        results.append(PingResult(family, address, done.returncode == 0, done.stdout.strip()))
    return results


def node_or_container_netns(paths: LabPaths, node: str) -> str:
    state = LabState.load(paths)
    if node in state.containers:
        return str(state.containers[node]["netns"])
    netns = node_netns(paths.name, node)
    if netns not in state.namespaces:
        raise LabError(f"lab {paths.name} has no node or container {node!r}")
    return netns


# ---------------------------------------------------------------------------- status


def status(paths: LabPaths) -> dict[str, Any]:
    """Sessions and prefix counts per router, endpoints per host, lagging hosts."""
    state = LabState.load(paths)
    api = LabApi(paths.url, state.admin_token)
    topology = load_topology(state.topology_text)
    router_names = [n.name for n in (*topology.spines(), *topology.leaves())]
    report: dict[str, Any] = {"name": paths.name, "routers": {}, "hosts": {}}
    for router in router_names:
        report["routers"][router] = _router_status(paths, router)
    for host in api.get("/v1/hosts"):
        applied = (host.get("status") or {}).get("applied_revision")
        report["hosts"][host["name"]] = {
            "endpoints": host.get("endpoints"),
            "revision": host.get("revision"),
            "applied_revision": applied,
            "lagging": applied is None or applied < host.get("revision", 0),
            "last_error": (host.get("status") or {}).get("last_error"),
        }
    report["containers"] = state.containers
    return report


def _router_status(paths: LabPaths, router: str) -> dict[str, Any]:
    try:
        sessions = routers.bgp_sessions(paths, router)
        summary = routers.vtysh_json(paths, router, "show bgp summary json")
    except LabError as exc:
        return {"error": str(exc)}
    return {
        "sessions": {
            key: {"state": info.get("state"), "prefixes": info.get("pfxRcd")}
            for key, info in sorted(sessions.items())
        },
        "prefixes": {
            family: (summary.get(family) or {}).get("ribCount") for family in routers.FAMILIES
        },
    }
