"""Generated Clos topologies for the fabric unit tests (plain containerlab documents)."""

from __future__ import annotations

import random
from typing import Any


def clos(
    racks: int, hosts_per_rack: int, spines: int = 2, dual_homed: bool = False
) -> dict[str, Any]:
    """A containerlab document of a Clos fabric (one or two leaves per rack)."""
    nodes: dict[str, Any] = {}
    links: list[dict[str, Any]] = []
    for s in range(1, spines + 1):
        nodes[f"s{s}"] = {"labels": {"terrace.role": "spine"}}
    for r in range(1, racks + 1):
        leaves = [f"l{r}a", f"l{r}b"] if dual_homed else [f"l{r}a"]
        for leaf in leaves:
            nodes[leaf] = {"labels": {"terrace.role": "leaf", "terrace.rack": f"r{r}"}}
            for s in range(1, spines + 1):
                links.append({"endpoints": [f"s{s}:e{leaf}", f"{leaf}:e{s}"]})
        for h in range(1, hosts_per_rack + 1):
            host = f"r{r}h{h}"
            nodes[host] = {"labels": {"terrace.role": "host", "terrace.rack": f"r{r}"}}
            for i, leaf in enumerate(leaves, start=1):
                links.append({"endpoints": [f"{leaf}:h{h}", f"{host}:eth{i}"]})
    return {"name": "gen", "topology": {"nodes": nodes, "links": links}}


def shuffled(doc: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    items = list(doc["topology"]["nodes"].items())
    rng.shuffle(items)
    links = list(doc["topology"]["links"])
    rng.shuffle(links)
    links = [
        {"endpoints": list(reversed(x["endpoints"]))} if rng.random() < 0.5 else x for x in links
    ]
    return {"name": doc["name"], "topology": {"nodes": dict(items), "links": links}}
