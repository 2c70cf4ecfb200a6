// The list page: every open stream and every kept recording, each a link to
// its stream page, asked for again every couple of seconds.

import { element, formatTime, getJSON, plural, senderNames } from "./common.js";

/** How often the open streams are asked for. */
const STREAMS_EVERY_MS = 2000;
/** How often the recordings are asked for: they change less, and weigh more. */
const RECORDINGS_EVERY_MS = 10000;
/** The wait after a failed request, doubled each time up to the cap. */
const RETRY_MS = 1000;
const RETRY_CAP_MS = 15000;

const view = {
  streams: document.getElementById("streams"),
  streamsNote: document.getElementById("streams-note"),
  recordings: document.getElementById("recordings"),
  recordingsNote: document.getElementById("recordings-note"),
  updated: document.getElementById("updated"),
};

/** Sets `node`'s text only when it changes, so a screen reader hears news only. */
function say(node, text) {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}

/** The stream page's address. */
function watchLink(streamID) {
  return `/watch/${encodeURIComponent(streamID)}`;
}

function streamItem(stream) {
  const link = element("a", { href: watchLink(stream.streamID) }, senderNames(stream.senders));
  const facts = [];
  if (typeof stream.live === "boolean") {
    facts.push(element("span", { class: `badge ${stream.live ? "live" : "idle"}` }, stream.live ? "live" : "idle"));
  }
  if (typeof stream.viewers === "number") {
    facts.push(element("span", {}, plural(stream.viewers, "viewer", "viewers")));
  }
  if (typeof stream.createdAt === "number") {
    facts.push(element("span", {}, `since ${formatTime(stream.createdAt)}`));
  }
  return element(
    "li",
    { "data-stream-id": stream.streamID },
    element("h3", {}, link),
    element("p", { class: "facts" }, ...facts),
  );
}

function recordingItem(recording) {
  const link = element("a", { href: watchLink(recording.streamID) }, senderNames(recording.senders));
  const facts = [
    element(
      "span",
      { class: `badge ${recording.endedAt === null ? "live" : "ended"}` },
      recording.endedAt === null ? "open" : "ended",
    ),
  ];
  if (typeof recording.events === "number") {
    facts.push(element("span", {}, plural(recording.events, "event", "events")));
  }
  if (typeof recording.createdAt === "number") {
    facts.push(element("span", {}, `started ${formatTime(recording.createdAt)}`));
  }
  if (typeof recording.endedAt === "number") {
    facts.push(element("span", {}, `ended ${formatTime(recording.endedAt)}`));
  }
  return element(
    "li",
    { "data-stream-id": recording.streamID },
    element("h3", {}, link),
    element("p", { class: "facts" }, ...facts),
  );
}

/**
 * Keeps `list` showing `items`, rebuilt only when they changed, so that a
 * keyboard user's focus on a link stays put between polls.
 */
function render(list, items, toItem) {
  const text = JSON.stringify(items);
  if (list.dataset.shown === text) {
    return;
  }
  list.dataset.shown = text;
  list.replaceChildren(...items.map(toItem));
}

/**
 * Asks for `path` over and over: `show(body)` after each answer, the next
 * ask `every` ms later, or later when the server says so (429 with
 * `Retry-After`) or could not answer (backing off).
 */
function poll(path, every, show, failed) {
  let wait = RETRY_MS;
  const ask = async () => {
    const answer = await getJSON(path);
    let next = every;
    if (answer.status === 200 && answer.body) {
      wait = RETRY_MS;
      show(answer.body);
    } else {
      failed(answer);
      next = Math.max(answer.retryAfterMs ?? wait, every);
      wait = Math.min(wait * 2, RETRY_CAP_MS);
    }
    setTimeout(ask, next);
  };
  ask();
}

poll(
  "/v0/streams",
  STREAMS_EVERY_MS,
  (body) => {
    const streams = Array.isArray(body.streams) ? body.streams : [];
    render(view.streams, streams, streamItem);
    say(
      view.streamsNote,
      streams.length === 0 ? "No stream is open right now." : `${plural(streams.length, "stream is", "streams are")} open.`,
    );
    say(view.updated, `Updated ${new Date().toLocaleTimeString()}.`);
  },
  (answer) => {
    say(
      view.streamsNote,
      answer.status === 0
        ? "The server cannot be reached; trying again."
        : answer.status === 429
          ? "The server asks to slow down; trying again shortly."
          : `The server answered ${answer.status}; trying again.`,
    );
  },
);

poll(
  "/v0/recordings",
  RECORDINGS_EVERY_MS,
  (body) => {
    const recordings = Array.isArray(body.recordings) ? body.recordings : [];
    render(view.recordings, recordings, recordingItem);
    say(
      view.recordingsNote,
      recordings.length === 0
        ? "No recording is kept."
        : `${plural(recordings.length, "recording is", "recordings are")} kept, newest first.`,
    );
  },
  (answer) => {
    say(
      view.recordingsNote,
      answer.status === 404 ? "This server keeps no recordings." : "The recordings cannot be listed right now; trying again.",
    );
  },
);
