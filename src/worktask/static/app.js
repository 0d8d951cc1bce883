// The worktask dashboard: one stream of task changes (GET /events) drives the whole page.
// Everything a user submitted is rendered with textContent, never as HTML.

const TOKEN_KEY = "worktask.token";
const RECENT_MAX = 50;
const QUEUE_SHOWN = 200;
const PREVIEW_CHARS = 60;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10_000;
const STALL_MS = 30_000; // the server sends a keep-alive every 10 s: silence this long is a dead link

const $ = (id) => document.getElementById(id);

const state = {
  types: new Map(), // code -> {code, name, description, duration_seconds}
  counters: {},
  queued: new Map(), // id -> status object, in queue order
  queueCutoff: null, // the last queued id the snapshot listed, when it did not list them all
  running: null, // {task, progress0, at}: progress measured locally from the event's arrival
  recent: [], // finished, newest first
  results: new Map(), // id -> {preview, length} | {missing: true}
  skew: 0, // server clock minus local clock, in ms
};

// -- small helpers ----------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function seconds(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return value < 10 ? `${value.toFixed(1)} s` : `${Math.round(value)} s`;
}

function serverTime(text) {
  // RFC 3339 with microseconds: keep milliseconds, which every Date parser accepts.
  return text ? Date.parse(text.replace(/(\.\d{3})\d+/, "$1")) : null;
}

function cut(text, length) {
  return text.length > length ? `${text.slice(0, length)}…` : text;
}

function typeClass(code) {
  return `type-${((Number(code) - 1) % 6) + 1}`;
}

let announceTimer = null;
function announce(message) {
  const region = $("announcer");
  clearTimeout(announceTimer);
  region.textContent = "";
  announceTimer = setTimeout(() => (region.textContent = message), 50);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -- HTTP with the token ----------------------------------------------------------------

let tokenPrompt = null;

function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("token-dialog");
  $("token-message").textContent = message;
  tokenPrompt = new Promise((resolve) => {
    $("token-form").onsubmit = (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      dialog.close();
      tokenPrompt = null;
      resolve();
    };
  });
  if (!dialog.open) dialog.showModal();
  $("token-input").focus();
  return tokenPrompt;
}

$("token-dialog").addEventListener("cancel", (event) => event.preventDefault());

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    await askToken(
      token
        ? "The server refused that token. Enter the token the server was started with."
        : "This server needs a token (it was started with --token). Enter it to continue.",
    );
  }
}

