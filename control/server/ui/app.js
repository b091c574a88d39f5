// zk-migrate dashboard: reads the control node's API with the token the
// user gives (kept in sessionStorage, sent as "Authorization: Bearer", never
// in a URL), follows the audit event stream with fetch (EventSource cannot
// send the header) and polls the live views (health, ensembles, proxies,
// tasks). Every value is written with textContent: nothing from the API is
// parsed as markup.
"use strict";

const STEPS = [
  [1, "1 deploy B + sync"], [2, "flip"], [3, "2 masters on B"], [4, "3 masters off A"],
  [5, "4 agents on B"], [6, "5 drain agents A"], [7, "6 remove A"], [8, "done"],
];
const POLL_MS = 2000;
const LAG_WINDOW_MS = 5 * 60 * 1000;
const AUDIT_TAIL = 50;

const state = {
  token: sessionStorage.getItem("zkm-token") || "",
  role: "", mig: "", m: null, lastSeq: 0, audit: [], lag: [], problems: {},
  stream: null, timer: null, pending: null,
};

const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }

// problem records (or with "" clears) one source's trouble; the banner
// shows every current one.
function problem(source, msg) {
  if (msg) state.problems[source] = msg; else delete state.problems[source];
  const b = $("banner");
  const all = [...new Set(Object.values(state.problems))];
  b.hidden = all.length === 0;
  b.textContent = all.join(" | ");
}

class APIError extends Error {
  constructor(status, body) {
    super((body && body.error) || ("HTTP " + status));
    this.status = status; this.hint = body && body.hint;
  }
}

// api calls the control node; the reply's X-Zkm-Stale header (a follower
// answering from its own state, no leader reachable) is reported.
async function api(method, path, body) {
  const opts = { method, headers: { "Authorization": "Bearer " + state.token }, cache: "no-store" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new APIError(0, { error: "control node unreachable (" + e.message + ")", hint: "it may be down; open the dashboard of another control node" });
  }
  const stale = resp.headers.get("X-Zkm-Stale");
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!resp.ok) throw new APIError(resp.status, data);
  return { data, stale };
}

// ---- login ----

async function login(token) {
  state.token = token;
  const { data } = await api("GET", "/api/v1/whoami");
  sessionStorage.setItem("zkm-token", token);
  state.role = data.role;
  $("whoami").textContent = data.name + " (" + data.role + ")";
  $("logout").hidden = false;
  $("login").hidden = true;
  $("dash").hidden = false;
  await start();
}

function logout() {
  sessionStorage.removeItem("zkm-token");
  location.reload();
}

// ---- startup and refresh ----

async function start() {
  const { data } = await api("GET", "/api/v1/migrations");
  const sel = clear($("migration"));
  for (const m of data) sel.appendChild(el("option", m.id)).value = m.id;
  const active = data.find((m) => m.status !== "completed" && m.step > 0) || data[0];
  state.mig = active ? active.id : "";
  sel.value = state.mig;
  sel.onchange = () => { state.mig = sel.value; state.lag = []; loadAudit(); refresh(); };
  await loadAudit();
  follow();
  refresh();
}

async function loadAudit() {
  if (!state.mig) return;
  const { data } = await api("GET", "/api/v1/audit?migration=" + encodeURIComponent(state.mig));
  state.audit = data.slice(-AUDIT_TAIL);
  for (const e of data) state.lastSeq = Math.max(state.lastSeq, e.seq);
  renderAudit();
}

// refresh reads every view now and then every POLL_MS; a call while one
// runs (an event arrived) makes that one read again when it is done, so
// there is one poll at a time.
async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  clearTimeout(state.timer);
  try {
    do {
      state.again = false;
      await Promise.all([refreshMigration(), refreshNodes(), refreshEnsembles(), refreshProxies(), refreshTasks()]);
    } while (state.again);
  } finally {
    state.refreshing = false;
    state.timer = setTimeout(refresh, POLL_MS);
  }
}

