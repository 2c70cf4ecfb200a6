// One stream's page: the stream live over its socket, resumed by offset
// after a drop, or, once it has ended, its recording replayed at the pace
// it was recorded. Everything is shown as text first; a 3D cube from
// cubing.js joins when its CDN can be reached.

import { element, formatTime, getJSON, moveNotation, plural, senderNames } from "./common.js";

/** cubing.js's `<twisty-player>`, an ES module. */
const TWISTY_URL = "https://cdn.cubing.net/v0/js/cubing/twisty";
/** How long loading cubing.js may take before the page gives up on it. */
const TWISTY_WAIT_MS = 15000;
/** How often the stream's info (sender connected, viewers) is asked for. */
const INFO_EVERY_MS = 2000;
/** The first wait before a reconnect; it doubles with each failed try... */
const RECONNECT_FIRST_MS = 250;
/** ...up to this. Each wait is jittered down by up to half. */
const RECONNECT_CAP_MS = 4000;
/** A socket open this long has recovered: the next drop starts over at the first wait. */
const STEADY_MS = 3000;
/** A replay waits at most this long between two events. */
const PACE_CAP_MS = 2000;
/** The close the server sends when a stream ends (any other close is a drop). */
const END_CODE = 1000;
const END_REASON = "stream ended";
/** The error of `GET /v0/streams/{id}` for a stream that is not open. */
const UNKNOWN_STREAM = "stream ID is unknown";

const streamID = decodeURIComponent(location.pathname.slice("/watch/".length));
const streamPath = `/v0/streams/${encodeURIComponent(streamID)}`;

const view = {
  title: document.getElementById("title"),
  status: document.getElementById("status"),
  statusDetail: document.getElementById("status-detail"),
  senders: document.getElementById("senders"),
  viewers: document.getElementById("viewers"),
  notices: document.getElementById("notices"),
  moves: document.getElementById("moves"),
  moveCount: document.getElementById("move-count"),
  lastMove: document.getElementById("last-move"),
  orientation: document.getElementById("orientation"),
  lastReset: document.getElementById("last-reset"),
  player: document.getElementById("player"),
  playerNote: document.getElementById("player-note"),
  replay: document.getElementById("replay"),
  replayNote: document.getElementById("replay-note"),
  replayPlay: document.getElementById("replay-play"),
  replayPause: document.getElementById("replay-pause"),
  replayProgress: document.getElementById("replay-progress"),
  replayPosition: document.getElementById("replay-position"),
};

/**
 * Where the page is: `connecting` (no socket open yet), `open`,
 * `reconnecting` (the socket dropped), `ended`, `replay`.
 */
let phase = "connecting";
/** The stream's latest `StreamInfo`, if one was had. */
let info = null;
/** Whether `info` was asked for since the socket last opened. */
let infoFresh = false;
/** The highest event offset seen: where a reconnect resumes (`?since=`). */
let lastOffset = null;
/** How many moves `#moves` shows. */
let moveCount = 0;
/** The moves since the last reset, for the 3D cube when it arrives late. */
let movesSinceReset = [];
/** The `<twisty-player>`, once cubing.js has loaded. */
let twisty = null;

// ---- what the page shows ----

function setText(node, text) {
  if (node.textContent !== text) {
    node.textContent = text;
  }
}

/** The word `#status` holds, and a sentence saying what it means. */
function statusNow() {
  switch (phase) {
    case "connecting":
      return ["connecting", "Opening the stream…"];
    case "reconnecting":
      return ["reconnecting", "The connection dropped; reconnecting, without missing a move."];
    case "open":
      if (!infoFresh) {
        // The socket is back, but whether a sender is is not known yet.
        return lastOffset === null && moveCount === 0
          ? ["connecting", "Opening the stream…"]
          : ["reconnecting", "Reconnected; asking whether a sender is connected…"];
      }
      return info && info.live === false
        ? ["idle", "No sender is connected right now; moves appear when one is."]
        : ["live", "A sender is connected; moves appear as they are made."];
    case "ended":
      return ["ended", "This stream has ended."];
    case "replay":
      return ["replay", replay.playing ? "Playing the recording." : replay.index >= replay.events.length ? "The replay has finished." : "The replay is paused."];
    default:
      return ["connecting", ""];
  }
}

