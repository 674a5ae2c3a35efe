"""Names Terrace gives to kernel objects on a host, derived from domain ids.

Owns the one mapping from an endpoint id to its host-side veth name and from ids to
the short tags used in chain and set names. The kernel reconciler and the firewall
compiler both use these functions, so a veth and its policy chains always agree.
Pure: no I/O. Must never change a mapping without a migration plan: renaming a veth
or a chain on a live host is a disruption.
"""

from __future__ import annotations

import functools
import hashlib

HOST_INTERFACE_PREFIX = "tr"
"""Every Terrace host-side veth starts with this; iptables matches them as `tr+`."""


@functools.lru_cache(maxsize=1 << 16)
def short_id(object_id: str) -> str:
    """Eleven hex characters of sha256(id): short enough for chain and set names.

    sha256 (not sha1) because `speaker/naming.py:host_veth_name` already names veths
    that way; the two must agree, so that one should delegate to `host_interface`.
    """
    return hashlib.sha256(object_id.encode()).hexdigest()[:11]


def host_interface(endpoint_id: str) -> str:
    """The host-side veth name of an endpoint: `tr` + 11 hex characters (13 < IFNAMSIZ)."""
    return HOST_INTERFACE_PREFIX + short_id(endpoint_id)  # short_id is memoized
