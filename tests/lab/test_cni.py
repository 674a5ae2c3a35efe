"""terrace-cni run exactly as a container runtime runs it, in a lab host: `CNI_*`
environment, configuration on stdin, result on stdout, inside the host's namespace; the
container namespace is given by path. Alone, and chained with the reference plugins
(loopback → terrace-cni → portmap → bandwidth) as a runtime chains them.

Hosts: h1, h2 in rack r1; h3, h4 in rack r2 (the session `lab` fixture).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

import speaker
from lab.paths import container_netns
from speaker.naming import host_veth_name
from tests.conftest import require
from tests.lab.conftest import Lab

pytestmark = pytest.mark.lab

REFERENCE_PLUGINS = Path("/usr/lib/cni")
TERRACE_CNI = Path(sys.executable).parent / "terrace-cni"
SCHEMA = json.loads((Path(speaker.__file__).parent / "cni_result.schema.json").read_text())


def conforms(doc: dict[str, Any]) -> None:
    Draft202012Validator(SCHEMA, format_checker=FormatChecker()).validate(doc)


class Runtime:
    """What a container runtime does with CNI plugins, on one lab host."""

    def __init__(self, lab: Lab, host: str, plugin_dir: Path) -> None:
        self.lab = lab
        self.host = host
        self.plugin_dir = plugin_dir

    def terrace_config(self, network: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "type": "terrace-cni",
            "controller": self.lab.paths.url,
            "token_file": str(self.lab.paths.token_file(self.host)),
            "host": self.host,
            "network": network["id"],
            "network_name": network["name"],
            **extra,
        }

    def invoke(
        self,
        command: str,
        plugin: dict[str, Any],
        *,
        container_id: str,
        netns: str,
        ifname: str = "eth0",
        prev: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """One plugin, one command; the exit status and the decoded stdout."""
        config = {"cniVersion": "1.0.0", "name": "terrace", **plugin}
        if prev is not None:
            config["prevResult"] = prev
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.plugin_dir),
        }
        argv = ["ip", "netns", "exec", self.lab.host_netns(self.host)]
        done = subprocess.run(
            [*argv, str(self.plugin_dir / plugin["type"])],
            input=json.dumps(config),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        out = json.loads(done.stdout) if done.stdout.strip() else None
        if out is not None and plugin["type"] == "terrace-cni":
            conforms(out)
        if done.returncode != 0 and out is None:
            pytest.fail(f"{plugin['type']} {command} exited {done.returncode}: {done.stderr}")
        return done.returncode, out

    def add(self, plugin: dict[str, Any], **kw: Any) -> dict[str, Any]:
        status, out = self.invoke("ADD", plugin, **kw)
        assert status == 0 and out is not None, out
        return out

    def ok(self, command: str, plugin: dict[str, Any], **kw: Any) -> None:
        status, out = self.invoke(command, plugin, **kw)
        assert status == 0, out


class Sandbox:
    """A container's network namespace as a runtime makes one: a bare namespace."""

    def __init__(self, lab: Lab) -> None:
        self.name = container_netns(lab.name, f"cni{uuid.uuid4().hex[:6]}")
        self.path = f"/var/run/netns/{self.name}"
        self.container_id = uuid.uuid4().hex
        subprocess.run(["ip", "netns", "add", self.name], check=True)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv],
                              capture_output=True, text=True, check=False, timeout=30)  # fmt: skip

    def ping(self, address: str) -> bool:
        family = "-6" if ":" in address else "-4"
        return self.run("ping", family, "-n", "-c", "1", "-W", "0.5", address).returncode == 0

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def runtime(lab: Lab, tmp_path: Path) -> Runtime:
    require(REFERENCE_PLUGINS.is_dir(), "the CNI reference plugins are not installed "
            "(apt install containernetworking-plugins)")  # fmt: skip
    require(TERRACE_CNI.exists(), f"{TERRACE_CNI} is missing (pip install -e .)")
    plugin_dir = tmp_path / "cni-bin"
    plugin_dir.mkdir()
    for name in ("loopback", "portmap", "bandwidth"):
        require((REFERENCE_PLUGINS / name).exists(), f"{REFERENCE_PLUGINS / name} is missing")
        (plugin_dir / name).symlink_to(REFERENCE_PLUGINS / name)
    (plugin_dir / "terrace-cni").symlink_to(TERRACE_CNI)
    return Runtime(lab, "h1", plugin_dir)


@pytest.fixture
def sandbox(lab: Lab) -> Iterator[Sandbox]:
    box = Sandbox(lab)
    try:
        yield box
    finally:
        box.remove()


