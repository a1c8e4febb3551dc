// The raftflow console: a page per hash route, each drawn from the node's own HTTP API.
// No framework and no build step: DOM nodes are made with h(), never from HTML strings, so
// ids, contexts and payloads are always text.

const main = document.getElementById("main");
const errorBox = document.getElementById("error");
let refreshTimer = null;

// ---- small helpers ----

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A cluster started with --token-file needs a token on every /v1 call: asked for at the first
// 401 and kept for this tab only.
const TOKEN_KEY = "raftflow-token";

async function api(method, path, body) {
  const init = { method, headers: {} };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) init.headers["authorization"] = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", `the node did not answer: ${e.message}`);
  }
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (resp.status === 401) {
    // Nothing was done: send the same call again with a token, the one another call was just
    // given if any, else one asked for.
    const now = sessionStorage.getItem(TOKEN_KEY);
    if (now && now !== token) return api(method, path, body);
    const given = window.prompt("This cluster needs an API token (kept for this tab only):");
    if (given && given.trim()) {
      sessionStorage.setItem(TOKEN_KEY, given.trim());
      return api(method, path, body);
    }
  }
  if (!resp.ok) {
    const err = (json && json.error) || {};
    throw new ApiError(resp.status, err.code || "error", err.message || `HTTP ${resp.status}`);
  }
  return json;
}

const get = (path) => api("GET", path);
const enc = encodeURIComponent;

function showError(e) {
  if (!e) { errorBox.hidden = true; errorBox.textContent = ""; return; }
  errorBox.hidden = false;
  errorBox.textContent = e instanceof ApiError ? `${e.message} (${e.code}${e.status ? `, HTTP ${e.status}` : ""})` : String(e);
}

function badge(status) {
  return h("span", { class: `badge s-${status}` }, status);
}

function ago(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso || "";
  const s = Math.round((Date.now() - t) / 1000);
  const n = Math.abs(s);
  const amount = n < 60 ? `${n}s` : n < 3600 ? `${Math.floor(n / 60)}m` : n < 86400 ? `${Math.floor(n / 3600)}h` : `${Math.floor(n / 86400)}d`;
  if (n === 0) return "just now";
  return s < 0 ? `in ${amount}` : `${amount} ago`;
}

function time(iso) {
  return h("time", { datetime: iso, title: iso }, ago(iso));
}

function json(v) {
  return h("pre", {}, JSON.stringify(v, null, 2));
}

function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))
      : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "nothing here"))));
}

function render(...children) {
  main.replaceChildren(...children.flat().filter(Boolean));
}

// ---- routing ----

function route() {
  const hash = location.hash.slice(1) || "/workflows";
  const [path, qs] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(qs || "");
  return { parts, params };
}

async function show() {
  clearInterval(refreshTimer);
  refreshTimer = null;
  showError(null);
  const { parts, params } = route();
  document.querySelectorAll("header nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (parts[0] === "workflow" ? "workflows" : parts[0] === "definition" ? "definitions" : parts[0]));
  });
  try {
    switch (parts[0]) {
      case "workflow": return await workflowPage(parts[1]);
      case "definitions": return await definitionsPage();
      case "definition": return await definitionPage(parts[1], params.get("version"));
      case "cluster": return await clusterPage();
      default: return await workflowsPage(params);
    }
  } catch (e) {
    showError(e);
    render(h("p", { class: "muted" }, "This page could not be loaded."));
  }
}

window.addEventListener("hashchange", show);

// ---- workflows ----

