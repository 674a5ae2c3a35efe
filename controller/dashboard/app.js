// The dashboard shell: sign-in, tabs, and live refresh of the views from the change feed.
//
// Each view module exports `id`, `kinds` (the event kinds that change what it shows) and
// `refresh(session, panel)`. On every event the kinds are collected and, after a short
// debounce, the views that depend on them refetch; nothing reloads the page.

import { Api, followEvents } from "./api.js";
import { hideDetails } from "./details.js";
import { clear, fill, h } from "./dom.js";
import * as endpoints from "./endpoints.js";
import * as events from "./events.js";
import * as fabric from "./fabric.js";
import * as networks from "./networks.js";
import * as policy from "./policy.js";

const VIEWS = [fabric, networks, endpoints, policy, events];
const TOKEN_KEY = "terrace.token";
const DEBOUNCE_MS = 250;

let session = null;

function $(id) {
  return document.getElementById(id);
}

async function whoAmI(api) {
  try {
    await api.get("/v1/pools");
    return { admin: true, label: "admin" };
  } catch (err) {
    if (err.status !== 403) throw err;
  }
  const tenants = await api.get("/v1/tenants");
  if (!tenants.length) throw new Error("a host token cannot open the dashboard; use an admin or tenant token");
  return { admin: false, tenant: tenants[0], label: `tenant ${tenants[0].name}` };
}

async function signIn(token) {
  const api = new Api(token);
  const who = await whoAmI(api);
  sessionStorage.setItem(TOKEN_KEY, token);
  session = { api, ...who, store: { networks: [], events: [] }, pending: new Set(), timer: null };
  $("signin").hidden = true;
  $("main").hidden = false;
  $("who").textContent = who.label;
  $("signout").hidden = false;
  await Promise.all([refreshStatus(), events.load(session)]);
  await refreshAll();
  session.stop = followEvents(api, session.store.lastEventId, onChange, setFeedState);
  session.poll = setInterval(pollVisible, 5000);
}

function signOut() {
  if (session) {
    session.stop?.();
    clearInterval(session.poll);
    clearTimeout(session.timer);
  }
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  hideDetails();
  for (const view of VIEWS) clear($(`panel-${view.id}`));
  $("main").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("feed-state").textContent = "";
  $("signin").hidden = false;
  $("token").value = "";
  $("token").focus();
}

function setFeedState(state) {
  const el = $("feed-state");
  el.dataset.state = state;
  el.textContent = { live: "live", reconnecting: "reconnecting…", unauthorized: "signed out" }[state];
  if (state === "unauthorized") signOut();
}

async function refreshStatus() {
  const status = await session.api.get("/v1/status");
  const lag = status.hosts_lagging ? ` · ${status.hosts_lagging} host(s) lagging` : "";
  $("revision").textContent = `revision ${status.revision}${lag}`;
}

async function refreshView(view) {
  const panel = $(`panel-${view.id}`);
  try {
    await view.refresh(session, panel);
  } catch (err) {
    if (err.status === 401) return signOut();
    fill(panel, h("p", { class: "error", role: "alert" }, `Could not load: ${err.message}`));
  }
}

async function refreshAll() {
  // networks first: other views name tenants and networks from its store
  await refreshView(networks);
  await Promise.all(VIEWS.filter((v) => v !== networks).map(refreshView));
}

function onChange(doc) {
  if (!session) return;
  events.add(session, doc);
  session.pending.add(doc.kind);
  clearTimeout(session.timer);
  session.timer = setTimeout(flush, DEBOUNCE_MS);
}

async function flush() {
  if (!session) return;
  const kinds = session.pending;
  session.pending = new Set();
  const stale = VIEWS.filter((v) => v.kinds.some((k) => kinds.has(k)));
  if (stale.includes(networks)) await refreshView(networks);
  await Promise.all([refreshStatus(), ...stale.filter((v) => v !== networks).map(refreshView)]);
}

// Host status reports (BGP sessions, applied revision, counters) are not events: the
// visible view that shows them is polled while the page is visible.
function pollVisible() {
  if (!session || document.hidden) return;
  const view = VIEWS.find((v) => v.id === currentTab());
  if (view?.poll) refreshView(view);
  refreshStatus().catch(() => {});
}

function currentTab() {
  return document.querySelector('[role="tab"][aria-selected="true"]')?.dataset.view;
}

function selectTab(id, focus = false) {
  if (id !== currentTab()) hideDetails();
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.dataset.view === id;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${tab.dataset.view}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
}

function onTabKey(event) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const index = tabs.indexOf(event.target);
  const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
  if (!(event.key in moves)) return;
  event.preventDefault();
  const next = tabs[(moves[event.key] + tabs.length) % tabs.length];
  selectTab(next.dataset.view, true);
}

function setUp() {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab.dataset.view));
    tab.addEventListener("keydown", onTabKey);
  }
  const wanted = location.hash.slice(1);
  selectTab(VIEWS.some((v) => v.id === wanted) ? wanted : "fabric");
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("signin-error");
    error.textContent = "";
    try {
      await signIn($("token").value.trim());
    } catch (err) {
      error.textContent = err.status === 401 ? "That token is not valid." : err.message;
    }
  });
  $("signout").addEventListener("click", signOut);
  document.addEventListener("keydown", (e) => e.key === "Escape" && hideDetails());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved).catch(signOut);
}

setUp();
