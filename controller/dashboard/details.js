// The side panel that shows whatever was clicked: a node, an endpoint's explain form.

import { clear, fill, h } from "./dom.js";

export function showDetails(title, ...content) {
  const panel = document.getElementById("details");
  fill(panel, 
    h("div", { class: "details-head" },
      h("h2", { id: "details-title" }, title),
      h("button", { type: "button", class: "ghost", "aria-label": "Close details", onclick: hideDetails }, "×")),
    ...content.flat(),
  );
  panel.hidden = false;
  panel.focus();
}

export function hideDetails() {
  const panel = document.getElementById("details");
  panel.hidden = true;
  clear(panel);
}

/** A definition list from [label, value] pairs (null values are left out). */
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}
