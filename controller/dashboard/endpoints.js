// Endpoints: a searchable, sortable table; each row opens "explain" from or to it.

import { facts, showDetails } from "./details.js";
import { clear, fill, h } from "./dom.js";

export const id = "endpoints";
export const kinds = ["endpoint", "network", "subnet"];

const COLUMNS = [
  ["name", "Name"], ["tenant", "Tenant"], ["network", "Network"],
  ["host", "Host"], ["ipv4", "IPv4"], ["ipv6", "IPv6"],
];
const view = { rows: [], query: "", sort: "name", ascending: true, session: null };

export async function refresh(session, panel) {
  const [endpoints] = await Promise.all([session.api.get("/v1/endpoints")]);
  const tenantOf = Object.fromEntries(session.store.networks.map((n) => [n.id, n.tenant]));
  view.rows = endpoints.map((e) => ({ ...e, tenant: tenantOf[e.network_id] ?? "" }));
  view.session = session;
  if (!panel.querySelector("#endpoint-search")) build(panel);
  render(panel);
}

function build(panel) {
  const search = h("input", {
    id: "endpoint-search", type: "search", placeholder: "name, network, host, address…",
    oninput: (e) => { view.query = e.target.value.trim().toLowerCase(); render(panel); },
  });
  fill(panel, 
    h("div", { class: "view-head" }, h("h2", {}, "Endpoints"), h("p", { class: "summary", id: "endpoint-count" })),
    h("div", { class: "toolbar" }, h("label", { for: "endpoint-search" }, "Search"), search),
    h("table", { class: "grid", id: "endpoint-table" },
      h("thead", {}, h("tr", {}, COLUMNS.map(([key, label]) => h("th", { scope: "col", dataset: { key } },
        h("button", { type: "button", class: "sort", onclick: () => sortBy(panel, key) }, label))),
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
      h("tbody", {})),
  );
}

function sortBy(panel, key) {
  view.ascending = view.sort === key ? !view.ascending : true;
  view.sort = key;
  render(panel);
}

function visibleRows() {
  const match = (row) => !view.query || COLUMNS.some(([key]) => String(row[key] ?? "").toLowerCase().includes(view.query));
  const dir = view.ascending ? 1 : -1;
  return view.rows.filter(match).sort((a, b) =>
    dir * String(a[view.sort] ?? "").localeCompare(String(b[view.sort] ?? ""), "en", { numeric: true }));
}

function render(panel) {
  const rows = visibleRows();
  for (const th of panel.querySelectorAll("th[data-key]")) {
    th.setAttribute("aria-sort", th.dataset.key === view.sort ? (view.ascending ? "ascending" : "descending") : "none");
  }
  panel.querySelector("#endpoint-count").textContent = `${rows.length} of ${view.rows.length} endpoint(s)`;
  clear(panel.querySelector("tbody")).append(...(rows.length ? rows.map(row) : [
    h("tr", {}, h("td", { colspan: COLUMNS.length + 1, class: "muted" }, view.rows.length ? "No endpoint matches." : "No endpoints yet.")),
  ]));
}

function row(endpoint) {
  return h("tr", { dataset: { endpoint: endpoint.id } },
    COLUMNS.map(([key]) => h("td", { class: key.startsWith("ipv") ? "mono" : "" }, endpoint[key] ?? "–")),
    h("td", {}, h("button", { type: "button", class: "small", onclick: () => explainPanel(endpoint) }, "Explain…")));
}

function explainPanel(endpoint) {
  const others = view.rows.filter((e) => e.id !== endpoint.id);
  const answer = h("div", { class: "answer", "aria-live": "polite" });
  const form = h("form", { class: "explain" },
    h("label", { for: "ex-dir" }, "Direction"),
    h("select", { id: "ex-dir", name: "dir" },
      h("option", { value: "from" }, `from ${endpoint.name}`), h("option", { value: "to" }, `to ${endpoint.name}`)),
    h("label", { for: "ex-peer" }, "Other side (endpoint or address)"),
    h("input", { id: "ex-peer", name: "peer", list: "ex-peers", required: true, autocomplete: "off" }),
    h("datalist", { id: "ex-peers" }, others.map((e) => h("option", { value: e.ipv4 || e.ipv6 }, `${e.name} (${e.network})`))),
    h("label", { for: "ex-proto" }, "Protocol"),
    h("select", { id: "ex-proto", name: "proto" }, ["tcp", "udp", "icmp", "any"].map((p) => h("option", { value: p }, p))),
    h("label", { for: "ex-port" }, "Port"),
    h("input", { id: "ex-port", name: "port", type: "number", min: 1, max: 65535, placeholder: "e.g. 443" }),
    h("button", { type: "submit" }, "Explain"));
  form.addEventListener("submit", (e) => { e.preventDefault(); explain(endpoint, new FormData(form), answer); });
  showDetails(`endpoint ${endpoint.name}`, facts([
    ["network", `${endpoint.tenant}/${endpoint.network}`], ["host", endpoint.host],
    ["IPv4", endpoint.ipv4], ["IPv6", endpoint.ipv6], ["id", endpoint.id],
  ]), h("h3", {}, "May it talk?"), form, answer);
}

async function explain(endpoint, data, answer) {
  const own = endpoint.ipv4 || endpoint.ipv6;
  const peer = String(data.get("peer")).trim();
  const [src, dst] = data.get("dir") === "from" ? [own, peer] : [peer, own];
  const query = new URLSearchParams({ src, dst, proto: data.get("proto") });
  if (data.get("port")) query.set("port", data.get("port"));
  fill(answer, h("p", { class: "muted" }, "Asking…"));
  try {
    const verdict = await view.session.api.get(`/v1/explain?${query}`);
    fill(answer, 
      h("p", { class: `verdict ${verdict.allowed ? "allowed" : "denied"}` }, verdict.allowed ? "Allowed" : "Denied"),
      h("p", {}, verdict.message || verdict.reason || ""),
      verdict.rule_id ? h("p", { class: "muted" }, `rule ${verdict.rule_id}`) : null);
  } catch (err) {
    const missing = err.status === 404 && (!err.problem?.type || err.problem.type.endsWith("no-such-route"));
    fill(answer, h("p", { class: "error" }, missing
      ? "This controller does not answer explain questions yet (GET /v1/explain is missing)."
      : `Cannot explain: ${err.message}`));
  }
}
