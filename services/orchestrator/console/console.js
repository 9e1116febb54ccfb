// agentstream live console: sign in with an API key, run an execution or chat in a session, and
// watch its events stream over the /v1/stream WebSocket. Every event carries its cursor (its offset
// in the log); after a disconnect the console subscribes again with the last cursor it processed,
// so nothing is lost and nothing repeats.
"use strict";

const TERMINAL = new Set(["execution.completed", "execution.failed", "execution.cancelled"]);
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

// What survives a reload of the tab (sessionStorage: the key never outlives the tab): the open
// turns (replayed from their first event), the session, the agent and the mode.
const saved = JSON.parse(sessionStorage.getItem("agentstream.view") || "{}");
const state = {
  key: sessionStorage.getItem("agentstream.key") || "",
  agents: [],
  tenant: null,
  socket: null,
  reconnects: 0,
  wantOpen: false,
  sessionId: saved.sessionId || null,
  turns: new Map(), // execution_id -> turn
  log: [], // every event applied, for the event list (and the end-to-end test)
};
window.agentstreamConsole = state;

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + state.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data && data.error) || r.status + " " + r.statusText);
  return data;
}

// -- sign in -------------------------------------------------------------------------------------
async function signIn(key) {
  state.key = key;
  const usage = await api("GET", "/v1/usage?group_by=tenant");
  sessionStorage.setItem("agentstream.key", key);
  state.tenant = (usage.rows[0] && usage.rows[0].tenant) || "signed in";
  $("tenant").textContent = state.tenant;
  $("signin").hidden = true;
  $("app").hidden = false;
  showUsage(usage);
  await loadAgents();
  restoreView();
  connect();
  loadHistory();
}

function saveView() {
  const turns = [...state.turns.values()].map((t) => ({ id: t.id, prompt: t.prompt }));
  const mode = document.querySelector("input[name=mode]:checked").value;
  sessionStorage.setItem("agentstream.view", JSON.stringify({ turns: turns.slice(-20), sessionId: state.sessionId, agent: $("agent").value, mode }));
}

function restoreView() {
  if (saved.mode) document.querySelector("input[name=mode][value=" + saved.mode + "]").checked = true;
  if (saved.agent && state.agents.some((a) => a.name === saved.agent)) $("agent").value = saved.agent;
  showVariables();
  if (state.sessionId) $("session-info").textContent = "session " + state.sessionId;
  for (const t of saved.turns || []) if (!state.turns.has(t.id)) addTurn(t.id, t.prompt);
}

// -- agents and their variables ------------------------------------------------------------------
async function loadAgents() {
  state.agents = (await api("GET", "/v1/agents")).agents;
  const select = $("agent");
  select.replaceChildren(...state.agents.map((a) => { const o = el("option", "", a.name); o.value = a.name; o.title = a.provider + "/" + a.model; return o; }));
  showVariables();
}

function showVariables() {
  const agent = state.agents.find((a) => a.name === $("agent").value);
  const box = $("variables");
  box.replaceChildren();
  for (const name of (agent && agent.variables) || []) {
    const label = el("label", "", name + " ");
    const input = el("input");
    input.dataset.var = name;
    input.required = true;
    label.append(input);
    box.append(label);
  }
}

function variables() {
  const out = {};
  for (const input of document.querySelectorAll("#variables input")) {
    try { out[input.dataset.var] = JSON.parse(input.value); } catch { out[input.dataset.var] = input.value; }
  }
  return out;
}

// -- history: the list API -----------------------------------------------------------------------
async function loadHistory() {
  const status = $("history-status").value;
  const page = await api("GET", "/v1/executions?limit=20" + (status ? "&status=" + status : ""));
  const list = $("history");
  list.replaceChildren();
  for (const row of page.executions) {
    const li = el("li");
    li.dataset.executionId = row.execution_id;
    li.append(el("span", "status " + row.status, row.status), " ", el("span", "", row.input_preview || row.execution_id));
    li.title = row.agent + " · " + row.created_at;
    li.addEventListener("click", () => { if (!state.turns.has(row.execution_id)) addTurn(row.execution_id, row.input_preview || ""); });
    list.append(li);
  }
  if (!page.executions.length) list.append(el("li", "muted", "no executions yet"));
  await loadSessions();
}