async function guarded(source, f) {
  try {
    await f();
    problem(source, "");
    connected(true);
  } catch (e) {
    if (e.status === 401) { logout(); return; }
    if (e.status === 0) { problem(source, ""); connected(false, e.message); return; }
    problem(source, source + ": " + e.message + (e.hint ? " (" + e.hint + ")" : ""));
  }
}

// connected records whether this control node answers; while it does
// not, one banner says so (with the other nodes to try) and the buttons
// are disabled: what the page shows is the last state it read.
function connected(ok, why) {
  const main = $("dash");
  if (ok) {
    if (!state.lost) return;
    state.lost = false;
    main.classList.remove("lost");
    problem("connection", "");
    for (const b of document.querySelectorAll("#actions button")) b.disabled = false;
    return;
  }
  const first = !state.lost;
  state.lost = true;
  main.classList.add("lost");
  for (const b of document.querySelectorAll("#actions button")) b.disabled = true;
  if (first) state.lostSince = new Date();
  const others = (state.nodes || []).filter((n) => n.api && !n.api.endsWith("//" + location.host)).map((n) => n.id + " " + n.api);
  problem("connection", "Control node " + location.host + " unreachable since " + state.lostSince.toLocaleTimeString() +
    " (" + why + "): retrying; the data below is the last read." + (others.length ? " Other control nodes: " + others.join(", ") + "." : ""));
}

function refreshMigration() {
  return guarded("control plane", async () => {
    if (!state.mig) {
      const { data } = await api("GET", "/api/v1/migrations");
      if (data.length) { await start(); }
      return;
    }
    const { data: all } = await api("GET", "/api/v1/migrations");
    renderApprovals(all);
    const { data: h, stale } = await api("GET", "/api/v1/migrations/" + encodeURIComponent(state.mig) + "/health");
    problem("leader", stale ? "No control-plane leader reachable: " + stale : "");
    state.m = h.migration;
    renderPhases(h.migration, h.sync_problem);
    renderSync(h);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  });
}

function refreshNodes() {
  return guarded("nodes", async () => {
    const { data } = await api("GET", "/api/v1/cluster/nodes");
    state.nodes = data;
    const parts = data.map((n) => n.id + (n.leader ? " (leader)" : ""));
    const leader = data.find((n) => n.leader);
    $("node").textContent = "control plane: " + parts.join(", ");
    $("node").dataset.leader = leader ? leader.id : "";
  });
}

function refreshEnsembles() {
  if (!state.mig) return Promise.resolve();
  return guarded("ensembles", async () => {
    const { data } = await api("GET", "/api/v1/migrations/" + encodeURIComponent(state.mig) + "/ensembles");
    renderEnsembles(data);
  });
}

function refreshProxies() {
  return guarded("proxies", async () => {
    const { data } = await api("GET", "/api/v1/proxies");
    renderProxies(data);
  });
}

function refreshTasks() {
  if (!state.mig) return Promise.resolve();
  return guarded("tasks", async () => {
    let data;
    try {
      ({ data } = await api("GET", "/api/v1/migrations/" + encodeURIComponent(state.mig) + "/tasks"));
    } catch (e) {
      if (e.status === 502) { renderTasks(null, e.message); return; }
      throw e;
    }
    renderTasks(data, "");
  });
}

// ---- the event stream ----

// follow reads GET /api/v1/events with fetch (the token in a header),
// resuming after the last seq seen, and reconnects after a break.
async function follow() {
  if (state.stream) state.stream.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  let backoff = 500;
  while (!ctrl.signal.aborted) {
    try {
      const resp = await fetch("/api/v1/events?after=" + state.lastSeq, {
        headers: { "Authorization": "Bearer " + state.token, "Accept": "text/event-stream" },
        signal: ctrl.signal, cache: "no-store",
      });
      if (resp.status === 401) { logout(); return; }
      if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
      problem("event stream", "");
      connected(true);
      backoff = 500;
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the control node closed the stream");
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          onEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
      if (e instanceof TypeError) connected(false, e.message); // the network: the node is gone
      else problem("event stream", "event stream lost: " + e.message + "; reconnecting");
    }
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 5000);
  }
}

