"""Names and numbers by which the speaker recognises what it owns on a host.

Every kernel object the speaker creates carries one of these marks (route protocol
number, link name prefix plus alias), and the reconcilers touch only marked objects.
This module owns those marks and the fixed gateway addresses containers use; it must
never do I/O. Changing a value here orphans what older speakers created, so don't.
"""

from __future__ import annotations

from fabric.naming import HOST_INTERFACE_PREFIX, host_interface

ROUTE_PROTO = 84
"""Route protocol number of every route Terrace installs (0x54, 'T'; unused by iproute2)."""

VETH_PREFIX = HOST_INTERFACE_PREFIX
"""Host-side veth names are `tr` + 11 hex chars (fabric.naming, shared with the firewall)."""

VETH_ALIAS_PREFIX = "terrace:"
"""Alias of every host-side veth we created: `terrace:<endpoint id>:<fingerprint>`."""

GATEWAY4 = "169.254.1.1"
"""IPv4 gateway of every container: link-local, never routed, the same everywhere."""

GATEWAY6 = "fe80::1"
"""IPv6 gateway of every container: a link-local address put on each host-side veth."""

HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"
"""MAC of every host-side veth, so a container's static gateway neighbour is a constant."""


def host_veth_name(endpoint_id: str) -> str:
    """The host-side veth name of an endpoint; the one mapping lives in `fabric.naming`."""
    return host_interface(endpoint_id)


def veth_alias(endpoint_id: str, fingerprint: str) -> str:
    return f"{VETH_ALIAS_PREFIX}{endpoint_id}:{fingerprint}"


def is_terrace_alias(alias: str | None) -> bool:
    return bool(alias) and str(alias).startswith(VETH_ALIAS_PREFIX)
