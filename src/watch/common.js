// What both watch pages share: move notation, API calls, and building DOM
// from data that users wrote (sender names), always as text, never as HTML.

/** The longest move notation shown; a sender may send any JSON. */
const MAX_NOTATION = 24;

/**
 * The notation of one move event's `latestMove`, as cubing.js writes it:
 * "R", "U'", "R2", "2R", "3-4r'". A sender sends either a string (cubing.js's
 * own proxy sends `move.toString()`) or the move object as JSON: an old
 * cubing.js BlockMove, `{"type": "blockMove", "family": "R", "amount": -1,
 * "innerLayer": 2, "outerLayer": 1}` (layers and amount optional). Anything
 * else is "?". The result never has spaces, so `#moves` is one token a move.
 */
export function moveNotation(latestMove) {
  if (typeof latestMove === "string") {
    return clean(latestMove);
  }
  if (latestMove === null || typeof latestMove !== "object") {
    return "?";
  }
  const family = latestMove.family;
  if (typeof family !== "string" || clean(family) === "?") {
    return "?";
  }
  let text = clean(family);
  const inner = layer(latestMove.innerLayer);
  const outer = layer(latestMove.outerLayer);
  if (inner !== null) {
    text = String(inner) + text;
    if (outer !== null) {
      text = `${outer}-${text}`;
    }
  }
  const amount = latestMove.amount ?? 1;
  if (typeof amount !== "number" || !Number.isSafeInteger(amount)) {
    return "?";
  }
  const size = Math.abs(amount);
  if (size !== 1) {
    text += String(size);
  }
  if (amount < 0) {
    text += "'";
  }
  return clean(text);
}

/** A layer number, or null when there is none (or it is not one). */
function layer(value) {
  return Number.isSafeInteger(value) && value > 0 ? value : null;
}

/** `text` without spaces or control characters, cut to a readable length. */
function clean(text) {
  const bare = text.replace(/[\s\u0000-\u001f\u007f]+/g, "");
  if (bare === "") {
    return "?";
  }
  const chars = Array.from(bare);
  return chars.length > MAX_NOTATION
    ? chars.slice(0, MAX_NOTATION).join("") + "…"
    : bare;
}

/** The names of a stream's senders, for a heading or a link. */
export function senderNames(senders) {
  const names = (Array.isArray(senders) ? senders : [])
    .map((sender) => (sender && typeof sender.name === "string" ? sender.name : ""))
    .filter((name) => name !== "");
  return names.length > 0 ? names.join(", ") : "an unnamed sender";
}

/**
 * GETs `path` on this server: `{status, body, retryAfterMs}`. `status` is
 * 0 when the server could not be reached; `body` is the parsed JSON, or
 * null; `retryAfterMs` is the wait a 429 or 503 asks for, if it says.
 */
export async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store" });
  } catch {
    return { status: 0, body: null, retryAfterMs: null };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { status: response.status, body, retryAfterMs: retryAfter(response) };
}

/** The wait in a response's `Retry-After` (seconds), in milliseconds. */
export function retryAfter(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  return response.headers.has("Retry-After") && Number.isFinite(seconds) && seconds >= 0
    ? seconds * 1000
    : null;
}

/**
 * A new element: `tag` with `attributes` set as attributes and `children`
 * (strings become text nodes, so nothing a user wrote is read as HTML).
 */
export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** A local date and time, for a unix time in milliseconds. */
export function formatTime(ms) {
  return typeof ms === "number" ? new Date(ms).toLocaleString() : "unknown";
}

/** "1 viewer", "3 viewers". */
export function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}
