// Fabric view: spines, leaves and hosts grouped by rack, drawn in SVG; links coloured by
// the BGP session state the hosts report. Routers do not report to the controller, so
// spine–leaf sessions are drawn as "unknown" rather than guessed.

import { facts, showDetails } from "./details.js";
import { fill, formatCount, h, s, timeOf } from "./dom.js";

export const id = "fabric";
export const kinds = ["fabric", "host", "rack", "endpoint", "subnet"];
export const poll = true;

const W = 124;
const H = 58;
const GAP = 14;
const PAD = 12;
const RACK_GAP = 24;
const Y = { spine: 20, rackTop: 150, leaf: 178, host: 300 };
const STATES = [
  ["established", "Established"],
  ["idle", "Idle / connecting"],
  ["down", "Down"],
  ["unknown", "Unknown (not reported)"],
];

/** A speaker's session state ("up", "idle", "active", "down", ...) as a colour class. */
export function sessionClass(state) {
  const value = String(state || "unknown").toLowerCase();
  if (value === "up" || value === "established") return "established";
  if (value === "down") return "down";
  if (value === "unknown") return "unknown";
  return "idle";
}

export async function refresh(session, panel) {
  if (!session.admin) {
    fill(panel, 
      h("h2", {}, "Fabric"),
      h("p", { class: "notice" }, "The physical fabric is shown to the admin only. Your networks, endpoints and policy are in the other tabs."),
    );
    return;
  }
  const doc = await session.api.get("/v1/views/fabric");
  const model = buildModel(doc);
  const focused = panel.contains(document.activeElement) ? document.activeElement.dataset?.node : null;
  fill(panel, 
    h("div", { class: "view-head" }, h("h2", {}, "Fabric"), summary(doc, model)),
    doc.fabric ? null : h("p", { class: "notice", role: "status" },
      "No fabric has been applied yet (terrace fabric apply FILE). Registered hosts are shown by rack."),
    legend(),
    h("div", { class: "drawing" }, draw(model)),
  );
  // a live redraw must not take the keyboard focus away from the node it was on
  if (focused) panel.querySelector(`[data-node="${CSS.escape(focused)}"]`)?.focus();
}

function summary(doc, model) {
  const lagging = doc.hosts.filter((x) => x.lagging).length;
  const b4 = doc.hosts.reduce((n, x) => n + x.borrowed.ipv4, 0);
  const b6 = doc.hosts.reduce((n, x) => n + x.borrowed.ipv6, 0);
  const parts = [
    doc.fabric ? `topology ${doc.fabric.name}` : "no topology",
    `${model.spines.length} spines`,
    `${model.racks.reduce((n, r) => n + r.leaves.length, 0)} leaves`,
    `${doc.hosts.length} hosts`,
    `borrowed ${b4} /32 · ${b6} /128`,
  ];
  return h("p", { class: "summary" }, parts.join(" · "),
    lagging ? h("span", { class: "badge warn" }, `${lagging} lagging`) : null);
}

function legend() {
  return h("ul", { class: "legend", "aria-label": "Session colours" },
    STATES.map(([cls, label]) => h("li", {}, h("span", { class: `swatch ${cls}` }), label)),
    h("li", {}, h("span", { class: "swatch lag" }), "host lags its desired revision"));
}

function buildModel(doc) {
  const plan = doc.fabric;
  const routes = doc.routes || {};
  const routers = plan ? plan.routers : [];
  const rackNames = [...new Set([...(plan ? plan.racks : []), ...doc.hosts.map((x) => x.rack)])];
  const racks = rackNames.map((name) => ({
    name,
    leaves: routers.filter((r) => r.role === "leaf" && r.rack === name),
    hosts: doc.hosts.filter((x) => x.rack === name),
  }));
  const spines = routers.filter((r) => r.role === "spine");
  return { plan, routes, racks, spines, hosts: doc.hosts };
}

function rowX(start, width, count) {
  const used = count * (W + GAP) - GAP;
  return Array.from({ length: count }, (_, i) => start + (width - used) / 2 + i * (W + GAP));
}

function rows(model) {
  // without spines or leaves (no fabric applied) the rows close up
  const rackTop = model.spines.length ? Y.rackTop : 10;
  const leaf = rackTop + (Y.leaf - Y.rackTop);
  const host = model.racks.some((r) => r.leaves.length) ? leaf + (Y.host - Y.leaf) : rackTop + 30;
  return { rackTop, leaf, host };
}

function place(model) {
  const y = rows(model);
  const at = {};
  const boxes = [];
  let x = 20;
  for (const rack of model.racks) {
    const n = Math.max(rack.leaves.length, rack.hosts.length, 1);
    const width = n * (W + GAP) - GAP + 2 * PAD;
    rowX(x, width, rack.leaves.length).forEach((lx, i) => (at[rack.leaves[i].name] = { x: lx, y: y.leaf }));
    rowX(x, width, rack.hosts.length).forEach((hx, i) => (at[rack.hosts[i].name] = { x: hx, y: y.host }));
    boxes.push({ name: rack.name, x, width });
    x += width + RACK_GAP;
  }
  const total = Math.max(x - RACK_GAP + 20, model.spines.length * (W + GAP) + 40);
  rowX(0, total, model.spines.length).forEach((sx, i) => (at[model.spines[i].name] = { x: sx, y: Y.spine }));
  return { at, boxes, rackTop: y.rackTop, width: total, height: y.host + H + 30 };
}