function showStatus() {
  const [word, detail] = statusNow();
  setText(view.status, word);
  view.status.className = `badge ${word}`;
  setText(view.statusDetail, detail);
  document.body.dataset.status = word;
}

function showInfo() {
  if (!info) {
    return;
  }
  const names = senderNames(info.senders);
  setText(view.senders, names);
  setText(view.title, `Stream by ${names}`);
  document.title = `${names}: watch`;
  if (typeof info.viewers === "number") {
    setText(view.viewers, `${plural(info.viewers, "viewer", "viewers")} (this page included)`);
  }
}

/** A line in the notices, kept for the reader (gaps, a missing recording). */
function notice(text) {
  view.notices.append(element("li", {}, text));
}

// ---- events, live or replayed ----

function clearEvents() {
  view.moves.replaceChildren();
  moveCount = 0;
  movesSinceReset = [];
  setText(view.moveCount, "0 moves");
  setText(view.lastMove, "none yet");
  setText(view.orientation, "none yet");
  setText(view.lastReset, "none yet");
  twistyReset();
}

function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/**
 * Shows one event: a move, an orientation, a reset, or a gap; `at` is when
 * it happened (unix ms): now for a live one, when it was recorded for a
 * replayed one.
 */
function apply(event, data, at = Date.now()) {
  switch (event) {
    case "move": {
      const notation = moveNotation(data ? data.latestMove : undefined);
      view.moves.append(moveCount === 0 ? notation : ` ${notation}`);
      moveCount += 1;
      movesSinceReset.push(notation);
      setText(view.moveCount, plural(moveCount, "move", "moves"));
      setText(view.lastMove, notation);
      twistyMove(notation);
      break;
    }
    case "orientation": {
      const q = data && data.quaternion ? data.quaternion : {};
      const [x, y, z, w] = [q.x, q.y, q.z, q.w].map(number);
      setText(
        view.orientation,
        [x, y, z, w].includes(null)
          ? "not readable"
          : `quaternion x ${x.toFixed(3)}, y ${y.toFixed(3)}, z ${z.toFixed(3)}, w ${w.toFixed(3)}`,
      );
      break;
    }
    case "reset": {
      const tracking = data && data.trackingOrientation === true;
      setText(
        view.lastReset,
        `at ${new Date(at).toLocaleTimeString()}, ${tracking ? "tracking" : "not tracking"} orientation`,
      );
      movesSinceReset = [];
      twistyReset();
      break;
    }
    case "gap": {
      const from = number(data && data.from);
      const to = number(data && data.to);
      notice(
        from !== null && to !== null
          ? `Events ${from} to ${to} are no longer kept by the server, so some moves are missing here; the stream goes on from its latest state.`
          : "Some events are no longer kept by the server, so some moves are missing here.",
      );
      break;
    }
    default:
      break;
  }
}

// ---- live: the socket ----

let socket = null;
let attempt = 0;
let steadyTimer = null;

function socketURL() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const since = lastOffset === null ? "" : `?since=${lastOffset}`;
  return `${scheme}//${location.host}${streamPath}/socket${since}`;
}