function onEvent(block) {
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data) return;
  const e = JSON.parse(data);
  if (e.seq <= state.lastSeq) return;
  state.lastSeq = e.seq;
  if (e.migration === state.mig) {
    state.audit.push(e);
    state.audit = state.audit.slice(-AUDIT_TAIL);
    renderAudit();
  } else if (!state.mig && e.action === "create") {
    start();
    return;
  }
  refresh(); // the state changed: read it now, not at the next poll
}

// ---- rendering ----

// renderApprovals lists every migration waiting for an operator's
// approval (the selected one or not) and keeps the selector's list current.
function renderApprovals(all) {
  const sel = $("migration");
  const ids = all.map((m) => m.id);
  if (ids.join(",") !== [...sel.options].map((o) => o.value).join(",")) {
    clear(sel);
    for (const id of ids) sel.appendChild(el("option", id)).value = id;
    sel.value = state.mig;
  }
  const waiting = all.filter((m) => m.status === "awaiting-approval");
  const p = $("approvals");
  p.className = waiting.length ? "bad" : "";
  p.textContent = waiting.length ? "Approvals waiting: " + waiting.map((m) => m.id + " (" + m.step_name + ")").join(", ") : "No approval waiting.";
}

function waitsFor(m, syncProblem) {
  if (syncProblem && m.sync && m.sync.node) return "SYNC NOT HEALTHY: " + syncProblem;
  if (m.paused) return "paused: waiting for an operator to resume";
  switch (m.status) {
    case "awaiting-approval": return "waiting for an operator's approval of " + m.step_name;
    case "running": return m.step_name + " is running" + (m.flip && !m.flip.done ? ": flip barrier open, epoch " + m.flip.epoch + ", acked " + (m.flip.acked || []).length + " of " + (m.flip.expected || []).length + " proxies" : "");
    case "succeeded": return m.step < 7 ? "ready: waiting for an operator to advance to " + nextStepName(m.step) : "ready";
    case "failed": return "failed: " + m.last_error + " (retry, or roll back)";
    case "rolling-back": return "rolling back to step " + m.rollback_to;
    case "completed": return "complete";
    case "pending": return "created: waiting for start";
  }
  return m.status;
}

function nextStepName(step) { const s = STEPS.find((x) => x[0] === step + 1); return s ? s[1] : ""; }
function phaseArg(step) { return step === 2 ? "flip" : step <= 1 ? String(step) : String(step - 1); }

function renderPhases(m, syncProblem) {
  const ol = clear($("timeline"));
  for (const [step, name] of STEPS) {
    const li = el("li", name);
    li.dataset.step = step;
    if (step < m.step || m.status === "completed") li.className = "done";
    if (step === m.step && m.status !== "completed") {
      li.className = "current " + m.status + (m.paused ? " paused" : "");
      li.appendChild(el("small", m.status + (m.paused ? ", paused" : "")));
    }
    ol.appendChild(li);
  }
  const w = $("waiting");
  w.textContent = "Step " + m.step_name + ", " + m.status + ". Waiting for: " + waitsFor(m, syncProblem) +
    ". Primary " + (m.primary || "A") + ", epoch " + m.epoch + ".";
  renderActions(m);
}

// renderActions shows the buttons an operator may press now; a viewer gets
// none (the API would refuse them: 403).
// The buttons are rebuilt only when the set changes: a button replaced
// under the pointer by a poll would swallow the click.
function renderActions(m) {
  const want = [];
  const add = (label, verb, body, confirmText) => want.push([label, verb, body, confirmText]);
  if (state.role === "operator") actionsFor(m, add);
  const key = m.id + JSON.stringify(want);
  if (key === state.actionsKey) return;
  state.actionsKey = key;
  const box = clear($("actions"));
  $("confirm").hidden = true;
  for (const [label, verb, body, confirmText] of want) {
    const b = el("button", label);
    b.id = "btn-" + verb;
    b.disabled = !!state.lost;
    b.onclick = () => confirmText ? ask(confirmText, () => act(verb, body)) : act(verb, body);
    box.appendChild(b);
  }
}