// Sessions: pick one to go on with its conversation (the next message runs with its history).
async function loadSessions() {
  const page = await api("GET", "/v1/sessions?limit=10");
  const list = $("sessions");
  list.replaceChildren();
  for (const s of page.sessions) {
    const li = el("li", s.session_id === state.sessionId ? "current" : "");
    li.dataset.sessionId = s.session_id;
    li.append(el("span", "status " + (s.state === "running" ? "running" : "completed"), s.state), " ", el("span", "", s.agent + " · " + s.session_id.slice(0, 12)));
    li.title = s.session_id + " · " + s.created_at;
    li.addEventListener("click", () => {
      document.querySelector("input[name=mode][value=session]").checked = true;
      if (state.agents.some((a) => a.name === s.agent)) { $("agent").value = s.agent; showVariables(); }
      state.sessionId = s.session_id;
      $("session-info").textContent = "session " + s.session_id;
      saveView();
      loadSessions();
    });
    list.append(li);
  }
  if (!page.sessions.length) list.append(el("li", "muted", "no sessions yet"));
}

function signOut() {
  sessionStorage.removeItem("agentstream.key");
  sessionStorage.removeItem("agentstream.view");
  state.wantOpen = false;
  if (state.socket) state.socket.close();
  location.reload();
}

// -- the WebSocket, with resume ------------------------------------------------------------------
function connect() {
  state.wantOpen = true;
  const url = location.origin.replace(/^http/, "ws") + "/v1/stream?api_key=" + encodeURIComponent(state.key);
  const socket = new WebSocket(url);
  state.socket = socket;
  socket.onopen = () => {
    setConn(true);
    for (const turn of state.turns.values()) if (!turn.done) subscribe(turn);
  };
  socket.onmessage = (msg) => onFrame(JSON.parse(msg.data));
  socket.onclose = (ev) => {
    if (state.socket !== socket) return;
    setConn(false, ev.code);
    if (ev.code === 4401) return signOut();
    if (state.wantOpen) setTimeout(() => { state.reconnects += 1; $("reconnects").textContent = "reconnects: " + state.reconnects; connect(); }, 300);
  };
}

function setConn(on, code) {
  $("conn").textContent = on ? "live" : "reconnecting" + (code ? " (" + code + ")" : "");
  $("conn").className = "pill " + (on ? "on" : "off");
}

function subscribe(turn) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return; // onopen subscribes it
  const message = { type: "subscribe", execution_id: turn.id };
  if (turn.cursor !== null) message.cursor = turn.cursor; // resume: only what comes after
  state.socket.send(JSON.stringify(message));
}

function onFrame(frame) {
  if (frame.type === "events") {
    for (const item of frame.events) onEvent(item);
  } else if (frame.type === "error") {
    const turn = state.turns.get(frame.execution_id);
    if (turn) notice(turn, "error: " + frame.error);
    else $("prompt-error").textContent = frame.error;
  }
}