function connect() {
  let opened = false;
  // Events at or below this were shown before: a resumed socket starts above it.
  const shownUpTo = lastOffset;
  const ws = new WebSocket(socketURL());
  socket = ws;
  ws.onopen = () => {
    opened = true;
    phase = "open";
    infoFresh = false;
    showStatus();
    steadyTimer = setTimeout(() => {
      attempt = 0;
    }, STEADY_MS);
    refreshInfo().then(() => {
      infoFresh = true;
      showStatus();
    });
  };
  ws.onmessage = (message) => {
    if (socket !== ws || typeof message.data !== "string") {
      return;
    }
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") {
      return;
    }
    const offset = number(frame.offset);
    if (offset !== null) {
      if (shownUpTo !== null && offset <= shownUpTo) {
        return;
      }
      lastOffset = lastOffset === null ? offset : Math.max(lastOffset, offset);
    }
    apply(frame.event, frame.data);
  };
  ws.onclose = (close) => {
    if (socket !== ws) {
      return;
    }
    socket = null;
    clearTimeout(steadyTimer);
    if (close.code === END_CODE && close.reason === END_REASON) {
      ended({ autoplay: false });
    } else if (opened) {
      phase = "reconnecting";
      showStatus();
      reconnectLater();
    } else {
      notOpened();
    }
  };
}

/**
 * The socket did not open: the stream may be gone (while the page was
 * away, or before it came), or the server unreachable or busy.
 */
async function notOpened() {
  const answer = await getJSON(streamPath);
  if (answer.status === 404 && answer.body && answer.body.error === UNKNOWN_STREAM) {
    ended({ autoplay: phase === "connecting" });
    return;
  }
  reconnectLater(answer.retryAfterMs);
}

function reconnectLater(atLeastMs = null) {
  const full = Math.min(RECONNECT_CAP_MS, RECONNECT_FIRST_MS * 2 ** attempt);
  attempt += 1;
  const wait = full / 2 + (Math.random() * full) / 2;
  setTimeout(connect, Math.max(wait, atLeastMs ?? 0));
}

/** Asks for the stream's info; keeps it if the answer has it. */
async function refreshInfo() {
  const answer = await getJSON(streamPath);
  if (answer.status === 200 && answer.body && typeof answer.body === "object") {
    info = answer.body.stream && typeof answer.body.stream === "object" ? answer.body.stream : answer.body;
    showInfo();
  }
  return answer;
}

/** Asks for the info every couple of seconds while the stream may be open. */
async function pollInfo() {
  if (phase !== "connecting" && phase !== "open" && phase !== "reconnecting") {
    return;
  }
  const answer = await refreshInfo();
  if (phase === "open") {
    infoFresh = true;
  }
  showStatus();
  setTimeout(pollInfo, Math.max(INFO_EVERY_MS, answer.retryAfterMs ?? 0));
}

// ---- ended: the recording ----

const replay = { events: [], index: 0, playing: false, timer: null, capped: 0 };

/** The stream is not open: say so, and offer (or start) its recording. */
async function ended({ autoplay }) {
  phase = "ended";
  showStatus();
  setText(view.viewers, "none: the stream has ended");
  if (!info) {
    showRecordedSenders();
  }
  const recording = await loadRecording();
  if (recording === null) {
    notice(
      moveCount === 0 && lastOffset === null
        ? "This stream is not open, and no recording of it is kept."
        : "No recording of this stream is kept, so it cannot be replayed.",
    );
    return;
  }
  replay.events = recording;
  replay.index = recording.length;
  replay.capped = recording.filter(
    (event, i) => i > 0 && event.receivedAt - recording[i - 1].receivedAt > PACE_CAP_MS,
  ).length;
  view.replay.hidden = false;
  setText(view.replayPlay, "Play the recording");
  setText(
    view.replayNote,
    `The recording has ${plural(recording.length, "event", "events")}` +
      (recording.length > 0 ? `, from ${formatTime(recording[0].receivedAt)}` : "") +
      `. It plays at the pace it was recorded, except that a pause longer than ${PACE_CAP_MS / 1000} s is cut to ${PACE_CAP_MS / 1000} s` +
      (replay.capped > 0 ? ` (${plural(replay.capped, "pause is", "pauses are")} cut).` : "."),
  );
  showReplayPosition();
  if (autoplay) {
    play();
  }
}

