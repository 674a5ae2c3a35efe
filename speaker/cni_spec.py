"""The CNI side of `terrace-cni`: what a runtime hands the plugin and what it gets back.

Owns the reading of the network configuration (stdin) and the `CNI_*` environment, the
CNI error object with the spec's codes, and the building and merging of results
(`prevResult` from earlier plugins of a chain plus Terrace's interface). Pure: no I/O,
no controller, no kernel; `speaker.cni` does those. It must never print or exit.

Spec: CNI 1.0.0 (https://github.com/containernetworking/cni/blob/main/SPEC.md); STATUS
and GC come from 1.1.0.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from speaker.naming import GATEWAY4, GATEWAY6, HOST_VETH_MAC, VETH_PREFIX

SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Well-known error codes of the spec (section "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
# Terrace's own codes (the spec reserves 100 and up for plugins).
CHECK_FAILED = 100
"""CHECK found the attachment not as ADD left it (interface, address or route)."""
CONTROLLER_REFUSED = 101
"""The controller answered with a 4xx: unknown network, exhausted network, bad token."""
PLUMBING_FAILED = 102
"""A kernel change failed; what ADD had done is rolled back."""

ENDPOINT_PREFIX = "cni-"
ENDPOINT_NAME_MAX = 128
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_IFNAME = re.compile(r"^[\w.-]{1,15}$")
_UNSUPPORTED = ("ipam", "dns")
"""Terrace allocates addresses itself and hands out no DNS: these keys are refused."""


class CniError(Exception):
    """A failure the runtime must see as a CNI error object (exit status 1)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class Environment:
    """The `CNI_*` variables of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: str = ""
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Terrace's network configuration, as the runtime passes it on stdin."""

    cni_version: str
    name: str
    controller: str
    token_file: str
    host: str
    network_id: str
    network_name: str | None = None
    timeout: float = 10.0
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] = ()
    """GC only: (container id, ifname) of every attachment the runtime still uses."""


