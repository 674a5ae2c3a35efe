"""`terrace-cni`: the CNI plugin that attaches a runtime's container to the Terrace fabric.

ADD asks the controller (with the host's token) for an endpoint named after the
container and interface, then builds its veth, addresses and host routes with the
speaker's own code (`speaker.kernel.endpoint_veth`, `speaker.netlink.NetlinkDataplane`),
so the speaker finds the endpoint already in place and only announces it. DEL removes
the endpoint and its veth and succeeds whatever is already gone; CHECK compares the
attachment with what ADD built; VERSION, STATUS and GC (CNI 1.1) are answered too.

The container's namespace comes as a path (`CNI_NETNS`). A path inside
`/var/run/netns` (also spelled `/run/netns`) is recorded at the controller by its name,
as `ip netns` namespaces are; any other path (`/proc/PID/ns/net`, a runtime's own
directory) is recorded whole: the speaker and pyroute2 open either form directly, no
bind mount is made.

Kernel work is done under `speaker.netlink.kernel_lock`, the lock the speaker's kernel
reconciler holds, so the two never build the same veth at once. This module owns the
command flow and its rollback; it must never compute addresses (the controller does)
or configure the kernel in its own way (the speaker's code does).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fabric.state import Endpoint
from speaker.client import ApiError, ControllerClient, ControllerUnavailable
from speaker.cni_spec import (
    CHECK_FAILED,
    CONTAINER_UNKNOWN,
    CONTROLLER_REFUSED,
    INVALID_CONFIG,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    PLUMBING_FAILED,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    Attachment,
    CniError,
    Environment,
    NetworkConfig,
    build_result,
    endpoint_name,
    parse_config,
    parse_stdin,
    prev_host_interfaces,
    read_environment,
    version_result,
)
from speaker.kernel import VethSpec, endpoint_veth, veth_routes
from speaker.naming import GATEWAY4, GATEWAY6, host_veth_name
from speaker.netlink import NetlinkDataplane, in_netns, kernel_lock

NETNS_DIR = "/var/run/netns"
T = TypeVar("T")


# ---- the controller -----------------------------------------------------------------


class Controller:
    """The few API calls the plugin makes, with controller failures as CNI errors."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.token = _read_token(config.token_file)

    def call(self, work: Callable[[ControllerClient], Awaitable[T]]) -> T:
        async def run() -> T:
            async with ControllerClient(self.config.controller, self.token) as client:
                return await work(client)

        try:
            return asyncio.run(run())
        except ControllerUnavailable as exc:
            raise CniError(
                TRY_AGAIN_LATER, "the Terrace controller is unreachable", str(exc)
            ) from None
        except ApiError as exc:
            code = TRY_AGAIN_LATER if exc.status >= 500 else CONTROLLER_REFUSED
            detail = json.dumps(exc.problem)
            raise CniError(code, f"the Terrace controller refused: {exc}", detail) from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        timeout = self.config.timeout
        return self.call(lambda c: c.request(method, path, timeout=timeout, **kwargs))

    def endpoints(self) -> list[dict[str, Any]]:
        """This host's endpoints (a host token sees only its own)."""
        found = self.request("GET", "/v1/endpoints", params={"host": self.config.host})
        return list(found)

    def find_endpoint(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.endpoints() if e.get("name") == name), None)

    def create_endpoint(self, name: str, netns: str, ifname: str) -> dict[str, Any]:
        body = {
            "name": name,
            "host": self.config.host,
            "network_id": self.config.network_id,
            "netns": netns,
            "interface": ifname,
        }
        return dict(self.request("POST", "/v1/endpoints", body=body))

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete; an endpoint the controller no longer knows is already deleted."""
        timeout = self.config.timeout

        async def delete(client: ControllerClient) -> None:
            try:
                await client.request("DELETE", f"/v1/endpoints/{endpoint_id}", timeout=timeout)
            except ApiError as exc:
                if exc.status != 404:
                    raise

        self.call(delete)


def _read_token(path: str) -> str:
    try:
        token = open(path, encoding="utf-8").read().strip()  # noqa: SIM115
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read the host token file {path}", str(exc)) from None
    if not token:
        raise CniError(INVALID_CONFIG, f"the host token file {path} is empty")
    return token


def _as_endpoint(doc: dict[str, Any]) -> Endpoint:
    return Endpoint(
        id=doc["id"],
        name=doc["name"],
        network_id=doc["network_id"],
        ipv4=doc.get("ipv4"),
        ipv6=doc.get("ipv6"),
        netns=doc.get("netns"),
        interface=doc.get("interface"),
    )


# ---- the namespace and the kernel ---------------------------------------------------


def netns_reference(path: str, netns_dir: str = NETNS_DIR) -> str:
    """How the endpoint names its namespace: the name inside `netns_dir`, else the path."""
    parent = os.path.realpath(os.path.dirname(path))
    if parent == os.path.realpath(netns_dir):
        return os.path.basename(path)
    return os.path.abspath(path)


def netns_path(reference: str, netns_dir: str = NETNS_DIR) -> str:
    return os.path.join(netns_dir, reference)  # an absolute reference stays as it is


def _require_netns(path: str) -> None:
    if not os.path.exists(path):
        raise CniError(CONTAINER_UNKNOWN, f"the network namespace {path} does not exist")


@dataclass(frozen=True, slots=True)
class ContainerView:
    """The container side of an attachment as the kernel shows it."""

    mac: str | None
    addresses: frozenset[str]
    gateways: frozenset[str]


def container_view(path: str, ifname: str) -> ContainerView:
    """Read the interface, its addresses and the default routes through it, in `path`."""
    from pyroute2 import IPRoute

    with in_netns(path), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return ContainerView(None, frozenset(), frozenset())
        index = found[0]
        mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
        addresses = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
        }
        gateways = {
            str(r.get_attr("RTA_GATEWAY"))
            for family in (2, 10)
            for r in ipr.get_routes(family=family, oif=index)
            if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY")
        }
    return ContainerView(mac, frozenset(addresses), frozenset(gateways))


def plumb(dataplane: NetlinkDataplane, spec: VethSpec) -> None:
    """Build what the speaker would build for `spec`; leave alone what is already right."""
    dataplane.enable_forwarding()
    actual = dataplane.snapshot()
    rebuilt = actual.veths.get(spec.name) != spec.alias
    if rebuilt:
        dataplane.create_veth(spec)
    for dst, route in veth_routes(spec).items():
        if rebuilt or actual.routes.get(dst) != route:
            dataplane.replace_route(route)


def unplumb(dataplane: NetlinkDataplane, names: list[str]) -> None:
    """Delete our veths of these names (their routes go with them); others stay."""
    ours = dataplane.snapshot().veths
    for name in dict.fromkeys(names):
        if name in ours:
            dataplane.delete_veth(name)


# ---- commands -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    env: Environment
    config: NetworkConfig
    dataplane: NetlinkDataplane

    @property
    def endpoint_name(self) -> str:
        return endpoint_name(self.env.container_id, self.env.ifname)


def cmd_add(inv: Invocation) -> dict[str, Any]:
    _require_netns(inv.env.netns)
    reference = netns_reference(inv.env.netns)
    controller = Controller(inv.config)
    with kernel_lock():
        doc, created = _endpoint_for_add(controller, inv, reference)
        try:
            _check_network_name(inv.config, doc)
            spec = endpoint_veth(_as_endpoint(doc), reference)
            plumb(inv.dataplane, spec)
            view = container_view(inv.env.netns, inv.env.ifname)
        except Exception as exc:
            failure = _as_plumbing_failure(exc, f"interface {inv.env.ifname} of {doc['name']}")
            _roll_back(inv, controller, doc if created else None, failure)
            raise failure from exc
    attachment = Attachment(
        host_interface=spec.name,
        ifname=inv.env.ifname,
        container_mac=view.mac or "",
        sandbox=inv.env.netns,
        ipv4=doc.get("ipv4"),
        ipv6=doc.get("ipv6"),
    )
    return build_result(inv.config.cni_version, attachment, inv.config.prev_result)


def _as_plumbing_failure(exc: Exception, what: str) -> CniError:
    if isinstance(exc, CniError):
        return exc
    return CniError(
        PLUMBING_FAILED, f"cannot build {what}; rolled back", f"{type(exc).__name__}: {exc}"
    )


def _endpoint_for_add(
    controller: Controller, inv: Invocation, reference: str
) -> tuple[dict[str, Any], bool]:
    """The endpoint of this attachment, reused when an earlier ADD made the same one."""
    name = inv.endpoint_name
    existing = controller.find_endpoint(name)
    if existing is not None:
        same = (existing["network_id"], existing.get("netns"), existing.get("interface"))
        if same == (inv.config.network_id, reference, inv.env.ifname):
            return existing, False
        controller.delete_endpoint(existing["id"])  # a leftover of another attachment
        unplumb(inv.dataplane, [host_veth_name(existing["id"])])
    return controller.create_endpoint(name, reference, inv.env.ifname), True


def _check_network_name(config: NetworkConfig, doc: dict[str, Any]) -> None:
    if config.network_name and doc.get("network") != config.network_name:
        raise CniError(
            INVALID_CONFIG,
            f"network {config.network_id} is named {doc.get('network')!r}, "
            f"not {config.network_name!r} as network_name says",
        )


def _roll_back(
    inv: Invocation, controller: Controller, created: dict[str, Any] | None, failure: CniError
) -> None:
    """Undo ADD: the veth, and the endpoint when this ADD created it. A rollback that
    fails itself is told in the error's details (DEL, which runtimes call after a failed
    ADD, finishes it)."""
    if created is None:
        return
    try:
        unplumb(inv.dataplane, [host_veth_name(created["id"])])
        controller.delete_endpoint(created["id"])
    except Exception as exc:
        failure.details += f"; rollback incomplete ({exc}): DEL removes the rest"


def cmd_del(inv: Invocation) -> None:
    """Remove the endpoint and its veth; whatever is already gone is fine."""
    controller = Controller(inv.config)
    with kernel_lock():
        names = prev_host_interfaces(inv.config.prev_result)
        found = controller.find_endpoint(inv.endpoint_name)
        if found is not None:
            controller.delete_endpoint(found["id"])
            names.append(host_veth_name(found["id"]))
        try:
            unplumb(inv.dataplane, names)
        except Exception as exc:
            raise CniError(PLUMBING_FAILED, f"cannot delete {', '.join(names)}", str(exc)) from exc


def cmd_check(inv: Invocation) -> None:
    """Fail with code 100 when the interface, an address or a route is not as ADD left it."""
    _require_netns(inv.env.netns)
    found = Controller(inv.config).find_endpoint(inv.endpoint_name)
    if found is None:
        raise CniError(CHECK_FAILED, f"the controller has no endpoint {inv.endpoint_name}")
    with kernel_lock():
        problems = attachment_problems(inv, found)
    if problems:
        detail = json.dumps({"endpoint": found, "problems": problems}, default=str)
        raise CniError(CHECK_FAILED, f"endpoint {inv.endpoint_name}: {'; '.join(problems)}", detail)


def attachment_problems(inv: Invocation, doc: dict[str, Any]) -> list[str]:
    reference = netns_reference(inv.env.netns)
    spec = endpoint_veth(_as_endpoint(doc), reference)
    problems = []
    if doc.get("netns") != reference:
        problems.append(f"recorded in namespace {doc.get('netns')}, not {reference}")
    actual = inv.dataplane.snapshot()
    if actual.veths.get(spec.name) != spec.alias:
        problems.append(f"host interface {spec.name} missing or built for other addresses")
    for dst, route in veth_routes(spec).items():
        if actual.routes.get(dst) != route:
            problems.append(f"host route {dst} via {spec.name} missing")
    view = container_view(inv.env.netns, inv.env.ifname)
    if view.mac is None:
        return [*problems, f"interface {inv.env.ifname} missing in {inv.env.netns}"]
    for address in spec.addresses:
        if address not in view.addresses:
            problems.append(f"address {address} missing on {inv.env.ifname}")
    for family, gateway in (("ipv4", GATEWAY4), ("ipv6", GATEWAY6)):
        if doc.get(family) and gateway not in view.gateways:
            problems.append(f"default route via {gateway} missing")
    problems += _prev_result_problems(inv.config.prev_result, spec)
    return problems


def _prev_result_problems(prev: dict[str, Any] | None, spec: VethSpec) -> list[str]:
    if prev is None:
        return []
    listed = {i.get("address") for i in prev.get("ips", []) if isinstance(i, dict)}
    return [f"prevResult lacks address {a}" for a in spec.addresses if a not in listed]


def cmd_status(inv: Invocation) -> None:
    """CNI 1.1 STATUS: ready when the controller answers this host's token."""
    try:
        Controller(inv.config).endpoints()
    except CniError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"not ready: {exc.msg}", exc.details) from None