async function problemDetail(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

// -- the events stream ------------------------------------------------------------------

function sseParser(onEvent) {
  let buffer = "";
  return (chunk) => {
    buffer += chunk;
    const end = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    buffer = buffer.slice(0, end).replace(/\r\n?/g, "\n") + buffer.slice(end);
    const blocks = buffer.split("\n\n");
    buffer = blocks.pop();
    for (const block of blocks) {
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // ":" starts a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  };
}

let stream = null; // the AbortController of the current connection
let resyncNow = false;

function resync() {
  resyncNow = true;
  stream?.abort();
}

function setConnection(kind, text) {
  const node = $("connection");
  node.dataset.state = kind;
  node.textContent = text;
}

async function readStream(response, onLive) {
  let stopped = false;
  const parse = sseParser((event, data) => {
    if (event === "snapshot") {
      onSnapshot(JSON.parse(data));
      onLive();
    } else if (event === "task") {
      onTask(JSON.parse(data));
    } else if (event === "shutdown") {
      stopped = true;
    }
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let watchdog = setTimeout(() => stream?.abort(), STALL_MS);
  try {
    while (!stopped) {
      const { value, done } = await reader.read();
      if (done) break;
      clearTimeout(watchdog);
      watchdog = setTimeout(() => stream?.abort(), STALL_MS);
      parse(value);
    }
  } finally {
    clearTimeout(watchdog);
    reader.cancel().catch(() => {});
  }
  return stopped ? "The server stopped" : "Disconnected";
}

async function connect() {
  let delay = RETRY_FIRST_MS;
  for (;;) {
    stream = new AbortController();
    let why = "Disconnected";
    try {
      const response = await api("/events", {
        signal: stream.signal,
        headers: { Accept: "text/event-stream" },
      });
      if (!response.ok) throw new Error(await problemDetail(response));
      why = await readStream(response, () => {
        delay = RETRY_FIRST_MS;
        setConnection("live", "Live");
      });
    } catch (error) {
      if (error.name !== "AbortError") why = `Disconnected (${error.message})`;
    }
    stream.abort();
    if (resyncNow) {
      resyncNow = false;
      continue;
    }
    for (let left = delay; left > 0; left -= 1000) {
      setConnection("reconnecting", `${why}: reconnecting in ${Math.ceil(left / 1000)} s…`);
      await sleep(Math.min(1000, left));
    }
    setConnection("reconnecting", `${why}: reconnecting…`);
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}

// -- the model --------------------------------------------------------------------------

function setTypes(types) {
  state.types = new Map(types.map((t) => [t.code, t]));
  const select = $("task-type");
  const chosen = select.value;
  select.replaceChildren(
    ...types.map((t) => {
      const option = el("option", "", `${t.name} (${seconds(t.duration_seconds)})`);
      option.value = String(t.code);
      option.title = t.description;
      return option;
    }),
  );
  if (chosen) select.value = chosen;
  $("legend").replaceChildren(
    ...types.map((t) => {
      const item = el("li");
      item.append(el("span", `swatch ${typeClass(t.code)}`), el("span", "", t.name));
      return item;
    }),
  );
}

function setRunning(task) {
  state.running = task && { task, progress0: task.progress ?? 0, at: performance.now() };
}

function noteClock(task) {
  const stamp = { queued: task.created_at, running: task.started_at }[task.status] ?? task.finished_at;
  const at = serverTime(stamp);
  if (at !== null) state.skew = at - Date.now();
}

function onSnapshot(snapshot) {
  setTypes(snapshot.types);
  state.counters = snapshot.counters;
  state.queued = new Map(snapshot.queued.map((t) => [t.id, t]));
  const partial = snapshot.queued.length < snapshot.counters.queued;
  state.queueCutoff = partial ? snapshot.queued.at(-1)?.id ?? 0 : null;
  setRunning(snapshot.running);
  if (snapshot.running) {
    const started = serverTime(snapshot.running.started_at);
    const elapsed = (snapshot.running.progress ?? 0) * snapshot.running.duration_seconds * 1000;
    state.skew = started + elapsed - Date.now();
  }
  state.recent = snapshot.recent.slice(0, RECENT_MAX);
  state.recent.forEach(loadPreview);
  scheduleRender();
}

function onTask({ task, counters }) {
  state.counters = counters;
  noteClock(task);
  state.queued.delete(task.id);
  if (state.running?.task.id === task.id) setRunning(null);
  if (task.status === "queued") {
    if (state.queueCutoff === null || task.id <= state.queueCutoff) state.queued.set(task.id, task);
  } else if (task.status === "running") {
    setRunning(task);
  } else {
    state.recent = [task, ...state.recent.filter((t) => t.id !== task.id)].slice(0, RECENT_MAX);
    loadPreview(task);
    forgetResults();
  }
  if (task.status !== "queued") announce(`Task ${task.id} (${task.type}) ${task.status}.`);
  if (counters.queued === 0) state.queueCutoff = null;
  if (state.queueCutoff !== null && state.queued.size === 0) resync(); // fetch the rest
  scheduleRender();
}

function forgetResults() {
  const shown = new Set(state.recent.map((t) => t.id));
  for (const id of state.results.keys()) if (!shown.has(id)) state.results.delete(id);
}

async function loadPreview(task) {
  if (task.status !== "done" || state.results.has(task.id)) return;
  state.results.set(task.id, { loading: true });
  try {
    const response = await api(`/tasks/${task.id}/result`);
    if (!response.ok) {
      state.results.set(task.id, { missing: true });
    } else {
      const { result } = await response.json();
      state.results.set(task.id, { preview: cut(result, PREVIEW_CHARS), length: result.length });
    }
  } catch {
    state.results.delete(task.id); // try again at the next render
  }
  scheduleRender();
}

// -- actions ----------------------------------------------------------------------------

async function submitTask(event) {
  event.preventDefault();
  const form = $("submit-form");
  const error = $("submit-error");
  const data = $("task-data");
  form.setAttribute("aria-busy", "true");
  try {
    const response = await api("/tasks", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: Number($("task-type").value), data: data.value }),
    });
    if (response.status === 201) {
      const task = await response.json();
      error.hidden = true;
      error.textContent = "";
      data.value = "";
      announce(`Task ${task.id} submitted.`);
    } else {
      let detail = await problemDetail(response);
      const retry = response.headers.get("Retry-After");
      if (response.status === 503 && retry) detail += ` (retry after ${retry} s)`;
      error.textContent = detail;
      error.hidden = false;
    }
  } catch (failure) {
    error.textContent = `Could not reach the server: ${failure.message}`;
    error.hidden = false;
  } finally {
    form.removeAttribute("aria-busy");
  }
}

async function cancelTask(id) {
  try {
    const response = await api(`/tasks/${id}`, { method: "DELETE" });
    if (!response.ok) announce(`Task ${id} was not cancelled: ${await problemDetail(response)}`);
  } catch (failure) {
    announce(`Task ${id} was not cancelled: ${failure.message}`);
  }
}

async function showResult(task) {
  const dialog = $("result-dialog");
  const text = $("result-text");
  $("result-title").textContent = `Result of task ${task.id} (${task.type})`;
  $("result-info").textContent = "Loading…";
  text.value = "";
  dialog.showModal();
  try {
    const response = await api(`/tasks/${task.id}/result`);
    if (!response.ok) throw new Error(await problemDetail(response));
    const { result } = await response.json();
    text.value = result;
    $("result-info").textContent = `${result.length.toLocaleString()} characters`;
    text.focus();
    text.setSelectionRange(0, 0);
  } catch (failure) {
    $("result-info").textContent = `Could not load it: ${failure.message}`;
  }
}

async function copyResult() {
  const text = $("result-text");
  try {
    await navigator.clipboard.writeText(text.value);
  } catch {
    text.select(); // the browser refused: leave the text selected for Ctrl+C
    document.execCommand?.("copy");
  }
  $("result-info").textContent = "Copied.";
}

// -- rendering --------------------------------------------------------------------------

function syncRows(tbody, items, rows, build, update) {
  // Keyed update: rows are reused, so focus and selection survive the changes around them.
  const keep = new Set();
  let previous = null;
  for (const item of items) {
    let row = rows.get(item.id);
    if (!row) rows.set(item.id, (row = build(item)));
    update(row, item);
    keep.add(item.id);
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== expected) tbody.insertBefore(row, expected);
    previous = row;
  }
  for (const [id, row] of rows) {
    if (keep.has(id)) continue;
    if (row.contains(document.activeElement)) $("queue-title").focus();
    row.remove();
    rows.delete(id);
  }
}

function cell(label, className, text) {
  // The label shows before the value when narrow screens lay the rows out as cards.
  const td = el("td", className);
  td.dataset.label = label;
  td.append(el("span", "value", text));
  return td;
}

function typeName(task) {
  return el("span", `type ${typeClass(task.code)}`, task.type);
}

function cancelButton(task) {
  const button = el("button", "cancel", "Cancel");
  button.type = "button";
  button.setAttribute("aria-label", `Cancel task ${task.id} (${task.type})`);
  button.addEventListener("click", () => cancelTask(task.id));
  return button;
}

const queueRows = new Map();

function renderQueue() {
  const tasks = []; // the map is in queue order: the snapshot's, then ever larger ids
  for (const task of state.queued.values()) {
    if (tasks.length === QUEUE_SHOWN) break;
    tasks.push(task);
  }
  syncRows(
    $("queue-body"),
    tasks,
    queueRows,
    (task) => {
      const row = el("tr");
      const action = cell("", "actions");
      action.firstChild.append(cancelButton(task));
      const type = cell("Type", "");
      type.firstChild.append(typeName(task));
      row.append(
        cell("Position", "num position"),
        cell("Id", "num", `#${task.id}`),
        type,
        cell("Data", "preview", task.data_preview),
        cell("ETA", "num eta"),
        action,
      );
      return row;
    },
    () => {},
  );
  updateEtas();
  $("queue").hidden = tasks.length === 0;
  $("queue-empty").hidden = tasks.length > 0 || state.counters.queued > 0;
  const hidden = (state.counters.queued ?? 0) - tasks.length;
  $("queue-more").hidden = hidden <= 0;
  $("queue-more").textContent = `…and ${hidden.toLocaleString()} more queued after these.`;
}

function runningProgress(now = performance.now()) {
  const run = state.running;
  if (!run) return 0;
  const elapsed = (now - run.at) / 1000 / Math.max(run.task.duration_seconds, 1e-6);
  return Math.min(1, run.progress0 + elapsed);
}

function updateEtas() {
  const run = state.running;
  let ahead = run ? (1 - runningProgress()) * run.task.duration_seconds : 0;
  let position = 1;
  for (const [id, row] of [...queueRows].sort((a, b) => a[0] - b[0])) {
    ahead += state.queued.get(id)?.duration_seconds ?? 0;
    row.querySelector(".position .value").textContent = String(position++);
    row.querySelector(".eta .value").textContent = `in ${seconds(ahead)}`;
  }
}

function renderRunning() {
  const run = state.running;
  $("running-empty").hidden = Boolean(run);
  if (!run && $("running-task").contains(document.activeElement)) $("running-title").focus();
  $("running-task").hidden = !run;
  if (!run) return;
  const { task } = run;
  $("running-id").textContent = `#${task.id}`;
  $("running-type").textContent = task.type;
  $("running-type").className = `type ${typeClass(task.code)}`;
  $("running-data").textContent = task.data_preview;
  $("running-fill").className = `progress-fill ${typeClass(task.code)}`;
  $("running-cancel").setAttribute("aria-label", `Cancel running task ${task.id} (${task.type})`);
  updateProgress();
}

function updateProgress() {
  const run = state.running;
  if (!run) return;
  const progress = runningProgress();
  const percent = Math.round(progress * 100);
  $("running-fill").style.width = `${(progress * 100).toFixed(2)}%`;
  const bar = $("running-progress");
  if (bar.getAttribute("aria-valuenow") !== String(percent)) {
    bar.setAttribute("aria-valuenow", String(percent));
  }
  const total = run.task.duration_seconds;
  $("running-time").textContent = `${seconds(progress * total)} of ${seconds(total)}`;
}

const recentRows = new Map();

function renderRecent() {
  syncRows(
    $("recent-body"),
    state.recent,
    recentRows,
    (task) => {
      const started = serverTime(task.started_at);
      const finished = serverTime(task.finished_at);
      const row = el("tr", `status-${task.status}`);
      const type = cell("Type", "");
      type.firstChild.append(typeName(task));
      row.append(
        cell("Id", "num", `#${task.id}`),
        type,
        cell("Status", "status"),
        cell("Duration", "num", started ? seconds((finished - started) / 1000) : "—"),
        cell("Data", "preview", task.data_preview),
        cell("Result", "result"),
      );
      row.querySelector(".status .value").append(el("span", `badge ${task.status}`, task.status));
      return row;
    },
    updateResultCell,
  );
  $("recent").hidden = state.recent.length === 0;
  $("recent-empty").hidden = state.recent.length > 0;
}

function updateResultCell(row, task) {
  const target = row.querySelector(".result .value");
  const known = state.results.get(task.id);
  const key = task.error ?? (known ? JSON.stringify(known) : "");
  if (target.dataset.key === key && target.childNodes.length) return;
  target.dataset.key = key;
  if (task.status === "failed") {
    target.replaceChildren(el("span", "error-text", task.error ?? "failed"));
  } else if (task.status !== "done") {
    target.replaceChildren(el("span", "muted", "—"));
  } else if (!known || known.loading) {
    target.replaceChildren(el("span", "muted", "loading…"));
  } else if (known.missing) {
    target.replaceChildren(el("span", "muted", "no longer kept"));
  } else {
    const button = el("button", "link", known.length > PREVIEW_CHARS ? "Show all" : "Open");
    button.type = "button";
    button.setAttribute("aria-label", `Show or copy the full result of task ${task.id}`);
    button.addEventListener("click", () => showResult(task));
    target.replaceChildren(el("code", "result-preview", known.preview), " ", button);
  }
}

function renderCounters() {
  for (const name of ["queued", "running", "done", "failed", "cancelled", "submitted"]) {
    const value = state.counters[name];
    $(`count-${name}`).textContent = value === undefined ? "–" : value.toLocaleString();
  }
}

// -- the timeline: a bar per execution on a time axis ----------------------------------

function executions() {
  const runs = state.recent
    .filter((t) => t.started_at && t.finished_at)
    .map((t) => ({ task: t, start: serverTime(t.started_at), end: serverTime(t.finished_at) }));
  if (state.running) {
    const { task } = state.running;
    runs.push({ task, start: serverTime(task.started_at), end: Date.now() + state.skew });
  }
  return runs.sort((a, b) => a.start - b.start);
}

const timelineBars = new Map();

function renderTimeline() {
  const runs = executions();
  const bars = $("timeline-bars");
  const box = $("timeline");
  if (!runs.length) {
    bars.replaceChildren();
    timelineBars.clear();
    $("timeline-axis").replaceChildren();
    box.setAttribute("aria-label", "No executions yet");
    return;
  }
  const from = runs[0].start;
  const to = Math.max(...runs.map((r) => r.end), from + 1);
  const span = to - from;
  const seen = new Set();
  for (const run of runs) {
    const key = `${run.task.id}:${run.task.status}`;
    seen.add(key);
    let bar = timelineBars.get(key);
    if (!bar) {
      bar = el("div", `bar ${typeClass(run.task.code)} ${run.task.status}`, `${run.task.id}`);
      bar.title = `#${run.task.id} ${run.task.type}, ${run.task.status}`;
      timelineBars.set(key, bar);
      bars.append(bar);
    }
    bar.style.left = `${((run.start - from) / span) * 100}%`;
    bar.style.width = `${Math.max(((run.end - run.start) / span) * 100, 0.2)}%`;
  }
  for (const [key, bar] of timelineBars) {
    if (!seen.has(key)) {
      bar.remove();
      timelineBars.delete(key);
    }
  }
  renderAxis(span);
  const label = `${runs.length} executions over ${seconds(span / 1000)}, one at a time`;
  if (box.getAttribute("aria-label") !== label) box.setAttribute("aria-label", label);
}

function renderAxis(span) {
  const axis = $("timeline-axis");
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((fraction) => {
    const tick = el("span", "tick", `+${seconds((span * fraction) / 1000)}`);
    tick.style.left = `${fraction * 100}%`;
    return tick;
  });
  axis.replaceChildren(...ticks);
}

let renderPending = false;
function scheduleRender() {
  // Bursts of events render once per frame.
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    render();
  });
}