function actionsFor(m, add) {
  if (m.status === "awaiting-approval") add("Approve " + m.step_name, "approve");
  if (m.status === "succeeded" && m.step < 7) {
    const arg = phaseArg(m.step + 1);
    add("Advance to " + nextStepName(m.step), "advance", { phase: arg, confirm: true },
      "Advance " + m.id + " to " + nextStepName(m.step) + "? This changes production.");
  }
  if (m.step > 0 && m.status !== "completed") {
    if (m.paused) add("Resume", "resume"); else add("Pause", "pause");
  }
  if (m.status === "failed") add("Retry " + m.step_name, "retry");
  if (m.step > 0 && m.status !== "completed" && m.status !== "rolling-back") {
    const to = m.step - 1;
    add("Roll back to " + (to === 0 ? "before phase 1" : STEPS[to - 1][1]), "rollback", { to_phase: phaseArg(to), confirm: true },
      "Roll " + m.id + " back to " + (to === 0 ? "before phase 1" : STEPS[to - 1][1]) + "?" + (m.step >= 2 && to < 2 ? " This crosses the flip: the primary ensemble changes back to A." : ""));
  }
}

function ask(text, then) {
  $("confirm-text").textContent = text + " ";
  $("confirm").hidden = false;
  $("confirm-yes").onclick = () => { $("confirm").hidden = true; then(); };
  $("confirm-no").onclick = () => { $("confirm").hidden = true; };
}

async function act(verb, body) {
  const out = $("action-result");
  try {
    await api("POST", "/api/v1/migrations/" + encodeURIComponent(state.mig) + "/" + verb, body);
    out.className = "ok";
    out.textContent = verb + ": accepted";
  } catch (e) {
    out.className = "bad";
    out.textContent = verb + " refused: " + e.message + (e.hint ? " (" + e.hint + ")" : "");
  }
  refresh();
}

function table(headers, rows) {
  const t = el("table");
  const hr = t.createTHead().insertRow();
  for (const h of headers) hr.appendChild(el("th", h));
  const tb = t.createTBody();
  for (const r of rows) {
    const tr = tb.insertRow();
    for (const c of r) {
      if (c instanceof Node) tr.insertCell().appendChild(c); else tr.insertCell().textContent = c === undefined || c === null ? "" : String(c);
    }
  }
  return t;
}

function renderEnsembles(sides) {
  const box = clear($("ensembles"));
  for (const s of sides) {
    const d = el("div", null, "ens");
    d.id = "ensemble-" + s.side;
    const h = el("h3", "Ensemble " + s.side + " ");
    if (s.primary) h.appendChild(el("span", "primary", "badge"));
    d.appendChild(h);
    const q = el("p");
    q.appendChild(el("span", s.quorum ? "quorum" : "NO QUORUM", s.quorum ? "ok" : "bad"));
    q.appendChild(document.createTextNode(" " + s.serving + " of " + s.total + " serving, leader " + (s.leader || "none")));
    d.appendChild(q);
    d.appendChild(table(["server", "mode", "zxid", "version", "problem"],
      s.servers.map((v) => [v.addr, v.mode || "down", v.zxid, v.version, v.error])));
    box.appendChild(d);
  }
}

function renderProxies(p) {
  const box = clear($("proxies"));
  if (!p.gossip) { box.appendChild(el("p", "This control node is not in a gossip pool (--gossip-addr): it sees no proxies.")); return; }
  if (!p.proxies.length) { box.appendChild(el("p", "No proxy in the gossip pool.")); return; }
  const epoch = state.m ? state.m.epoch : 0;
  box.appendChild(table(["proxy", "address", "primary", "epoch", "sessions", "lag", "last heartbeat"],
    p.proxies.map((x) => {
      const ep = el("span", x.epoch, x.epoch < epoch ? "bad" : "");
      if (x.epoch < epoch) ep.textContent += " (stale)";
      return [x.name, x.addr, x.primary || "A", ep, x.sessions, x.lag_ms + " ms", (x.heartbeat_age_ms / 1000).toFixed(1) + " s ago"];
    })));
}