/** Who sent the stream, from the list of recordings, for a page that came after its end. */
async function showRecordedSenders() {
  const answer = await getJSON("/v0/recordings");
  const recordings = answer.body && Array.isArray(answer.body.recordings) ? answer.body.recordings : [];
  const recording = recordings.find((r) => r && r.streamID === streamID);
  if (recording && !info) {
    info = { senders: recording.senders };
    showInfo();
  }
}

/** The recorded events, oldest first, or null if none are kept. */
async function loadRecording() {
  let response;
  try {
    response = await fetch(`${streamPath}/recording`, { cache: "no-store" });
  } catch {
    return null;
  }
  if (response.status !== 200) {
    return null;
  }
  const events = [];
  for (const line of (await response.text()).split("\n")) {
    if (line.trim() === "") {
      continue;
    }
    try {
      const event = JSON.parse(line);
      if (event && typeof event === "object" && typeof event.event === "string") {
        events.push(event);
      }
    } catch {
      // A line that is not JSON is skipped; the rest still plays.
    }
  }
  return events;
}

function showReplayPosition() {
  view.replayProgress.max = Math.max(1, replay.events.length);
  view.replayProgress.value = Math.min(replay.index, replay.events.length);
  setText(view.replayPosition, `event ${Math.min(replay.index, replay.events.length)} of ${replay.events.length}`);
  view.replayPlay.disabled = replay.playing;
  view.replayPause.disabled = !replay.playing;
}

function play() {
  if (replay.index >= replay.events.length) {
    // From the start: the first play, or once more after the end.
    clearEvents();
    replay.index = 0;
  }
  phase = "replay";
  replay.playing = true;
  setText(view.replayPlay, "Play");
  showReplayPosition();
  showStatus();
  step();
}

function pause() {
  replay.playing = false;
  clearTimeout(replay.timer);
  showReplayPosition();
  showStatus();
}

/** Shows the next recorded event, and waits as long as the recording did. */
function step() {
  if (!replay.playing) {
    return;
  }
  const event = replay.events[replay.index];
  if (event) {
    apply(event.event, event.data, number(event.receivedAt) ?? Date.now());
    replay.index += 1;
  }
  const next = replay.events[replay.index];
  if (!next) {
    replay.playing = false;
    setText(view.replayPlay, "Play again");
    showReplayPosition();
    showStatus();
    return;
  }
  const [then, now] = [event ? event.receivedAt : null, next.receivedAt].map(number);
  const wait = then !== null && now !== null ? Math.min(Math.max(now - then, 0), PACE_CAP_MS) : 0;
  showReplayPosition();
  replay.timer = setTimeout(step, wait);
}

view.replayPlay.addEventListener("click", play);
view.replayPause.addEventListener("click", pause);

// ---- the 3D cube, when cubing.js can be had ----

function twistyMove(notation) {
  if (twisty === null) {
    return;
  }
  try {
    twisty.experimentalAddMove(notation);
  } catch {
    // Notation cubing.js does not know stays in the text view only.
  }
}

function twistyReset() {
  if (twisty !== null) {
    twisty.alg = "";
  }
}

async function loadTwisty() {
  try {
    const module = await Promise.race([
      import(TWISTY_URL),
      new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), TWISTY_WAIT_MS)),
    ]);
    const player = new module.TwistyPlayer({
      puzzle: "3x3x3",
      controlPanel: "none",
      background: "none",
      hintFacelets: "none",
    });
    view.player.append(player);
    twisty = player;
    for (const notation of movesSinceReset) {
      twistyMove(notation);
    }
    document.body.dataset.view = "3d";
    setText(view.playerNote, "The cube in 3D (cubing.js), from the last reset on.");
  } catch {
    document.body.dataset.view = "plain";
    setText(
      view.playerNote,
      "The 3D cube could not be loaded (cubing.js's CDN is out of reach), so the stream is shown as text: every move above, and the orientation and last reset below.",
    );
  }
}

// ---- start ----

setText(view.title, "A stream");
showStatus();
connect();
pollInfo();
loadTwisty();