def read_environment(env: dict[str, str]) -> Environment:
    """The invocation's environment; `CniError` 4 when a needed variable is missing."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}",
        )
    found = Environment(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        path=env.get("CNI_PATH", ""),
        args=_cni_args(env.get("CNI_ARGS", "")),
    )
    if command in ("ADD", "DEL", "CHECK"):
        _check_attachment_env(found)
    return found


def _check_attachment_env(env: Environment) -> None:
    if not _CONTAINER_ID.match(env.container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_CONTAINERID {env.container_id!r} must start with a letter or digit and "
            "hold only letters, digits, '_', '.' and '-'",
        )
    if not _IFNAME.match(env.ifname) or env.ifname in (".", ".."):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_IFNAME {env.ifname!r} is not a valid interface name (1-15 characters)",
        )
    if env.command != "DEL" and not env.netns:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is required for {env.command}")


def _cni_args(text: str) -> dict[str, str]:
    """`CNI_ARGS` is `K=V;K=V`; a part without '=' is a decoding failure."""
    args: dict[str, str] = {}
    for part in filter(None, text.split(";")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS part {part!r} is not KEY=VALUE")
        args[key] = value
    return args


def parse_stdin(text: str) -> dict[str, Any]:
    """The configuration document; `CniError` 6 when it is not a JSON object."""
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise CniError(
            DECODING_FAILURE, "the network configuration is not JSON", str(exc)
        ) from None
    if not isinstance(doc, dict):
        raise CniError(DECODING_FAILURE, "the network configuration must be a JSON object")
    return doc


def config_version(doc: dict[str, Any]) -> str:
    """The `cniVersion` asked for; `CniError` 1 when this plugin does not speak it."""
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def parse_config(doc: dict[str, Any], command: str) -> NetworkConfig:
    """Terrace's settings out of the configuration; `CniError` 2 or 7 when they are wrong."""
    version = config_version(doc)
    for key in _UNSUPPORTED:
        if key in doc:
            raise CniError(
                UNSUPPORTED_FIELD,
                f"unsupported field {key}={json.dumps(doc[key])}",
                "Terrace allocates addresses through its controller; remove this key",
            )
    strings = {key: _string(doc, key) for key in ("name", "controller", "token_file", "host")}
    timeout = doc.get("timeout", 10.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise CniError(INVALID_CONFIG, f"timeout must be a positive number of seconds: {timeout!r}")
    return NetworkConfig(
        cni_version=version,
        name=strings["name"],
        controller=strings["controller"],
        token_file=strings["token_file"],
        host=strings["host"],
        network_id=_network_id(doc),
        network_name=_optional_string(doc, "network_name"),
        timeout=float(timeout),
        prev_result=_prev_result(doc),
        valid_attachments=_valid_attachments(doc) if command == "GC" else (),
    )


def _string(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise CniError(
            INVALID_CONFIG, f"{key} is missing from the network configuration (a non-empty string)"
        )
    return value


def _optional_string(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise CniError(INVALID_CONFIG, f"{key} must be a non-empty string")
    return value


def _network_id(doc: dict[str, Any]) -> str:
    raw = _string(doc, "network")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        pass
    hint = ""
    if "/" in raw:
        hint = (
            "; a host token cannot look networks up by tenant/name: give the network's id "
            f"(`terrace network show {raw}`) and, to guard against mix-ups, network_name"
        )
    raise CniError(INVALID_CONFIG, f"network {raw!r} is not a network id{hint}")


def _prev_result(doc: dict[str, Any]) -> dict[str, Any] | None:
    prev = doc.get("prevResult")
    if prev is None:
        return None
    if not isinstance(prev, dict):
        raise CniError(DECODING_FAILURE, "prevResult must be a JSON object")
    for key in ("interfaces", "ips", "routes"):
        if not isinstance(prev.get(key, []), list):
            raise CniError(DECODING_FAILURE, f"prevResult.{key} must be a list")
    return prev


def _valid_attachments(doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    items = doc.get("cni.dev/valid-attachments", [])
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    out: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict) or not {"containerID", "ifname"} <= item.keys():
            raise CniError(
                INVALID_CONFIG, f"valid attachment {item!r} needs containerID and ifname"
            )
        out.append((str(item["containerID"]), str(item["ifname"])))
    return tuple(out)


def endpoint_name(container_id: str, ifname: str) -> str:
    """The endpoint's name at the controller: `cni-<container id>-<ifname>` (unique per
    host; the container id is cut, never the interface, when it must fit 128 characters)."""
    room = ENDPOINT_NAME_MAX - len(ENDPOINT_PREFIX) - len(ifname) - 1
    return f"{ENDPOINT_PREFIX}{container_id[:room]}-{ifname}"


# ---- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """What ADD built: the endpoint, its two interfaces and its addresses."""

    host_interface: str
    ifname: str
    container_mac: str
    sandbox: str
    ipv4: str | None
    ipv6: str | None


def build_result(
    cni_version: str, attachment: Attachment, prev: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ADD result: `prev` (earlier plugins of the chain) with Terrace's part added.

    Interfaces are appended, so the indexes of `prev`'s ips stay right; ours point at
    the container interface. Routes are the container's default routes via the
    link-local gateways every Terrace container uses.
    """
    prev = prev or {}
    interfaces = [dict(i) for i in prev.get("interfaces", [])]
    interfaces.append({"name": attachment.host_interface, "mac": HOST_VETH_MAC})
    interfaces.append(
        {"name": attachment.ifname, "mac": attachment.container_mac, "sandbox": attachment.sandbox}
    )
    index = len(interfaces) - 1
    ips = [dict(i) for i in prev.get("ips", [])]
    routes = [dict(r) for r in prev.get("routes", [])]
    for address, gateway, default in (
        (attachment.ipv4, GATEWAY4, "0.0.0.0/0"),
        (attachment.ipv6, GATEWAY6, "::/0"),
    ):
        if address:
            host = ipaddress.ip_address(address)
            cidr = f"{host}/{host.max_prefixlen}"
            ips.append({"address": cidr, "gateway": gateway, "interface": index})
            routes.append({"dst": default, "gw": gateway})
    return {
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dict(prev.get("dns") or {}),
    }


def version_result(cni_version: str | None) -> dict[str, Any]:
    return {
        "cniVersion": cni_version or SUPPORTED_VERSIONS[-1],
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def prev_host_interfaces(prev: dict[str, Any] | None) -> list[str]:
    """Host-side Terrace interfaces named in a cached result (DEL after the controller
    forgot the endpoint still finds the veth this way)."""
    names = []
    for item in (prev or {}).get("interfaces", []):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name.startswith(VETH_PREFIX) and not item.get("sandbox"):
            names.append(name)
    return names