function renderSync(h) {
  const s = h.detail && (h.detail.sync || h.detail)[h.migration.id];
  const dl = clear($("sync"));
  const row = (k, v, cls) => { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v, cls)); };
  row("healthy", h.healthy ? "yes" : "no", h.healthy ? "ok" : "bad");
  if (h.sync_problem) row("problem", h.sync_problem, "bad");
  if (s) {
    row("running on", s.node);
    row("lag A→B", s.lag_a_to_b_ms + " ms");
    row("lag B→A", s.lag_b_to_a_ms + " ms");
    row("digests equal", s.digests_equal ? "yes" : "not yet", s.digests_equal ? "ok" : "bad");
    const now = Date.now();
    state.lag.push([now, s.lag_a_to_b_ms, s.lag_b_to_a_ms]);
    state.lag = state.lag.filter((x) => x[0] > now - LAG_WINDOW_MS);
  } else {
    row("running", "no (the leader runs no sync for this migration)");
  }
  drawLag();
  renderConflicts(s ? s.open_conflicts || [] : null);
}

function drawLag() {
  const c = $("lagchart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const now = Date.now();
  const max = Math.max(10, ...state.lag.map((x) => Math.max(x[1], x[2])));
  g.fillStyle = "#555"; g.font = "11px sans-serif";
  g.fillText(max + " ms", 4, 12); g.fillText("0", 4, c.height - 4);
  // The window grows with the samples up to five minutes.
  const span = Math.min(LAG_WINDOW_MS, Math.max(30000, state.lag.length ? now - state.lag[0][0] : 0));
  g.fillText("-" + Math.round(span / 1000) + " s", 30, c.height - 4);
  const x = (t) => 30 + (c.width - 34) * (1 - (now - t) / span);
  const y = (v) => c.height - 6 - (c.height - 20) * v / max;
  for (const [i, color] of [[1, "#1565c0"], [2, "#e65100"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    state.lag.forEach((p, k) => { if (k === 0) g.moveTo(x(p[0]), y(p[i])); else g.lineTo(x(p[0]), y(p[i])); });
    g.stroke();
  }
}

function renderConflicts(list) {
  const box = clear($("conflicts"));
  if (list === null) { box.appendChild(el("p", "Unknown: the sync is not running.")); return; }
  if (!list.length) { box.appendChild(el("p", "None.", "ok")); return; }
  box.appendChild(table(["path", "since", "strategy", "winner"],
    list.map((k) => [k.path, new Date(k.time).toLocaleTimeString(), k.strategy, k.winner || "unresolved (manual)"])));
}

function renderTasks(t, err) {
  const box = clear($("tasks"));
  if (err) { box.appendChild(el("p", err, "bad")); return; }
  if (!t.mesos) { box.appendChild(el("p", "migration.yaml has no mesos section: no task counts.")); return; }
  box.appendChild(el("p", "leading master " + t.leader));
  const sides = Object.keys(t.active).sort();
  box.appendChild(table(["side", "agents", "active tasks"], sides.map((s) => [s, t.agents[s] || 0, t.active[s]])));
}

function renderAudit() {
  const tb = clear($("audit").tBodies[0]);
  for (const e of state.audit.slice().reverse()) {
    const tr = tb.insertRow();
    for (const v of [e.seq, new Date(e.time).toLocaleTimeString(), e.by, e.action, e.detail, e.result]) tr.insertCell().textContent = v === undefined ? "" : String(v);
    tr.cells[4].className = "detail";
    if (e.result && e.result !== "ok") tr.cells[5].className = "bad";
  }
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("logout").onclick = logout;
  $("login").onsubmit = async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    try {
      await login($("token").value.trim());
    } catch (e) {
      state.token = "";
      $("login-error").textContent = e.message + (e.hint ? " (" + e.hint + ")" : "");
    }
  };
  if (state.token) {
    login(state.token).catch(() => { sessionStorage.removeItem("zkm-token"); $("login").hidden = false; });
  } else {
    $("login").hidden = false;
  }
});