async function workflowsPage(params) {
  const filters = {
    definition: params.get("definition") || "",
    status: params.get("status") || "",
    state: params.get("state") || "",
    limit: params.get("limit") || "50",
  };
  const token = params.get("page_token") || "";
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  if (token) q.set("page_token", token);
  const defs = await get("/v1/definitions");

  const body = h("div", { id: "wf-list" });
  const load = async () => {
    const page = await get(`/v1/workflows?${q}`);
    const rows = page.workflows.map((w) => [
      h("a", { href: `#/workflow/${enc(w.id)}` }, w.id),
      h("a", { href: `#/definition/${enc(w.definition)}?version=${w.version}` }, `${w.definition} v${w.version}`),
      w.state, badge(w.status), h("span", {}, String(w.revision)), time(w.updated_at), String(w.group),
    ]);
    const pager = h("div", { class: "row pager" });
    if (token) pager.append(h("button", { onclick: () => history.back() }, "← Previous"));
    if (page.next_page_token) {
      const next = new URLSearchParams(q);
      next.set("page_token", page.next_page_token);
      pager.append(h("a", { href: `#/workflows?${next}` }, h("button", { type: "button" }, "Next page →")));
    }
    body.replaceChildren(
      table(["Id", "Definition", "State", "Status", "Revision", "Updated", "Group"], rows, { id: "workflows" }),
      pager);
  };

  const input = (name, attrs = {}) => h("input", { name, value: filters[name], ...attrs });
  const statusSelect = h("select", { name: "status" },
    ["", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === filters.status }, s || "any")));
  const defSelect = h("select", { name: "definition" },
    h("option", { value: "" }, "any"),
    defs.definitions.map((d) => h("option", { value: d.name, selected: d.name === filters.definition }, d.name)));
  const live = h("input", { type: "checkbox", id: "live", checked: true });
  const form = h("form", {
    class: "filters",
    onsubmit: (ev) => {
      ev.preventDefault();
      const f = new URLSearchParams();
      for (const [k, v] of new FormData(ev.target).entries()) if (v) f.set(k, v);
      location.hash = `#/workflows?${f}`;
    },
  },
  h("label", {}, "Definition", defSelect),
  h("label", {}, "Status", statusSelect),
  h("label", {}, "State", input("state", { placeholder: "any", size: 12 })),
  h("label", {}, "Per page", input("limit", { type: "number", min: 1, max: 1000, class: "narrow" })),
  h("button", { class: "primary", type: "submit" }, "Filter"),
  h("label", { class: "inline" }, live, "live refresh"));

  render(h("h1", {}, "Workflows"), form, body);
  await load();
  refreshTimer = setInterval(() => {
    if (live.checked && document.visibilityState === "visible") load().then(() => showError(null), showError);
  }, 2000);
}

// ---- one workflow ----

async function workflowPage(id) {
  const w = await get(`/v1/workflows/${enc(id)}`);
  const [hist, def] = await Promise.all([
    get(`/v1/workflows/${enc(id)}/history`),
    get(`/v1/definitions/${enc(w.definition)}/versions/${w.version}`),
  ]);
  const state = def.states[w.state] || {};

  // The open task or timer of the current state.
  let step = null;
  if (w.status === "running" && state.task) {
    try {
      const t = await get(`/v1/tasks/${enc(`${w.id}:${w.revision}`)}`);
      step = h("div", { class: "panel", id: "open-step" },
        h("h2", { class: "first" }, `Task: ${t.type}`),
        h("dl", { class: "kv" },
          h("dt", {}, "id"), h("dd", {}, h("code", {}, t.id)),
          h("dt", {}, "status"), h("dd", {}, badge(t.status)),
          h("dt", {}, "attempt"), h("dd", {}, `${t.attempt} of ${t.max_attempts}`),
          h("dt", {}, "lease token"), h("dd", {}, String(t.lease_token)),
          t.worker ? [h("dt", {}, "worker"), h("dd", {}, t.worker)] : null,
          t.lease_expires_at ? [h("dt", {}, "lease ends"), h("dd", {}, time(t.lease_expires_at))] : null,
          t.retry_at ? [h("dt", {}, "retry"), h("dd", {}, time(t.retry_at))] : null,
          t.last_error ? [h("dt", {}, "last error"), h("dd", {}, t.last_error)] : null));
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
    }
  } else if (w.status === "running" && state.timer_ms !== undefined) {
    const fires = new Date(Date.parse(w.updated_at) + state.timer_ms).toISOString();
    step = h("div", { class: "panel", id: "open-step" },
      h("h2", { class: "first" }, "Timer"),
      h("p", {}, `timer.fired after ${state.timer_ms} ms: `, time(fires), h("span", { class: "muted" }, ` (${fires})`)));
  }

  // Buttons for the events a client may send now.
  const events = Object.keys(state.on || {}).filter((e) => !e.startsWith("task.") && !e.startsWith("timer."));
  const payload = h("textarea", { id: "payload", rows: 3, cols: 40, placeholder: '{"key": "value"} (optional)' });
  const act = async (fn) => {
    try {
      await fn();
      await show();
    } catch (e) {
      showError(e);
    }
  };
  const send = (event) => act(async () => {
    const body = { event, expected_revision: w.revision };
    if (payload.value.trim()) {
      try { body.payload = JSON.parse(payload.value); } catch (_) { throw new Error("the payload is not valid JSON"); }
    }
    await api("POST", `/v1/workflows/${enc(w.id)}/events`, body);
  });
  const actions = w.status === "running"
    ? h("div", { class: "panel", id: "actions" },
      h("h2", { class: "first" }, "Send an event"),
      events.length ? h("div", { class: "row" }, events.map((e) => h("button", { class: "primary", "data-event": e, onclick: () => send(e) }, `${e} → ${state.on[e]}`)))
        : h("p", { class: "muted" }, "No event a client may send in this state: the engine moves it on."),
      h("p", {}, payload),
      h("button", { class: "danger", id: "cancel", onclick: () => act(() => api("POST", `/v1/workflows/${enc(w.id)}/cancel`, { reason: "cancelled from the console" })) }, "Cancel workflow"))
    : null;

  const timeline = h("ol", { class: "timeline", id: "history" },
    hist.events.map((e) => h("li", {},
      h("div", {}, h("strong", {}, e.event), " ", e.from ? `${e.from} → ${e.to}` : `→ ${e.to}`, h("span", { class: "muted" }, ` · revision ${e.revision}`)),
      h("div", { class: "when" }, time(e.at), ` · ${e.at}`, e.by ? ` · by ${e.by}` : ""),
      e.payload ? h("code", {}, JSON.stringify(e.payload)) : null)));

  render(
    h("h1", {}, "Workflow ", h("code", {}, w.id)),
    h("div", { class: "grid" },
      h("div", {},
        h("dl", { class: "kv", id: "summary" },
          h("dt", {}, "state"), h("dd", { id: "wf-state" }, w.state),
          h("dt", {}, "status"), h("dd", { id: "wf-status" }, badge(w.status)),
          h("dt", {}, "revision"), h("dd", { id: "wf-revision" }, String(w.revision)),
          h("dt", {}, "definition"), h("dd", {}, h("a", { href: `#/definition/${enc(w.definition)}?version=${w.version}` }, `${w.definition} v${w.version}`)),
          h("dt", {}, "group"), h("dd", {}, String(w.group)),
          h("dt", {}, "created"), h("dd", {}, time(w.created_at)),
          h("dt", {}, "updated"), h("dd", {}, time(w.updated_at))),
        h("h2", {}, "Context"), h("div", { id: "context" }, json(w.context)),
        step ? [h("h2", {}, "Open step"), step] : null,
        actions ? [h("h2", {}, "Act"), actions] : null),
      h("div", {}, h("h2", { class: "first" }, "History"), timeline)));
}

