"""SQL shared by the API modules: which hosts a change touches, how an endpoint reads."""

from __future__ import annotations

from typing import Any

# Hosts whose state depends on network :n: they hold its endpoints, or endpoints of a
# network with a rule from :n (their firewall references :n's subnets).
HOSTS_REFERENCING_NETWORK = (
    "h.id IN (SELECT e.host_id FROM endpoints e WHERE e.network_id = :n "
    "UNION SELECT e.host_id FROM endpoints e JOIN rules r ON r.network_id = e.network_id "
    "WHERE r.from_network = :n)"
)
HOSTS_OF_NETWORK = "h.id IN (SELECT e.host_id FROM endpoints e WHERE e.network_id = :n)"


ENDPOINT_SQL = (
    "SELECT e.id::text, e.name, e.network_id::text, h.name AS host, e.netns, e.interface, "
    "n.tenant_id::text, n.name AS network, e.created_at, "
    "(SELECT host(a.address) FROM addresses a WHERE a.endpoint_id = e.id AND a.family = 4)"
    " AS ipv4, "
    "(SELECT host(a.address) FROM addresses a WHERE a.endpoint_id = e.id AND a.family = 6)"
    " AS ipv6 "
    "FROM endpoints e JOIN hosts h ON h.id = e.host_id JOIN networks n ON n.id = e.network_id"
)


def endpoint_doc(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "network_id": row.network_id,
        "network": row.network,
        "tenant_id": row.tenant_id,
        "host": row.host,
        "ipv4": row.ipv4,
        "ipv6": row.ipv6,
        "netns": row.netns,
        "interface": row.interface,
        "created_at": row.created_at,
    }