function draw(model) {
  const { at, boxes, rackTop, width, height } = place(model);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Fabric: spines, leaves and hosts by rack, with BGP session states",
  });
  // fit the panel, but never grow past natural size nor shrink text below 70 %
  svg.style.maxWidth = `${width}px`;
  svg.style.minWidth = `${Math.round(width * 0.7)}px`;
  for (const box of boxes) {
    svg.append(s("g", { class: "rack" },
      s("rect", { x: box.x, y: rackTop, width: box.width, height: height - rackTop - 8, rx: 10 }),
      s("text", { x: box.x + 10, y: rackTop + 17 }, `rack ${box.name}`)));
  }
  svg.append(...links(model, at));
  for (const router of [...model.spines, ...model.racks.flatMap((r) => r.leaves)]) {
    svg.append(routerNode(router, model.routes[router.name], at[router.name]));
  }
  for (const host of model.hosts) {
    if (at[host.name]) svg.append(hostNode(host, at[host.name]));
  }
  return svg;
}

function links(model, at) {
  const out = [];
  const roles = model.plan ? model.plan.nodes : {};
  const hostsByName = Object.fromEntries(model.hosts.map((x) => [x.name, x]));
  for (const link of model.plan ? model.plan.links : []) {
    const [top, bottom] = (roles[link.a]?.role === "host" || roles[link.b]?.role === "spine")
      ? [link.b, link.a] : [link.a, link.b];
    if (!at[top] || !at[bottom]) continue;
    const host = hostsByName[bottom];
    if (host) out.push(...hostSessions(host, top, at[top], at[bottom]));
    else out.push(line(at[top], at[bottom], 0, "unknown", `${top} — ${bottom}: session state not reported (routers do not report to the controller)`, { link: `${top}~${bottom}` }));
  }
  return out;
}

function hostSessions(host, leaf, from, to) {
  const expected = (host.peers || []).filter((p) => p.name === leaf);
  const families = expected.length ? expected.map((p) => p.family) : [4, 6];
  return families.map((family) => {
    const session = host.sessions.find((x) => x.name === leaf && x.family === family);
    const state = sessionClass(session?.state);
    const label = `${host.name} → ${leaf} IPv${family}: ${session ? session.state : "not reported"}`;
    return line(from, to, family === 4 ? -4 : 4, state, label, { link: `${leaf}~${host.name}~${family}` });
  });
}

function line(a, b, dx, state, label, dataset) {
  return s("line", {
    x1: a.x + W / 2 + dx, y1: a.y + H, x2: b.x + W / 2 + dx, y2: b.y,
    class: `link ${state}`, dataset: { ...dataset, state },
  }, s("title", {}, label));
}

function nodeGroup(kind, name, pos, classes, onOpen, lines) {
  const g = s("g", {
    class: `node ${kind} ${classes}`.trim(), transform: `translate(${pos.x},${pos.y})`,
    tabindex: 0, role: "button", "aria-label": `${kind} ${name}: ${lines.slice(1).join(", ")}`,
    dataset: { node: name, role: kind },
    onclick: onOpen,
    onkeydown: (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), onOpen()),
  }, s("rect", { width: W, height: H, rx: 8 }));
  lines.forEach((text, i) => g.append(s("text", { x: 10, y: 18 + i * 15, class: i ? "sub" : "name" }, text)));
  return g;
}

function routerNode(router, count, pos) {
  const lines = [router.name, `AS ${router.asn}`];
  if (count) lines.push(`${formatCount(count.with_aggregation)} prefixes`);
  return nodeGroup(router.role, router.name, pos, "", () => routerDetails(router, count), lines);
}

function hostNode(host, pos) {
  const lines = [host.name, `${host.endpoints} ep · ${host.blocks} blk`];
  const borrowed = host.borrowed.ipv4 + host.borrowed.ipv6;
  if (host.lagging) lines.push(`lags: rev ${host.applied_revision ?? "–"} < ${host.revision}`);
  else if (borrowed) lines.push(`borrowed ${host.borrowed.ipv4}/32 ${host.borrowed.ipv6}/128`);
  else if (!host.reported) lines.push("never reported");
  const classes = [host.lagging && "lagging", !host.reported && "silent"].filter(Boolean).join(" ");
  return nodeGroup("host", host.name, pos, classes, () => hostDetails(host), lines);
}

function routerDetails(router, count) {
  showDetails(`${router.role} ${router.name}`, facts([
    ["ASN", router.asn],
    ["router id", router.router_id],
    ["loopback", `${router.loopback4} ${router.loopback6}`],
    ["rack", router.rack],
    ["prefixes", count ? `${count.with_aggregation} (without aggregation ${count.without_aggregation})` : null],
    ["borrowed", count ? `${count.borrowed4} /32 · ${count.borrowed6} /128` : null],
    ["sessions", "not reported: routers do not report to the controller"],
  ]));
}

function hostDetails(host) {
  const sessions = host.sessions.length
    ? h("table", { class: "compact" },
      h("thead", {}, h("tr", {}, ["peer", "family", "address", "state"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, host.sessions.map((x) => h("tr", {},
        h("td", {}, x.name), h("td", {}, `IPv${x.family}`), h("td", { class: "mono" }, x.peer_address),
        h("td", {}, h("span", { class: `state ${sessionClass(x.state)}` }, x.state))))))
    : h("p", { class: "muted" }, "No BGP sessions reported.");
  showDetails(`host ${host.name}`,
    facts([
      ["rack", host.rack],
      ["ASN", host.asn],
      ["address", [host.address, host.address6].filter(Boolean).join("  ")],
      ["desired revision", host.revision],
      ["applied revision", host.applied_revision ?? "never reported"],
      ["last report", host.status_at ? timeOf(host.status_at) : null],
      ["endpoints", host.endpoints],
      ["blocks", host.blocks],
      ["borrowed", `${host.borrowed.ipv4} /32 · ${host.borrowed.ipv6} /128`],
      ["last error", host.status?.last_error],
    ]),
    h("h3", {}, "BGP sessions"), sessions);
}
