// Policy: the network × network matrix (rows: source, columns: destination) and the
// packets hosts dropped per network. Members of a network always reach each other; any
// other pair is denied unless a rule of the destination names the source network.

import { fill, h, shortId } from "./dom.js";

export const id = "policy";
export const kinds = ["rule", "network", "endpoint", "subnet", "host"];
export const poll = true;

export async function refresh(session, panel) {
  const doc = await session.api.get("/v1/views/policy");
  const name = Object.fromEntries(doc.networks.map((n) => [n.id, `${n.tenant}/${n.name}`]));
  fill(panel, 
    h("div", { class: "view-head" }, h("h2", {}, "Policy"),
      h("p", { class: "summary" }, "rows: from (source) · columns: to (destination)")),
    doc.networks.length ? matrix(doc, name) : h("p", { class: "notice" }, "No networks yet."),
    h("ul", { class: "legend" },
      h("li", {}, h("span", { class: "swatch member" }), "same network"),
      h("li", {}, h("span", { class: "swatch allowed" }), "allowed by rule"),
      h("li", {}, h("span", { class: "swatch denied" }), "denied")),
    doc.rules_from_elsewhere ? h("p", { class: "muted" }, `${doc.rules_from_elsewhere} rule(s) admit networks you cannot see.`) : null,
    cidrRules(doc, name),
    drops(doc, name),
  );
}

function matrix(doc, name) {
  const cell = new Map(doc.cells.map((c) => [`${c.src}>${c.dst}`, c]));
  return h("div", { class: "matrix-wrap" }, h("table", { class: "matrix", id: "policy-matrix" },
    h("caption", { class: "visually-hidden" }, "Which network may reach which"),
    h("thead", {}, h("tr", {}, h("td", {}, h("span", { class: "muted small" }, "from ↓ to →")),
      doc.networks.map((n) => h("th", { scope: "col", title: n.id }, name[n.id])))),
    h("tbody", {}, doc.networks.map((src) => h("tr", {},
      h("th", { scope: "row", title: src.id }, name[src.id]),
      doc.networks.map((dst) => matrixCell(cell.get(`${src.id}>${dst.id}`), name)))))));
}

function matrixCell(c, name) {
  const text = { membership: "member", rule: c.rules.map((r) => `rule ${shortId(r.id)}`).join(", "), denied: "denied" }[c.verdict];
  const detail = c.rules.map((r) => `${r.protocol}${r.ports.length ? ` ${r.ports.join(",")}` : ""}`).join("; ");
  const cls = { membership: "member", rule: "allowed", denied: "denied" }[c.verdict];
  return h("td", {
    class: `cell ${cls}`, dataset: { src: c.src, dst: c.dst, verdict: c.verdict },
    title: `${name[c.src]} → ${name[c.dst]}: ${text}${detail ? ` (${detail})` : ""}`,
  }, text, detail && c.verdict === "rule" ? h("span", { class: "small" }, ` ${detail}`) : null);
}

function cidrRules(doc, name) {
  if (!doc.cidr_rules.length) return null;
  return h("section", {}, h("h3", {}, "Rules from address ranges"),
    h("ul", { class: "plain" }, doc.cidr_rules.map((r) => h("li", {},
      h("span", { class: "mono" }, r.from_cidr), ` → ${name[r.network_id]} `,
      `${r.protocol}${r.ports.length ? ` ${r.ports.join(",")}` : ""} (rule ${shortId(r.id)})`))));
}

function drops(doc, name) {
  const rows = Object.entries(doc.drops.networks).sort(([, a], [, b]) => b.dropped + b.spoofed - a.dropped - a.spoofed);
  const body = doc.drops.reported_hosts === 0
    ? h("p", { class: "muted" }, "No host reports firewall counters yet.")
    : h("table", { class: "grid narrow", id: "drops" },
      h("thead", {}, h("tr", {}, ["network", "dropped (no rule)", "spoofed source"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length ? rows.map(([id, d]) => h("tr", { dataset: { network: id } },
        h("td", {}, name[id] ?? id), h("td", { class: "num" }, d.dropped), h("td", { class: "num" }, d.spoofed)))
        : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "Nothing dropped."))));
  return h("section", {}, h("h3", {}, "Drops per network"),
    h("p", { class: "muted small" }, `from ${doc.drops.reported_hosts} host report(s)`), body);
}
