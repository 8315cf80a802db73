// The Choreo console: each page reads its data endpoint (/api/...) and renders it; the run
// and runs pages follow /api/live (server-sent events fed by the wf.> subjects). Text is
// always set as text (never parsed as HTML), so nothing an event carries can inject markup.
"use strict";

const body = document.body;
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return data;
}

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

function post(path, body, method = "POST") {
  const headers = { "x-choreo-csrf": cookie("choreo_csrf") };
  if (body !== undefined) headers["content-type"] = "application/json";
  return api(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

function fail(where, error) {
  where.replaceChildren(el("p", { class: "error", role: "alert" }, String(error.message || error)));
}

function when(value) {
  if (!value) return "";
  const date = new Date(value);
  return isNaN(date) ? String(value) : date.toISOString().replace("T", " ").slice(0, 23) + "Z";
}

function seconds(value) {
  return value === null || value === undefined ? "" : `${Number(value).toFixed(2)} s`;
}

function bytes(value) {
  if (value === null || value === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = Number(value), i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function badge(state) {
  return el("span", { class: `badge state-${state || "unknown"}` }, state || "?");
}

// A JSON value, with every s3:// URI in it a link to the lake browser.
function value(v) {
  if (typeof v === "string" && v.startsWith("s3://")) {
    return el("a", { href: `/lake?uri=${encodeURIComponent(v)}` }, v);
  }
  if (v === null || typeof v !== "object") return el("code", {}, JSON.stringify(v));
  const list = el("dl", { class: "json" });
  for (const [k, inner] of Object.entries(v)) list.append(el("dt", {}, k), el("dd", {}, value(inner)));
  return list;
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function live(query, onEvent, onOpen = null) {
  const source = new EventSource(`/api/live${query}`);
  source.addEventListener("wf", (message) => onEvent(JSON.parse(message.data)));
  if (onOpen) source.addEventListener("open", onOpen);  // also after a reconnection
  return source;
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

// ---- Runs -------------------------------------------------------------------------------

const RUN_FILTERS = ["workflow", "status", "since", "until", "runid"];
const STATUSES = ["", "requested", "running", "completed", "failed", "cancelled"];

async function runsPage() {
  const params = new URLSearchParams(location.search);
  const form = el("form", { id: "filters", class: "filters" },
    el("label", {}, "workflow ", el("input", { name: "workflow", value: params.get("workflow") || "" })),
    el("label", {}, "status ", el("select", { name: "status" },
      STATUSES.map((s) => el("option", { value: s, selected: params.get("status") === s }, s || "any")))),
    el("label", {}, "since ", el("input", { name: "since", placeholder: "1h or 2026-01-01T00:00:00Z", value: params.get("since") || "" })),
    el("label", {}, "until ", el("input", { name: "until", placeholder: "RFC 3339", value: params.get("until") || "" })),
    el("label", {}, "run id ", el("input", { name: "runid", placeholder: "prefix", value: params.get("runid") || "" })),
    el("button", {}, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const name of RUN_FILTERS) if (form.elements[name].value) next.set(name, form.elements[name].value);
    location.search = next.toString();
  });
  const list = el("div", { id: "runs" });
  main.replaceChildren(el("h1", {}, "Runs"), form, list);
  const query = new URLSearchParams();
  for (const name of [...RUN_FILTERS, "after"]) if (params.get(name)) query.set(name, params.get(name));

  async function load() {
    try {
      const page = await api(`/api/runs?${query}`);
      const rows = page.runs.map((r) => el("tr", { "data-run": r.runid },
        el("td", {}, el("a", { href: `/runs/${encodeURIComponent(r.runid)}` }, r.runid)),
        el("td", {}, r.name || ""), el("td", { class: "status" }, badge(r.status)),
        el("td", {}, String(r.generation)), el("td", {}, when(r.requested_at || r.started_at)),
        el("td", {}, when(r.ended_at)), el("td", {}, r.failed_step || "")));
      const more = page.next
        ? el("a", { id: "next-page", href: `?${withParam(params, "after", page.next)}` }, "Older runs →")
        : null;
      list.replaceChildren(
        rows.length ? table(["run", "workflow", "status", "gen", "requested", "ended", "failed step"], rows, { id: "runs-table" })
          : el("p", {}, "No runs match."), more);
    } catch (error) { fail(list, error); }
  }
  await load();
  const reload = debounce(load, 500);
  // New runs and state changes without a reload: patch the row at once, re-read shortly
  // after (the audit trail catches up within a moment). Only the first page changes.
  live("", (item) => {
    const row = list.querySelector(`tr[data-run="${CSS.escape(item.runid || "")}"]`);
    if (row && item.state) row.querySelector(".status").replaceChildren(badge(item.state));
    if (!params.get("after")) reload();
  }, reload);  // what changed before the feed was subscribed
}

function withParam(params, name, v) {
  const next = new URLSearchParams(params);
  next.set(name, v);
  return next.toString();
}

// ---- A run ------------------------------------------------------------------------------

const NODE_W = 210, NODE_H = 44, GAP_X = 60, GAP_Y = 18;

function layout(dag) {
  const byId = Object.fromEntries(dag.map((s) => [s.id, s]));
  const depth = {};
  const visit = (id, seen) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const needs = (byId[id] && byId[id].needs) || [];
    depth[id] = needs.length ? Math.max(...needs.map((n) => visit(n, seen) + 1)) : 0;
    return depth[id];
  };
  dag.forEach((s) => visit(s.id, new Set()));
  const columns = [];
  dag.forEach((s) => (columns[depth[s.id]] = columns[depth[s.id]] || []).push(s.id));
  const place = {};
  columns.forEach((ids, x) => ids.forEach((id, y) => {
    place[id] = { x: 10 + x * (NODE_W + GAP_X), y: 10 + y * (NODE_H + GAP_Y) };
  }));
  const width = 20 + columns.length * (NODE_W + GAP_X) - GAP_X;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
  return { place, width, height };
}

function drawDag(dag, states, id = "dag") {
  if (!dag.length) return el("p", {}, "The workflow's definition is not in the audit trail (yet).");
  const { place, width, height } = layout(dag);
  const graph = svg("svg", { id, class: "dag-graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "the run's steps and their dependencies" });
  for (const step of dag) {
    for (const need of step.needs || []) {
      const a = place[need], b = place[step.id];
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      graph.append(svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + GAP_X / 2},${y1} ${x2 - GAP_X / 2},${y2} ${x2},${y2}` }));
    }
  }
  for (const step of dag) {
    const p = place[step.id];
    const state = states ? states[step.id] || "waiting" : "";  // null: a definition, not a run
    const node = svg("g", { class: `node state-${state}`, "data-step": step.id, "data-state": state, transform: `translate(${p.x},${p.y})`, tabindex: 0 },
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      svg("text", { x: 8, y: 18, class: "step-id" }, step.id),
      svg("text", { x: 8, y: 35, class: "step-uses" }, state ? `${step.uses || ""} · ${state}` : step.uses || ""));
    node.addEventListener("click", () => {
      const detail = document.getElementById(`step-${step.id}`);
      if (detail) { detail.open = true; detail.scrollIntoView({ block: "nearest" }); }
    });
    graph.append(node);
  }
  return graph;
}

function setNodeState(stepid, state) {
  const node = document.querySelector(`#dag g[data-step="${CSS.escape(stepid)}"]`);
  if (!node) return;
  node.setAttribute("class", `node state-${state}`);
  node.setAttribute("data-state", state);
  const label = node.querySelector(".step-uses");
  label.textContent = label.textContent.replace(/ · .*$/, ` · ${state}`);
}

async function runPage() {
  const runid = body.dataset.arg;
  const header = el("div", { class: "run-header" });
  const graph = el("div", { class: "dag" });
  const steps = el("div", { id: "steps" });
  const timeline = el("div", { id: "timeline" });
  main.replaceChildren(header, el("h2", {}, "Steps"), graph, steps, el("h2", {}, "Timeline"), timeline);

  async function load() {
    let data;
    try { data = await api(`/api/runs/${encodeURIComponent(runid)}`); } catch (error) {
      fail(header, error);
      // A run requested a moment ago is not in the audit trail yet: look again shortly.
      if (String(error.message).startsWith("404")) setTimeout(load, 1000);
      return;
    }
    const run = data.run;
    // The audit trail trails the live events by a moment: a state seen live that is newer
    // than what the audit row says wins, and the page reads again shortly.
    let behind = false;
    const newest = (live, status, ...times) => {
      const known = Math.max(0, ...times.filter(Boolean).map((t) => Date.parse(t)));
      if (live && Date.parse(live.time) > known && live.state !== status) { behind = true; return live.state; }
      return status;
    };
    const states = Object.fromEntries(run.steps.map((s) => [s.stepid,
      newest(seen[s.stepid], s.status, s.requested_at, s.started_at, s.ended_at)]));
    for (const [step, live] of Object.entries(seen)) if (!(step in states) && step) { states[step] = live.state; behind = true; }
    run.status = newest(seen[""], run.status, run.requested_at, run.started_at, run.ended_at);
    const action = (name, label) => el("button", { id: `${name}-run`, onclick: async (e) => {
      e.target.disabled = true;
      try { await post(`/api/runs/${encodeURIComponent(runid)}/${name}`); note.textContent = `${label} requested.`; }
      catch (error) { note.textContent = String(error.message); e.target.disabled = false; }
    } }, label);
    const note = el("span", { class: "note", role: "status" });
    header.replaceChildren(
      el("h1", {}, `Run ${runid}`),
      el("p", {}, "workflow ", el("b", {}, run.name || "?"), " · status ", el("span", { id: "run-status" }, badge(run.status)),
        ` · generation ${run.generation} · requested ${when(run.requested_at)}`, run.ended_at ? ` · ended ${when(run.ended_at)}` : "",
        run.reason ? ` · ${run.reason}` : ""),
      el("p", { class: "actions" },
        ["failed", "cancelled"].includes(run.status) ? action("retry", "Retry") : null,
        ["requested", "running"].includes(run.status) ? action("cancel", "Cancel") : null, note));
    graph.replaceChildren(drawDag(data.dag, states));
    const withOf = Object.fromEntries(data.dag.map((s) => [s.id, s.with]));
    const order = data.dag.length ? data.dag.map((s) => s.id) : run.steps.map((s) => s.stepid);
    const byId = Object.fromEntries(run.steps.map((s) => [s.stepid, s]));
    // What each step logged (ctx.log, a built-in's messages): wf.step.log events' lines.
    const logs = {};
    for (const e of data.events) {
      if (e.type !== "wf.step.log" || !e.data) continue;
      const step = e.stepid || e.data.step;
      for (const line of e.data.lines || []) (logs[step] = logs[step] || []).push({ ...line, attempt: e.attempt });
    }
    steps.replaceChildren(...order.map((id) => {
      const s = byId[id] || { stepid: id, status: "waiting" };
      return el("details", { id: `step-${id}`, class: "step" },
        el("summary", {}, badge(s.status), " ", el("b", {}, id), ` ${s.uses || ""}`,
          s.attempt ? ` · attempt ${s.attempt}` : "", s.duration_s !== undefined && s.duration_s !== null ? ` · ${seconds(s.duration_s)}` : "",
          s.service ? ` · ${s.service}` : ""),
        el("div", { class: "step-body" },
          el("h4", {}, "with (rendered)"), value(s.inputs !== undefined && s.inputs !== null ? s.inputs : withOf[id] || {}),
          s.output ? [el("h4", {}, "output"), value(s.output)] : null,
          s.error ? [el("h4", {}, "error"), el("pre", { class: "error" }, s.error)] : null,
          logs[id] ? [el("h4", {}, "logs"), el("pre", { class: "logs" }, logs[id]
            .sort((a, b) => String(a.time).localeCompare(String(b.time)))
            .map((l) => `${when(l.time).slice(11)} #${l.attempt ?? ""} ${l.level || "info"} ${l.message}${l.fields ? " " + JSON.stringify(l.fields) : ""}`)
            .join("\n"))] : null,
          el("p", {}, `requested ${when(s.requested_at)} · started ${when(s.started_at)} · ended ${when(s.ended_at)}`)));
    }));
    timeline.replaceChildren(table(["time", "service", "event", "step", "attempt", "note"],
      data.events.filter((e) => e.type !== "wf.step.log").map((e) => el("tr", {},
        el("td", {}, when(e.time)), el("td", {}, e.source), el("td", {}, el("a", { href: `/events/${encodeURIComponent(e.id)}` }, e.type)),
        el("td", {}, e.stepid || ""), el("td", {}, e.attempt ?? ""),
        el("td", {}, takeover(e) || (e.data && e.data.error) || (e.data && e.data.duration_s !== undefined ? seconds(e.data.duration_s) : ""))))));
    if (behind && retries < 10) { retries += 1; reload(); } else if (!behind) retries = 0;
    // What was published before the live feed was subscribed never arrives on it (a short
    // run may end meanwhile): while the run is not over, the page reads it again now and then.
    clearTimeout(poll);
    if (!["completed", "failed", "cancelled"].includes(run.status)) poll = setTimeout(load, 2000);
  }
  const seen = {};  // the newest state seen live, by step ("" for the run itself)
  let retries = 0;
  let poll = null;
  const reload = debounce(load, 700);
  live(`?run=${encodeURIComponent(runid)}`, (item) => {
    if (item.state) {
      const key = item.stepid || "";
      if (!seen[key] || Date.parse(item.time) >= Date.parse(seen[key].time)) seen[key] = { state: item.state, time: item.time };
    }
    if (item.stepid && item.state) setNodeState(item.stepid, item.state);
    if (!item.stepid && item.state) document.getElementById("run-status")?.replaceChildren(badge(item.state));
    reload();
  }, reload);
  await load();
}

function takeover(event) {
  const from = event.data && event.data.taken_from;
  return from ? `taken over from ${from} (it stopped while running)` : "";
}

// ---- An event ---------------------------------------------------------------------------

async function eventPage() {
  const id = body.dataset.arg;
  main.replaceChildren(el("h1", {}, `Event ${id}`));
  let data;
  try { data = await api(`/api/events/${encodeURIComponent(id)}`); } catch (error) { fail(main, error); return; }
  const e = data.event;
  main.append(
    el("p", {}, `${e.type} from ${e.source} at ${when(e.time)}`, e.subject ? ` · subject ${e.subject}` : ""),
    el("h2", {}, "Audit record"), value(data.audit),
    el("h2", {}, "Lake object"), data.lake ? el("p", {}, value(data.lake.uri), ` (sequences ${data.lake.first_seq}–${data.lake.last_seq})`) : el("p", {}, "Not in the raw lake (not a data event, or not landed yet)."),
    el("h2", {}, "Fraud score"), data.fraud ? value(data.fraud) : el("p", {}, "None (not a transaction, or not scored yet)."),
    el("h2", {}, "Causation chain"),
    table(["depth", "event", "type", "source (service)", "time", "run"], data.chain.map((c) => el("tr", { class: c.id === id ? "current" : "", "data-depth": c.depth },
      el("td", {}, String(c.depth)), el("td", {}, el("a", { href: `/events/${encodeURIComponent(c.id)}` }, c.id)), el("td", {}, c.type),
      el("td", {}, c.source), el("td", {}, when(c.time)),
      el("td", {}, c.runid ? el("a", { href: `/runs/${encodeURIComponent(c.runid)}` }, c.runid) : ""))), { id: "chain" }),
    el("h2", {}, "Data"), value(e.data));
}

// ---- Lake -------------------------------------------------------------------------------

async function lakePage() {
  const uri = new URLSearchParams(location.search).get("uri") || "";
  const crumbs = el("p", { class: "crumbs" }, el("a", { href: "/lake" }, "buckets"));
  if (uri) {
    const parts = uri.slice(5).split("/");
    let path = "s3://";
    parts.forEach((part, i) => {
      if (!part) return;
      path += part + (i < parts.length - 1 ? "/" : "");
      crumbs.append(" / ", el("a", { href: `/lake?uri=${encodeURIComponent(path)}` }, part));
    });
  }
  main.replaceChildren(el("h1", {}, "Lake"), crumbs);
  const where = el("div", { id: "lake" });
  main.append(where);
  try {
    if (uri && !uri.endsWith("/")) {
      const data = await api(`/api/lake/object?uri=${encodeURIComponent(uri)}`);
      const m = data.meta;
      where.append(
        el("p", {}, `${bytes(m.bytes)} · modified ${when(m.modified)} · ${m.content_type || ""} `,
          el("a", { id: "download", href: `/api/lake/download?uri=${encodeURIComponent(uri)}` }, "Download (presigned URL)")),
        Object.keys(m.metadata || {}).length ? value(m.metadata) : "");
      const p = data.preview;
      if (p.unavailable) where.append(el("p", {}, `No preview: ${p.unavailable}`));
      else where.append(el("h2", {}, `Preview (${p.format}, first ${p.rows.length} rows${p.truncated ? ", more follow" : ""})`),
        table(p.columns, p.rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, typeof c === "object" && c !== null ? JSON.stringify(c) : String(c ?? ""))))), { id: "preview" }));
      return;
    }
    const entries = await api(`/api/lake${uri ? `?uri=${encodeURIComponent(uri)}` : ""}`);
    where.append(table(["name", "size", "modified"], entries.map((e) => {
      const name = e.uri.replace(/\/$/, "").split("/").pop() + (e.uri.endsWith("/") ? "/" : "");
      return el("tr", {}, el("td", {}, el("a", { href: `/lake?uri=${encodeURIComponent(e.uri)}` }, name)), el("td", {}, bytes(e.bytes)), el("td", {}, when(e.modified)));
    }), { id: "entries" }));
    if (!entries.length) where.append(el("p", {}, "Empty."));
  } catch (error) { fail(where, error); }
}

// ---- Fraud ------------------------------------------------------------------------------

async function fraudPage() {
  const where = el("div", { id: "fraud" });
  main.replaceChildren(el("h1", {}, "Fraud (last hour)"), where);
  async function load() {
    let data;
    try { data = await api("/api/fraud?since=1h"); } catch (error) { fail(where, error); return; }
    const s = data.summary, top = Math.max(1, ...s.scores);
    where.replaceChildren(
      el("h2", {}, "Score distribution"),
      el("div", { class: "histogram" }, s.scores.map((n, i) => el("div", { class: "bar", title: `${(i / s.scores.length).toFixed(1)}–${((i + 1) / s.scores.length).toFixed(1)}: ${n}` },
        el("span", { style: `height:${Math.round((100 * n) / top)}%` }), el("small", {}, `${(i / s.scores.length).toFixed(1)}`)))),
      el("p", {}, Object.entries(s.decisions).map(([d, n]) => `${d}: ${n}`).join(" · ") || "No scores in the last hour."),
      el("h2", {}, "Rules in alerts"),
      table(["rule", "alerts"], Object.entries(s.rules).map(([r, n]) => el("tr", {}, el("td", {}, r), el("td", {}, String(n))))),
      el("h2", {}, "Alerts"),
      table(["time", "decision", "score", "card", "amount", "reasons"], data.alerts.map((a) => el("tr", {},
        el("td", {}, el("a", { href: `/events/${encodeURIComponent(a.transaction_event_id)}` }, when(a.created_at))),
        el("td", {}, badge(a.decision)), el("td", {}, a.score.toFixed(3)), el("td", {}, a.card_id),
        el("td", {}, `${a.amount} ${a.currency}`), el("td", {}, a.reasons.join("; ")))), { id: "alerts" }));
  }
  await load();
  setInterval(load, 5000);
}

// ---- System -----------------------------------------------------------------------------

async function systemPage() {
  const where = el("div", { id: "system" });
  main.replaceChildren(el("h1", {}, "System"), where);
  async function load() {
    let data;
    try { data = await api("/api/system"); } catch (error) { fail(where, error); return; }
    where.replaceChildren(
      el("h2", {}, "Parts"),
      table(["part", "state", "checks"], data.parts.map((p) => el("tr", { "data-part": p.name }, el("td", {}, p.name), el("td", {}, badge(p.status)),
        el("td", {}, p.detail || Object.entries(p.checks || {}).map(([k, v]) => `${k}: ${v}`).join(" · "))))),
      el("p", { id: "dlq" }, `Dead letters (stream DLQ): ${data.dlq_depth}`),
      el("h2", {}, "Streams"),
      table(["stream", "messages", "size", "consumers"], data.streams.map((s) => el("tr", {}, el("td", {}, s.name), el("td", {}, String(s.messages)), el("td", {}, bytes(s.bytes)), el("td", {}, String(s.consumers))))),
      el("h2", {}, "Consumers (lag)"),
      table(["stream", "durable", "pending (lag)", "awaiting ack", "redelivered"], data.consumers.map((c) => el("tr", {}, el("td", {}, c.stream), el("td", {}, c.name), el("td", {}, String(c.pending)), el("td", {}, String(c.ack_pending)), el("td", {}, String(c.redelivered))))));
  }
  await load();
  setInterval(load, 5000);
}

// ---- Find by id -------------------------------------------------------------------------

async function goPage() {
  const id = body.dataset.arg;
  if (!id) { location.replace("/"); return; }
  for (const [probe, target] of [[`/api/runs/${encodeURIComponent(id)}`, `/runs/${encodeURIComponent(id)}`], [`/api/events/${encodeURIComponent(id)}`, `/events/${encodeURIComponent(id)}`]]) {
    const response = await fetch(probe, { credentials: "same-origin" });
    if (response.ok) { location.replace(target); return; }
  }
  main.replaceChildren(el("p", { class: "error" }, `No run and no event ${id}.`));
}

// ---- Workflows and schedules -----------------------------------------------------------

function inputField(name, spec) {
  const type = (spec && spec.type) || "string";
  const attrs = { name, "data-type": type, "aria-label": name };
  if (type === "boolean") return el("input", { ...attrs, type: "checkbox", checked: spec.default === true });
  const shown = spec && spec.default !== undefined ? (typeof spec.default === "string" ? spec.default : JSON.stringify(spec.default)) : "";
  return el("input", { ...attrs, type: type === "number" || type === "integer" ? "number" : "text", step: type === "number" ? "any" : null, value: shown, placeholder: type });
}

function inputValue(field) {
  const type = field.dataset.type;
  if (type === "boolean") return field.checked;
  if (field.value === "") return undefined;
  if (type === "number" || type === "integer") return Number(field.value);
  if (type === "object" || type === "array") return JSON.parse(field.value);
  return field.value;
}

function triggersOf(w) {
  if (!w.triggers.length) return el("p", { class: "triggers" }, "No trigger: it runs when asked (Run, `choreo run`, a schedule).");
  const state = w.triggers_paused ? "paused" : "active";
  const limit = w.max_concurrent ? ` · at most ${w.max_concurrent} triggered runs at once` : "";
  return el("div", { class: "triggers" },
    el("p", {}, "Triggers ", badge(state), limit),
    table(["on", "matching"], w.triggers.map((t) => el("tr", { "data-trigger": t.object !== undefined ? "object" : "event" },
      el("td", {}, t.object !== undefined ? "object written" : `event ${t.event}`),
      el("td", {}, t.object !== undefined ? t.object
        : Object.entries(t.where).map(([path, value]) => `${path} = ${JSON.stringify(value)}`).join(", ") || "every event of the type")))));
}

function versionsOf(w) {
  return el("details", { class: "versions" },
    el("summary", {}, `${w.versions.length} version${w.versions.length === 1 ? "" : "s"}`),
    table(["version", "deployed", "steps", "digest"], w.versions.map((v) => el("tr", { "data-version": String(v.version) },
      el("td", {}, `${w.name}@${v.version}`), el("td", {}, when(v.deployed_at * 1000)),
      el("td", {}, String(v.steps)), el("td", { title: v.digest }, v.digest.slice(0, 12))))));
}

async function workflowsPage() {
  const where = el("div", { id: "workflows" });
  main.replaceChildren(el("h1", {}, "Workflows"), where);
  let data;
  try { data = await api("/api/workflows"); } catch (error) {
    fail(where, error);
    setTimeout(workflowsPage, 3000);  // a service that did not answer: try again
    return;
  }
  if (!data.workflows.length) where.append(el("p", {}, "No deployed workflow: `choreo deploy FILE` deploys one."));
  for (const w of data.workflows) {
    const note = el("span", { class: "note", role: "status" });
    const form = el("form", { class: "run-form", "data-workflow": w.name },
      Object.entries(w.inputs).map(([name, spec]) => el("label", { title: (spec && spec.description) || "" }, `${name} `, inputField(name, spec))),
      el("button", {}, "Run"), note);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const inputs = {};
      try {
        for (const field of form.querySelectorAll("input[name]")) {
          const v = inputValue(field);
          if (v !== undefined) inputs[field.name] = v;
        }
        const started = await post(`/api/workflows/${encodeURIComponent(w.name)}/run`, { inputs });
        location.assign(`/runs/${encodeURIComponent(started.runid)}`);
      } catch (error) { note.textContent = String(error.message); }
    });
    where.append(el("section", { class: "workflow", id: `workflow-${w.name}` },
      el("h2", {}, `${w.name} `, el("small", {}, `version ${w.version} · deployed ${when(w.deployed_at * 1000)}`)),
      w.description ? el("p", {}, w.description) : null,
      el("div", { class: "dag" }, drawDag(w.dag, null, `dag-${w.name}`)), triggersOf(w), form, versionsOf(w),
      el("p", {}, el("a", { href: `/?workflow=${encodeURIComponent(w.name)}` }, "Its runs →"))));
  }
  where.append(el("h2", {}, "Schedules"));
  if (!data.schedules.length) { where.append(el("p", {}, "No schedule: `choreo schedule create` makes one.")); return; }
  where.append(table(["schedule", "workflow", "when", "state", "next fire", "last fire", "last run", "skipped", ""],
    data.schedules.map((sc) => el("tr", { "data-schedule": sc.name },
      el("td", {}, sc.name), el("td", {}, sc.workflow), el("td", {}, sc.cron ? `${sc.cron} (${sc.timezone})` : `every ${sc.every}`),
      el("td", {}, badge(sc.state)), el("td", {}, when(sc.next_fire)), el("td", {}, when(sc.last_fire)),
      el("td", {}, sc.last_run ? el("a", { href: `/runs/${encodeURIComponent(sc.last_run)}` }, sc.last_run) : ""),
      el("td", {}, String(sc.skipped)),
      el("td", {}, el("button", { class: "schedule-action", onclick: async () => {
        await post(`/api/schedules/${encodeURIComponent(sc.name)}/${sc.state === "paused" ? "resume" : "pause"}`).catch((error) => alert(error.message));
        workflowsPage();
      } }, sc.state === "paused" ? "Resume" : "Pause"))))));
}

// ---- Dead letters -----------------------------------------------------------------------

async function dlqPage() {
  const params = new URLSearchParams(location.search);
  const where = el("div", { id: "dlq" });
  const age = el("input", { id: "purge-age", value: "7d", size: 6, "aria-label": "older than" });
  const purged = el("span", { id: "purge-note", class: "note", role: "status" });
  const purge = el("button", { id: "purge", onclick: async () => {
    if (!confirm(`Delete every dead letter older than ${age.value}?`)) return;
    try {
      const done = await post(`/api/dlq?${new URLSearchParams({ older_than: age.value })}`, undefined, "DELETE");
      await load();
      purged.textContent = `purged ${done.purged}`;
    } catch (error) { purged.textContent = String(error.message); }
  } }, "Purge");
  main.replaceChildren(el("h1", {}, "Dead letters"), el("p", {}, "What a service gave up on, with the reason; Replay publishes it again to its original subject."),
    el("p", {}, "Purge the ones older than ", age, " ", purge, " ", purged), where);
  async function load() {
    let letters;
    try { letters = await api(`/api/dlq?${params}`); } catch (error) { fail(where, error); return; }
    if (!letters.length) { where.replaceChildren(el("p", {}, "No dead letters.")); return; }
    where.replaceChildren(table(["id", "service", "time", "subject", "reason", "deliveries", "replayed", ""],
      letters.map((d) => {
        const detail = el("pre", { class: "payload", hidden: true });
        const note = el("span", { class: "note", role: "status" });
        return el("tr", { "data-dlq": d.id },
          el("td", {}, String(d.id)), el("td", {}, d.service), el("td", {}, when(d.time)), el("td", {}, d.subject),
          el("td", {}, d.reason), el("td", {}, String(d.deliveries ?? "")), el("td", { class: "replayed" }, when(d.replayed_at)),
          el("td", {},
            el("button", { class: "show", onclick: async () => {
              try {
                const full = await api(`/api/dlq/${encodeURIComponent(d.id)}`);
                detail.textContent = `${JSON.stringify(full.headers || {}, null, 1)}\n${full.payload}`;
                detail.hidden = !detail.hidden;
              } catch (error) { note.textContent = String(error.message); }
            } }, "Show"), " ",
            el("button", { class: "replay", onclick: async () => {
              try {
                const done = await post(`/api/dlq/${encodeURIComponent(d.id)}/replay${d.replayed_at ? "?force=true" : ""}`);
                note.textContent = done.replayed ? "replayed" : "already replayed";
                setTimeout(load, 500);
              } catch (error) { note.textContent = String(error.message); }
            } }, d.replayed_at ? "Replay again" : "Replay"), note, detail));
      }), { id: "dlq-table" }));
  }
  await load();
}

const PAGES = { workflows: workflowsPage, dlq: dlqPage, runs: runsPage, run: runPage, event: eventPage, lake: lakePage, fraud: fraudPage, system: systemPage, go: goPage };
if (PAGES[body.dataset.page]) PAGES[body.dataset.page]();