def endpoints_named(lab: Lab, name: str) -> list[dict[str, Any]]:
    return [e for e in lab.api.get("/v1/endpoints") if e["name"] == name]


def host_links(lab: Lab, host: str) -> str:
    return lab.exec(host, "ip", "-o", "link").stdout


def our_ips(result: dict[str, Any], ifname: str = "eth0") -> dict[str, str]:
    index = next(i for i, x in enumerate(result["interfaces"]) if x["name"] == ifname)
    found = {}
    for ip in result["ips"]:
        if ip.get("interface") == index:
            address = ip["address"].split("/")[0]
            found["ipv6" if ":" in address else "ipv4"] = address
    return found


def wait_ping_from(lab: Lab, sandbox: Sandbox, address: str) -> None:
    lab.wait(
        f"the CNI container to reach {address}",
        lambda: sandbox.ping(address),
        lambda: sandbox.run("ip", "route", "get", address).stdout,
    )


def test_add_ping_across_racks_then_del_unreachable_and_address_freed(
    lab: Lab, runtime: Runtime, sandbox: Sandbox
) -> None:
    network = lab.network()
    peer = lab.container_add("h3", lab.unique("peer"), network["id"])
    plugin = runtime.terrace_config(network)
    attach: dict[str, Any] = {"container_id": sandbox.container_id, "netns": sandbox.path}
    result = runtime.add(plugin, **attach)
    print("ADD result:", json.dumps(result, indent=2))
    ours = our_ips(result)
    assert set(ours) == {"ipv4", "ipv6"}, result
    host_side = result["interfaces"][0]["name"]
    (endpoint,) = endpoints_named(lab, f"cni-{sandbox.container_id}-eth0")
    assert host_side == host_veth_name(endpoint["id"])
    assert (endpoint["ipv4"], endpoint["ipv6"]) == (ours["ipv4"], ours["ipv6"])
    assert endpoint["netns"] == sandbox.name  # a /var/run/netns path is kept as its name

    link_before = sandbox.run("ip", "-o", "link", "show", "eth0").stdout
    lab.wait_host_applied("h1")  # the speaker sees the endpoint done: it rebuilds nothing
    assert sandbox.run("ip", "-o", "link", "show", "eth0").stdout == link_before
    assert not lab.host_status("h1")["status"].get("pending_endpoints")

    for family in ("ipv4", "ipv6"):
        wait_ping_from(lab, sandbox, peer[family])
        lab.wait_ping(peer["name"], ours[family])
    runtime.ok("CHECK", plugin, prev=result, **attach)

    runtime.ok("DEL", plugin, prev=result, **attach)
    assert not endpoints_named(lab, f"cni-{sandbox.container_id}-eth0")
    for family in ("ipv4", "ipv6"):
        lab.wait_unreachable(peer["name"], ours[family])
    used = {a for e in lab.api.get("/v1/endpoints") for a in (e["ipv4"], e["ipv6"])}
    assert not {ours["ipv4"], ours["ipv6"]} & used
    assert host_side not in host_links(lab, "h1")
    assert "eth0" not in sandbox.run("ip", "-o", "link").stdout
    runtime.ok("DEL", plugin, prev=result, **attach)  # twice


def test_del_is_idempotent_after_the_controller_forgot_and_after_the_netns_is_gone(
    lab: Lab, runtime: Runtime, sandbox: Sandbox
) -> None:
    network = lab.network()
    plugin = runtime.terrace_config(network)
    attach: dict[str, Any] = {"container_id": sandbox.container_id, "netns": sandbox.path}
    result = runtime.add(plugin, **attach)
    host_side = result["interfaces"][0]["name"]
    (endpoint,) = endpoints_named(lab, f"cni-{sandbox.container_id}-eth0")
    lab.api.delete(f"/v1/endpoints/{endpoint['id']}")  # the controller forgets it first
    runtime.ok("DEL", plugin, prev=result, **attach)
    assert host_side not in host_links(lab, "h1")

    result = runtime.add(plugin, **attach)
    sandbox.remove()  # the runtime tore the namespace down before calling DEL
    runtime.ok("DEL", plugin, prev=result, **attach)
    runtime.ok("DEL", plugin, container_id=sandbox.container_id, netns="")  # no netns, no prev
    assert not endpoints_named(lab, f"cni-{sandbox.container_id}-eth0")