def cmd_gc(inv: Invocation) -> None:
    """CNI 1.1 GC: delete this network's `cni-` endpoints on the host the runtime no
    longer lists as valid attachments (and their veths)."""
    controller = Controller(inv.config)
    valid = {endpoint_name(c, i) for c, i in inv.config.valid_attachments}
    with kernel_lock():
        for doc in controller.endpoints():
            name = str(doc.get("name", ""))
            ours = name.startswith("cni-") and doc.get("network_id") == inv.config.network_id
            if ours and name not in valid:
                controller.delete_endpoint(doc["id"])
                unplumb(inv.dataplane, [host_veth_name(doc["id"])])


# ---- the executable -----------------------------------------------------------------


def run(stdin: str, environ: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    """One invocation: exit status and the JSON to print (None prints nothing)."""
    version = SUPPORTED_VERSIONS[0]
    try:
        env = read_environment(environ)
        doc = parse_stdin(stdin) if stdin.strip() or env.command != "VERSION" else {}
        asked = doc.get("cniVersion")
        if isinstance(asked, str) and asked:
            version = asked
        if env.command == "VERSION":
            return 0, version_result(doc.get("cniVersion"))
        inv = Invocation(env, parse_config(doc, env.command), NetlinkDataplane())
        with _errors_as_cni():
            return 0, COMMANDS[env.command](inv)
    except CniError as exc:
        return 1, exc.to_json(version)


@contextmanager
def _errors_as_cni() -> Iterator[None]:
    try:
        yield
    except CniError:
        raise
    except OSError as exc:
        raise CniError(IO_FAILURE, f"{type(exc).__name__}: {exc}") from exc


COMMANDS: dict[str, Callable[[Invocation], dict[str, Any] | None]] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "STATUS": cmd_status,
    "GC": cmd_gc,
}


def main() -> int:
    """Entry point of the `terrace-cni` executable."""
    status, output = run(sys.stdin.read(), dict(os.environ))
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