// -- rendering events ----------------------------------------------------------------------------
function onEvent(item) {
  const turn = state.turns.get(item.execution_id);
  if (!turn || (turn.cursor !== null && item.cursor <= turn.cursor)) return; // already applied
  turn.cursor = item.cursor;
  const ev = item.event;
  state.log.push({ cursor: item.cursor, type: ev.type, execution_id: item.execution_id });
  turn.log.push({ type: ev.type, step: ev.step });
  const li = el("li");
  li.append(el("span", "id", item.execution_id.slice(0, 6)), el("span", "", item.cursor), " " + ev.type); // cursors are per execution
  $("events").prepend(li);
  if (ev.attempt < turn.attempt) return; // a late event of an older attempt
  if (turn.startsOver && ev.type !== "execution.started") {
    if (ev.type !== "execution.resumed") {
      turn.text = "";
      turn.stepStart = {};
      turn.output.replaceChildren();
      turn.segment = null;
      notice(turn, "attempt " + turn.startsOver + " started again: earlier output discarded");
    }
    turn.startsOver = 0;
  }
  switch (ev.type) {
    case "execution.started":
      // A later attempt starts over, unless it resumes (an execution.resumed next: issue 16, a
      // continued approval too): the output is discarded at its first other event, not here.
      if (turn.attempt && ev.attempt > turn.attempt) turn.startsOver = ev.attempt;
      turn.attempt = ev.attempt;
      setStatus(turn, "running", ev.provider ? ev.provider + (ev.model ? " · " + ev.model : "") : "");
      break;
    case "token.delta":
      // Text and tool cards in stream order: each step's text is a block of its own, after what came before it.
      if (!(ev.step in turn.stepStart)) turn.stepStart[ev.step] = turn.text.length;
      turn.text += ev.text;
      if (!turn.segment || turn.segment.dataset.step !== String(ev.step)) {
        turn.segment = el("div", "text");
        turn.segment.dataset.step = ev.step;
        turn.output.append(turn.segment);
      }
      turn.segment.textContent += ev.text;
      break;
    case "execution.restarted":
      if (ev.text_discarded && ev.step in turn.stepStart) {
        turn.text = turn.text.slice(0, turn.stepStart[ev.step]);
        delete turn.stepStart[ev.step];
        for (const seg of turn.output.querySelectorAll(".text[data-step='" + ev.step + "']")) seg.remove();
        turn.segment = null;
      }
      notice(turn, "model call restarted (" + ev.reason + ")" + (ev.fallback ? " → " + ev.provider : ""));
      break;
    case "tool.call.started": {
      const card = el("div", "tool");
      card.append(el("span", "name", ev.tool), " " + JSON.stringify(ev.arguments));
      const result = el("div", "result muted", "running…");
      card.append(result);
      turn.tools.set(ev.call_id, { card, result });
      turn.output.append(card);
      turn.segment = null;
      break;
    }
    case "tool.call.completed": {
      const tool = turn.tools.get(ev.call_id);
      if (!tool) break;
      tool.result.textContent = (ev.error ? "error: " + ev.error : "→ " + JSON.stringify(ev.result)) + "  (" + Math.round(ev.duration_ms) + " ms)";
      if (ev.error) tool.card.classList.add("error");
      break;
    }
    case "tool.call.approval_requested":
      waitCard(turn, ev, "approval");
      break;
    case "input.requested":
      waitCard(turn, ev, "question");
      break;
    case "tool.call.approval_decided":
    case "input.provided":
      decided(turn, ev);
      break;
    case "agent.handoff":
      // Issue 20: another agent answers from here on (its text follows in later steps).
      turn.segment = null;
      notice(turn, "handed off from " + ev.from_agent + " to " + ev.to_agent + (ev.reason ? ": " + ev.reason : ""));
      break;
    case "execution.resumed":
      // Steps from from_step on run again: the text the cut-off one had written is void.
      for (const seg of turn.output.querySelectorAll(".text")) if (Number(seg.dataset.step) >= ev.from_step) seg.remove();
      for (const step of Object.keys(turn.stepStart)) if (Number(step) >= ev.from_step) delete turn.stepStart[step];
      turn.segment = null;
      notice(turn, "resumed from step " + ev.from_step + " (attempt " + ev.attempt + "): the steps above stand");
      break;
    default:
      if (TERMINAL.has(ev.type)) finish(turn, ev);
  }
}