def test_failed_add_leaves_nothing_and_del_after_it_succeeds(
    lab: Lab, runtime: Runtime, sandbox: Sandbox
) -> None:
    network = lab.network()
    attach: dict[str, Any] = {"container_id": sandbox.container_id, "netns": sandbox.path}
    wrong = runtime.terrace_config(network, network_name="not-" + network["name"])
    status, out = runtime.invoke("ADD", wrong, **attach)
    assert status == 1 and out is not None and out["code"] == 7, out
    assert "not-" in out["msg"]
    assert not endpoints_named(lab, f"cni-{sandbox.container_id}-eth0")
    # h1's speaker may have seen the endpoint before the rollback deleted it: once it has
    # applied the current revision, nothing of the failed ADD is left in the container.
    lab.wait_host_applied("h1")
    assert "eth0" not in sandbox.run("ip", "-o", "link").stdout
    assert not lab.api.get("/v1/endpoints", network_id=network["id"])
    runtime.ok("DEL", wrong, **attach)

    nowhere: dict[str, Any] = {"container_id": sandbox.container_id, "netns": "/var/run/netns/nope"}
    status, out = runtime.invoke("ADD", runtime.terrace_config(network), **nowhere)
    assert status == 1 and out is not None and out["code"] == 3, out


def test_check_reports_missing_address_route_and_interface(
    lab: Lab, runtime: Runtime, sandbox: Sandbox
) -> None:
    network = lab.network()
    plugin = runtime.terrace_config(network)
    attach: dict[str, Any] = {"container_id": sandbox.container_id, "netns": sandbox.path}
    result = runtime.add(plugin, **attach)
    ours = our_ips(result)
    runtime.ok("CHECK", plugin, prev=result, **attach)

    def check_fails_with(text: str) -> None:
        status, out = runtime.invoke("CHECK", plugin, prev=result, **attach)
        assert status == 1 and out is not None and out["code"] == 100, out
        assert text in out["msg"], out

    sandbox.run("ip", "-6", "route", "del", "default")
    check_fails_with("default route via fe80::1 missing")
    sandbox.run("ip", "addr", "del", f"{ours['ipv4']}/32", "dev", "eth0")
    check_fails_with(f"address {ours['ipv4']}/32 missing")
    sandbox.run("ip", "link", "del", "eth0")
    check_fails_with("interface eth0 missing")
    runtime.ok("DEL", plugin, prev=result, **attach)
    status, out = runtime.invoke("CHECK", plugin, prev=result, **attach)
    assert status == 1 and out is not None and out["code"] == 100, out


def test_chain_loopback_terrace_portmap_bandwidth_add_check_del(
    lab: Lab, runtime: Runtime, sandbox: Sandbox
) -> None:
    network = lab.network()
    chain: list[dict[str, Any]] = [
        {"type": "loopback"},
        runtime.terrace_config(network),
        {
            "type": "portmap",
            "capabilities": {"portMappings": True},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]
            },
        },
        {
            "type": "bandwidth",
            "capabilities": {"bandwidth": True},
            "runtimeConfig": {"bandwidth": {"ingressRate": 8000000, "ingressBurst": 80000}},
        },
    ]
    attach: dict[str, Any] = {"container_id": sandbox.container_id, "netns": sandbox.path}
    result: dict[str, Any] | None = None
    for plugin in chain:  # ADD in order, each gets the result so far
        result = runtime.add(plugin, prev=result, **attach)
    assert result is not None
    print("chained ADD result:", json.dumps(result, indent=2))
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "lo" and "eth0" in names, names
    ours = our_ips(result)
    assert set(ours) == {"ipv4", "ipv6"}, result
    nat = lab.exec("h1", "iptables-save", "-t", "nat").stdout
    assert f"{ours['ipv4']}:80" in nat, nat
    host_side = next(i["name"] for i in result["interfaces"] if i["name"].startswith("tr"))
    qdisc = lab.exec("h1", "tc", "qdisc", "show", "dev", host_side).stdout
    assert "tbf" in qdisc, qdisc

    for plugin in chain:  # CHECK in order, with the final result
        status, out = runtime.invoke("CHECK", plugin, prev=result, **attach)
        if plugin["type"] == "portmap" and status != 0:
            # portmap 1.1.1 (Debian) checks its rules in the wrong table for any address
            # family mix (containernetworking/plugins#819, closed upstream in 2023).
            assert out is not None and out["msg"].startswith("could not check ipv6 dnat"), out
            continue
        assert status == 0, (plugin["type"], out)
    for plugin in reversed(chain):  # DEL in reverse order
        runtime.ok("DEL", plugin, prev=result, **attach)
    assert f"{ours['ipv4']}:80" not in lab.exec("h1", "iptables-save", "-t", "nat").stdout
    assert host_side not in host_links(lab, "h1")
    assert not endpoints_named(lab, f"cni-{sandbox.container_id}-eth0")
