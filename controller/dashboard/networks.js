// Tenants and networks: each network's subnets with an address utilization bar, blocks
// per host, and the auto-grow events (subnets added because the others were full).

import { fill, formatCount, h, shortId, timeOf } from "./dom.js";

export const id = "networks";
export const kinds = ["network", "subnet", "endpoint", "tenant"];

export async function refresh(session, panel) {
  const networks = await session.api.get("/v1/views/networks");
  session.store.networks = networks;
  const tenants = groupBy(networks, (n) => n.tenant);
  fill(panel, 
    h("div", { class: "view-head" }, h("h2", {}, "Tenants and networks"),
      h("p", { class: "summary" }, `${tenants.size} tenant(s) · ${networks.length} network(s)`)),
    networks.length ? null : h("p", { class: "notice" }, "No networks yet."),
    [...tenants].map(([tenant, list]) => h("section", { class: "tenant", "aria-label": `tenant ${tenant}` },
      h("h3", {}, `tenant ${tenant}`),
      h("div", { class: "cards" }, list.map(networkCard)))),
    autoGrow(session.store.events),
  );
}

function groupBy(items, key) {
  const out = new Map();
  for (const item of items) {
    if (!out.has(key(item))) out.set(key(item), []);
    out.get(key(item)).push(item);
  }
  return out;
}

function networkCard(network) {
  return h("article", { class: "card", dataset: { network: network.id } },
    h("header", {},
      h("h4", {}, network.name),
      network.auto_grow ? h("span", { class: "badge" }, "auto-grow") : null,
      h("span", { class: "muted" }, `${network.endpoints} endpoint(s) · ${shortId(network.id)}`)),
    network.subnets.length
      ? network.subnets.map(subnetRow)
      : h("p", { class: "muted" }, "No subnet: endpoints cannot be created until one is added."));
}

function subnetRow(subnet) {
  const pct = subnet.size ? (100 * subnet.used) / subnet.size : 0;
  const width = subnet.used > 0 ? Math.max(pct, 1.5) : 0;
  const fill = h("div", { class: `fill ${pct >= 90 ? "high" : pct >= 70 ? "mid" : ""}` });
  fill.style.width = `${Math.min(width, 100)}%`;
  const hosts = Object.entries(subnet.blocks_per_host);
  return h("div", { class: "subnet", dataset: { subnet: subnet.id, used: subnet.used, size: subnet.size } },
    h("div", { class: "subnet-head" },
      h("span", { class: "mono" }, subnet.cidr),
      subnet.auto ? h("span", { class: "badge" }, "auto-grown") : null,
      h("span", { class: "usage" }, `${formatCount(subnet.used)} / ${formatCount(subnet.size)} addresses`)),
    h("div", {
      class: "bar", role: "progressbar", "aria-label": `${subnet.cidr} utilization`,
      "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct.toFixed(2),
      "aria-valuetext": `${subnet.used} of ${subnet.size} addresses used`,
    }, fill),
    h("p", { class: "muted small" },
      `${subnet.blocks} block(s) of /${subnet.block_prefix_length}`,
      subnet.borrowed ? ` · ${subnet.borrowed} borrowed` : "",
      hosts.length ? ` · ${hosts.map(([host, n]) => `${host}: ${n}`).join(", ")}` : ""));
}

function autoGrow(events) {
  const grown = events.filter((e) => /auto-grew/.test(e.summary || "")).slice(-20).reverse();
  return h("section", { class: "autogrow", "aria-label": "auto-grow events" },
    h("h3", {}, "Auto-grow events"),
    grown.length
      ? h("ul", { class: "plain" }, grown.map((e) => h("li", {}, h("time", { datetime: e.at }, timeOf(e.at)), " ", e.summary)))
      : h("p", { class: "muted" }, "None: no network has had to grow."));
}
