// The REST client and the live change feed, both with the bearer token in a header.
//
// The feed uses fetch() streaming instead of EventSource: EventSource cannot send an
// Authorization header, and putting the token in the URL (?access_token=) would leak it
// into access logs, proxy logs and browser history. fetch() keeps it in the header.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, Accept: "application/json", ...extra };
  }

  async get(path) {
    const res = await fetch(path, { headers: this.headers(), cache: "no-store" });
    const type = res.headers.get("Content-Type") || "";
    const body = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) throw new ApiError(res.status, typeof body === "object" ? body : { detail: body });
    return body;
  }
}

/** Parse one SSE block ("id: 3\nevent: change\ndata: {...}"); null for comments. */
export function parseSseBlock(block) {
  const event = { id: null, type: "message", data: "" };
  let seen = false;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    seen = true;
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") event.data += (event.data ? "\n" : "") + value;
  }
  return seen ? event : null;
}

/**
 * Follow `/v1/events/stream` from event id `after`, calling onEvent(doc) per change and
 * onState("live" | "reconnecting" | "unauthorized"). Reconnects with Last-Event-ID, so
 * nothing is missed across drops. Returns a function that stops it.
 */
export function followEvents(api, after, onEvent, onState) {
  const abort = new AbortController();
  let last = after;
  let delay = 500;

  async function readStream(res) {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseSseBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event || !event.data) continue;
        if (event.id) last = event.id;
        onEvent(JSON.parse(event.data));
      }
    }
  }

  async function run() {
    while (!abort.signal.aborted) {
      try {
        const headers = api.headers({ Accept: "text/event-stream" });
        if (last !== null && last !== undefined) headers["Last-Event-ID"] = String(last);
        const res = await fetch("/v1/events/stream", { headers, signal: abort.signal });
        if (res.status === 401) {
          onState("unauthorized");
          return;
        }
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        onState("live");
        delay = 500;
        await readStream(res);
      } catch (err) {
        if (abort.signal.aborted) return;
      }
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  run();
  return () => abort.abort();
}