// -- waits (issue 16): an approval request gets Approve / Reject (with a reason), a question an
// answer box; both post to the decision endpoints. The decision's event (ours or anyone's, or the
// deadline's) closes the card, so a replay after a reload shows the decided card without buttons.
function waitCard(turn, ev, kind) {
  const card = el("div", "wait " + kind);
  card.dataset.callId = ev.call_id;
  const deadline = new Date(ev.deadline).toLocaleString();
  if (kind === "approval") {
    card.append(el("span", "name", ev.tool), " " + JSON.stringify(ev.arguments), el("div", "muted", "needs approval · until " + deadline + " (then " + ev.default + ")"));
  } else {
    card.append(el("div", "question-text", ev.question), el("div", "muted", "the agent asks · until " + deadline));
  }
  const form = el("form", "decide");
  const text = el("input");
  text.maxLength = kind === "approval" ? 4096 : 65536;
  text.placeholder = kind === "approval" ? "reason (for Reject)" : "your answer";
  const error = el("div", "error");
  const buttons = kind === "approval" ? [el("button", "approve", "Approve"), el("button", "reject", "Reject")] : [el("button", "answer", "Answer")];
  const post = (path, body) => {
    for (const b of buttons) b.disabled = true;
    error.textContent = "";
    api("POST", "/v1/executions/" + turn.id + path, body).catch((err) => {
      for (const b of buttons) b.disabled = false;
      error.textContent = String(err.message || err);
    });
  };
  for (const b of buttons) b.type = "button";
  if (kind === "approval") {
    buttons[0].addEventListener("click", () => post("/approvals/" + ev.call_id, { decision: "approve" }));
    buttons[1].addEventListener("click", () => post("/approvals/" + ev.call_id, { decision: "reject", reason: text.value.trim() }));
  } else {
    buttons[0].addEventListener("click", () => post("/inputs/" + ev.call_id, { text: text.value }));
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); buttons[buttons.length - 1].click(); });
  form.append(text, ...buttons);
  card.append(form, error);
  turn.waits.set(ev.call_id, { card, form });
  turn.output.append(card);
  turn.segment = null;
  setStatus(turn, "waiting", kind === "approval" ? "for your approval" : "for your answer");
}

function decided(turn, ev) {
  const wait = turn.waits.get(ev.call_id);
  if (!wait) return;
  wait.form.remove();
  let outcome;
  if (ev.type === "input.provided") outcome = ev.by === "deadline" ? "no answer before the deadline" : "answered: " + ev.text;
  else outcome = (ev.decision === "approve" ? "approved" : "rejected") + (ev.arguments ? " with " + JSON.stringify(ev.arguments) : "") + (ev.reason ? ": " + ev.reason : "");
  if (ev.by === "deadline" && ev.type !== "input.provided") outcome += " (deadline passed)";
  wait.card.append(el("div", "outcome", outcome));
  wait.card.classList.add("decided");
  setStatus(turn, "running", "");
}

async function finish(turn, ev) {
  turn.done = true;
  turn.cancel.hidden = true;
  const state_ = ev.type.split(".")[1];
  setStatus(turn, state_, ev.reason || "");
  if (ev.usage) turn.usage.textContent = "tokens: " + ev.usage.prompt_tokens + " in · " + ev.usage.completion_tokens + " out";
  try {
    const view = await api("GET", "/v1/executions/" + turn.id);
    setStatus(turn, view.status, ev.reason || "");
    if (view.usage) turn.usage.textContent = "tokens: " + view.usage.prompt_tokens + " in · " + view.usage.completion_tokens + " out · " + view.usage.total_tokens + " total";
    showUsage(await api("GET", "/v1/usage?group_by=tenant"));
    loadHistory();
    showTimeline(turn, (await api("GET", "/v1/executions/" + turn.id + "/plan")).calls);
  } catch (e) {
    notice(turn, String(e));
  }
  $("send").disabled = false;
}

// The run's timeline: the service calls of its plan (agent config, history, the execution, each
// delegated job) with their durations, then what the stream said (attempts, model calls, tools).
function showTimeline(turn, calls) {
  const box = el("details", "timeline");
  box.append(el("summary", "muted", "timeline"));
  const list = el("ol");
  for (const call of calls) {
    const took = call.duration_ms === null || call.duration_ms === undefined ? "" : " · " + Math.round(call.duration_ms) + " ms";
    list.append(el("li", "call", call.kind + " " + call.target + " · " + call.outcome + took));
  }
  const steps = new Set(turn.log.filter((e) => e.type === "token.delta" || e.type.startsWith("tool.call")).map((e) => e.step));
  list.append(el("li", "muted", "attempts " + turn.attempt + " · model steps " + steps.size + " · restarts " + turn.log.filter((e) => e.type === "execution.restarted").length + " · tool calls " + turn.tools.size));
  box.append(list);
  turn.timeline.replaceWith(box);
  turn.timeline = box;
}

