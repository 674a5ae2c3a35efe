// Events: the live change feed (endpoint, rule, network, host, fabric changes).

import { fill, h, shortId, timeOf } from "./dom.js";

export const id = "events";
export const kinds = [];

const KEEP = 500;
let panelRef = null;

/** The recent history, before the stream takes over from its last id. */
export async function load(session) {
  const recent = await session.api.get("/v1/events?limit=200");
  session.store.events = recent;
  session.store.lastEventId = recent.length ? recent[recent.length - 1].id : 0;
}

export function add(session, event) {
  const list = session.store.events;
  if (list.some((e) => e.id === event.id)) return;
  list.push(event);
  if (list.length > KEEP) list.splice(0, list.length - KEEP);
  if (panelRef) prepend(panelRef, event);
}

export async function refresh(session, panel) {
  panelRef = panel;
  fill(panel, 
    h("div", { class: "view-head" }, h("h2", {}, "Events"),
      h("p", { class: "summary" }, "newest first; follows the change feed live")),
    h("ol", { class: "events", id: "event-list", "aria-live": "polite" }),
  );
  if (!session.store.events.length) {
    panel.querySelector("#event-list").append(h("li", { class: "empty muted" }, "No events yet."));
  }
  for (const event of session.store.events) prepend(panel, event);
}

function prepend(panel, event) {
  const list = panel.querySelector("#event-list");
  if (!list) return;
  list.querySelector(".empty")?.remove();
  list.prepend(h("li", { dataset: { kind: event.kind, id: event.id } },
    h("time", { datetime: event.at }, timeOf(event.at)),
    h("span", { class: `kind kind-${event.kind}` }, `${event.kind} ${event.action}`),
    h("span", { class: "what" }, event.summary || shortId(event.object_id)),
    event.revision ? h("span", { class: "muted small" }, `rev ${event.revision}`) : null));
}