// ---- definitions ----

async function definitionsPage() {
  const defs = await get("/v1/definitions");
  render(h("h1", {}, "Definitions"),
    table(["Name", "Latest version"], defs.definitions.map((d) => [
      h("a", { href: `#/definition/${enc(d.name)}` }, d.name), String(d.latest_version)]), { id: "definitions" }));
}

async function definitionPage(name, version) {
  const latest = await get(`/v1/definitions/${enc(name)}`);
  const d = version ? await get(`/v1/definitions/${enc(name)}/versions/${enc(version)}`) : latest;
  const versions = [];
  for (let v = latest.version; v >= 1 && versions.length < 20; v--) versions.push(v);
  render(
    h("h1", {}, "Definition ", h("code", {}, d.name), ` version ${d.version}`),
    h("p", { class: "muted" }, "created ", time(d.created_at), ` · initial state ${d.initial}`),
    h("div", { class: "diagram", id: "diagram" }, diagram(d)),
    h("div", { class: "legend" }, "▶ initial · ⚙ task state · ◷ timer state · double border: terminal (green succeeded, red failed, amber cancelled)"),
    h("h2", {}, "Versions"),
    h("div", { class: "row", id: "versions" }, versions.map((v) =>
      v === d.version ? h("strong", {}, `v${v}`) : h("a", { href: `#/definition/${enc(name)}?version=${v}` }, `v${v}`))),
    h("h2", {}, "Definition"), json({ name: d.name, initial: d.initial, states: d.states }));
}