function setStatus(turn, status, detail) {
  turn.status.textContent = status;
  turn.status.className = "status " + status;
  turn.detail.textContent = detail || "";
}

function notice(turn, text) {
  turn.notices.append(el("div", "notice", text));
}

function showUsage(report) {
  const row = report.rows[0];
  $("usage").textContent = row ? row.executions + " executions · " + row.total_tokens + " tokens (" + row.prompt_tokens + " in, " + row.completion_tokens + " out)" : "no usage yet";
}

function addTurn(executionId, prompt) {
  const box = el("div", "turn");
  box.dataset.executionId = executionId;
  const turn = {
    id: executionId, prompt, cursor: null, attempt: 0, text: "", stepStart: {}, done: false, tools: new Map(), waits: new Map(), segment: null, startsOver: 0,
    output: el("div", "output"), notices: el("div"), timeline: el("div"), log: [],
    status: el("span", "status queued", "queued"), detail: el("span"), usage: el("span"),
    cancel: el("button", "cancel", "Cancel"),
  };
  turn.cancel.type = "button";
  turn.cancel.addEventListener("click", () => {
    turn.cancel.disabled = true;
    api("POST", "/v1/executions/" + executionId + "/cancel").catch((err) => notice(turn, String(err.message || err)));
  });
  const meta = el("div", "meta");
  meta.append(turn.status, turn.detail, turn.usage, el("span", "muted id", executionId), turn.cancel);
  box.append(el("div", "user", prompt), turn.output, turn.notices, meta, turn.timeline);
  $("transcript").prepend(box);
  state.turns.set(executionId, turn);
  saveView();
  subscribe(turn);
  return turn;
}

// -- starting work -------------------------------------------------------------------------------
async function send(prompt) {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const agent = $("agent").value || "default";
  const priority = $("priority").value;
  if (mode === "execution") {
    const accepted = await api("POST", "/v1/executions", { input: prompt, agent, priority, variables: variables() });
    addTurn(accepted.execution_id, prompt);
    return;
  }
  if (!state.sessionId) {
    const session = await api("POST", "/v1/sessions", { agent });
    state.sessionId = session.session_id;
    $("session-info").textContent = "session " + state.sessionId;
    saveView();
    loadSessions();
  }
  const reply = await api("POST", "/v1/sessions/" + state.sessionId + "/chat", { content: prompt, priority, variables: variables() });
  if (reply.execution_id) addTurn(reply.execution_id, prompt);
  else $("prompt-error").textContent = "queued behind the running message";
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  $("signin-error").textContent = "";
  signIn($("api-key").value.trim()).catch((err) => { $("signin-error").textContent = String(err.message || err); });
});
$("prompt-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  $("prompt-error").textContent = "";
  send(prompt).then(() => { $("prompt").value = ""; }).catch((err) => { $("prompt-error").textContent = String(err.message || err); });
});
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("send").click(); } });
$("drop").addEventListener("click", () => { if (state.socket) state.socket.close(); });
$("signout").addEventListener("click", signOut);
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => { state.sessionId = null; $("session-info").textContent = ""; saveView(); }));
$("agent").addEventListener("change", () => { showVariables(); state.sessionId = null; $("session-info").textContent = ""; saveView(); });
$("history-status").addEventListener("change", () => loadHistory().catch((err) => { $("prompt-error").textContent = String(err.message || err); }));
$("clear").addEventListener("click", () => { state.turns.clear(); $("transcript").replaceChildren(); saveView(); });
if (state.key) signIn(state.key).catch(() => sessionStorage.removeItem("agentstream.key"));