function render() {
  renderCounters();
  renderRunning();
  renderQueue();
  renderRecent();
  renderTimeline();
}

// -- the clock: the running task keeps moving between events ---------------------------

let lastSlowTick = 0;
function tick(now) {
  updateProgress();
  if (now - lastSlowTick > 200) {
    lastSlowTick = now;
    updateEtas();
    if (state.running) renderTimeline();
  }
  requestAnimationFrame(tick);
}

// -- start ------------------------------------------------------------------------------

async function loadTypes() {
  for (let delay = RETRY_FIRST_MS; ; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
    try {
      const response = await api("/task-types");
      if (response.ok) return setTypes(await response.json());
    } catch {
      // the events stream shows the connection state; the snapshot brings the types too
    }
    if (state.types.size) return;
    await sleep(delay);
  }
}

function start() {
  $("submit-form").addEventListener("submit", submitTask);
  $("task-data").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("submit-form").requestSubmit();
    }
  });
  $("running-cancel").addEventListener("click", () => {
    if (state.running) cancelTask(state.running.task.id);
  });
  $("result-copy").addEventListener("click", copyResult);
  $("result-close").addEventListener("click", () => $("result-dialog").close());
  $("queue-title").tabIndex = -1;
  $("running-title").tabIndex = -1;
  loadTypes();
  connect();
  requestAnimationFrame(tick);
}

start();