// Lays the states out in columns by their distance from the initial state and draws the
// events between them; edges that go back are drawn as arcs below.
function diagram(d) {
  const names = Object.keys(d.states);
  const depth = { [d.initial]: 0 };
  const queue = [d.initial];
  while (queue.length) {
    const s = queue.shift();
    for (const to of Object.values((d.states[s] || {}).on || {})) {
      if (depth[to] === undefined) { depth[to] = depth[s] + 1; queue.push(to); }
    }
  }
  for (const n of names) if (depth[n] === undefined) depth[n] = 0;
  const columns = [];
  for (const n of names.slice().sort((a, b) => depth[a] - depth[b])) (columns[depth[n]] ||= []).push(n);
  const W = 150, H = 46, GX = 110, GY = 40, PAD = 30;
  const pos = {};
  columns.forEach((col, ci) => col.forEach((n, ri) => { pos[n] = { x: PAD + ci * (W + GX), y: PAD + ri * (H + GY) }; }));
  const rows = Math.max(...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GX;
  const height = PAD * 2 + rows * H + (rows - 1) * GY + 80;
  const el = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `state machine of ${d.name}` },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#64748b" }))));
  const edges = svg("g", {});
  const nodes = svg("g", {});
  let back = 0;
  for (const from of names) {
    for (const [event, to] of Object.entries((d.states[from] || {}).on || {})) {
      const a = pos[from], b = pos[to];
      if (!a || !b) continue;
      let path, lx, ly;
      if (b.x > a.x) {
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
        const mx = (x1 + x2) / 2;
        path = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`;
        lx = mx; ly = (y1 + y2) / 2 - 6;
      } else {
        back += 1;
        const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2 + (from === to ? 30 : 0), y2 = b.y + H;
        const dip = Math.max(y1, y2) + 30 + back * 10;
        path = `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2}`;
        lx = (x1 + x2) / 2; ly = dip - 4;
      }
      edges.append(svg("path", { d: path, fill: "none", stroke: "#94a3b8", "stroke-width": 1.5, "marker-end": "url(#arrow)" }));
      edges.append(svg("text", { x: lx, y: ly, "text-anchor": "middle", fill: event.startsWith("task.") || event.startsWith("timer.") ? "#7c3aed" : "#334155" }, event));
    }
  }
  for (const n of names) {
    const s = d.states[n] || {};
    const p = pos[n];
    const colour = s.terminal === "succeeded" ? "#15803d" : s.terminal === "failed" ? "#b91c1c" : s.terminal === "cancelled" ? "#b45309" : "#2563eb";
    const g = svg("g", { "data-state": n });
    g.append(svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 8, fill: "#fff", stroke: colour, "stroke-width": 1.5 }));
    if (s.terminal) g.append(svg("rect", { x: p.x + 3, y: p.y + 3, width: W - 6, height: H - 6, rx: 6, fill: "none", stroke: colour }));
    const mark = n === d.initial ? "▶ " : s.task ? "⚙ " : s.timer_ms !== undefined ? "◷ " : "";
    g.append(svg("text", { x: p.x + W / 2, y: p.y + 19, "text-anchor": "middle", "font-weight": 600 }, mark + n));
    const sub = s.task ? `task ${s.task.type}` : s.timer_ms !== undefined ? `timer ${s.timer_ms} ms` : s.terminal ? s.terminal : "";
    if (sub) g.append(svg("text", { x: p.x + W / 2, y: p.y + 35, "text-anchor": "middle", fill: "#6b7280" }, sub));
    nodes.append(g);
  }
  el.append(edges, nodes);
  return el;
}

// ---- cluster ----

async function clusterPage() {
  const c = await get("/v1/cluster");
  const data = c.groups.filter((g) => g.kind === "data");
  const led = {};
  for (const g of data) if (g.leader) led[g.leader] = (led[g.leader] || 0) + 1;
  const reachable = (yes) => h("span", { class: `badge ${yes ? "s-succeeded" : "s-failed"}` }, yes ? "yes" : "no");
  const nodes = table(["Node", "Client", "Peer", "State", "Reachable", "Data groups led"], c.nodes.map((n) => [
    String(n.id), n.client_addr, n.peer_addr, n.state || "active", reachable(n.reachable), String(led[n.id] || 0)]), { id: "nodes" });
  const slots = c.placement.slots_per_group || {};
  const groups = table(["Group", "Kind", "Leader", "Term", "Voters", "Learners", "Last applied", "Committed", "Slots"], c.groups.map((g) => [
    String(g.id), g.kind, g.leader ? String(g.leader) : h("span", { class: "badge s-failed" }, "none"), String(g.term),
    g.voters.join(", "), (g.learners || []).join(", ") || "-", g.last_applied ?? "-", g.committed ?? "-", slots[g.id] !== undefined ? String(slots[g.id]) : "-"]), { id: "groups" });
  const matrix = h("table", { class: "matrix", id: "placement" },
    h("thead", {}, h("tr", {}, h("th", {}, "Group"), c.nodes.map((n) => h("th", {}, `node ${n.id}`)))),
    h("tbody", {}, c.groups.map((g) => h("tr", {}, h("td", {}, `${g.id} (${g.kind})`),
      c.nodes.map((n) => h("td", {}, g.leader === n.id ? h("strong", {}, "leader") : g.voters.includes(n.id) ? "voter"
        : (g.learners || []).includes(n.id) ? "learner" : h("span", { class: "muted" }, "–")))))));
  render(
    h("h1", {}, "Cluster"),
    h("p", { class: "muted" }, `as seen by node ${c.node_id} · replication factor ${c.replication_factor} · ${c.placement.slots} slots, ${c.placement.hash}`),
    (c.placement.moves || []).length ? h("p", { id: "moves" }, `slot moves in progress: ${c.placement.moves.length}`) : null,
    h("h2", {}, "Nodes"), nodes,
    h("h2", {}, "Groups"), groups,
    h("h2", {}, "Replica placement"), matrix);
  // Redraw every few seconds: leaders and indexes move.
  refreshTimer = setInterval(() => {
    if (document.visibilityState === "visible") show();
  }, 5000);
}

// ---- start ----

get("/v1/cluster").then((c) => {
  document.getElementById("node").textContent = `node ${c.node_id}`;
}, () => {});
show();
