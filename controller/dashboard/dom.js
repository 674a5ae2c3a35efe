// Small DOM helpers. Data never goes through innerHTML: text is always textContent.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("td", {class: "x"}, "text", otherNode) — an HTML element. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** s("rect", {x: 1}) — an SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Replace el's children (null, undefined and false are left out). */
export function fill(el, ...children) {
  return build(clear(el), {}, children);
}

/** 18446744073709551616 → "2^64"; 1234567 → "1,234,567". */
export function formatCount(n) {
  if (n > 1e6) {
    const exp = Math.log2(n);
    if (Number.isInteger(exp)) return `2^${exp}`;
    return n.toExponential(2);
  }
  return Number(n).toLocaleString("en");
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

export function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso ?? "") : d.toLocaleTimeString("en-GB");
}
