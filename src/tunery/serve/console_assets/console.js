// tunery console: every page's content comes from the public API (/v1/... and /v1/tunery/...).
// No framework and no third-party code; text from the API only ever enters the page as text
// (textContent / createTextNode), never as HTML. The comparison report goes into a sandboxed iframe.
"use strict";

const HEADERS = {"X-Tunery-Console": "1"};  // the session cookie's proof that the console sent a write
const TERMINAL = ["succeeded", "failed", "cancelled"];
const COLORS = {train: "#2f80ed", valid: "#e5534b", base: "#9aa5b1", prompt_only: "#f0a04b", tuned: "#2f80ed"};
const $ = (id) => document.getElementById(id);

// -- the API --------------------------------------------------------------------------------------

async function api(method, path, body) {
  const init = {method, headers: {...HEADERS}, credentials: "same-origin"};
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const res = await fetch(path, init);
  return answer(res);
}

async function answer(res) {
  if (res.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("not logged in"); }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const msg = data && data.error ? data.error.message : `${res.status} ${res.statusText}`;
    throw new Error(msg);
  }
  return data;
}

// -- small DOM helpers ----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function say(id, message) {  // an error line under a form; empty hides it
  const node = $(id);
  if (!node) return;
  node.textContent = message || "";
  node.hidden = !message;
}

function facts(node, pairs) {
  node.replaceChildren(...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {}, v instanceof Node ? v : String(v))]));
}

function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
function iso(s) { return s ? s.slice(0, 16).replace("T", " ") : ""; }
function num(v, digits = 4) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(digits)) : (v ?? "–"); }
function dur(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}
function badge(node, status) { node.textContent = status; node.className = "badge " + status; }
function options(select, items, keep) {  // items: [value, label]
  const before = keep ?? select.value;
  select.replaceChildren(...items.map(([v, label]) => el("option", {value: v, text: label})));
  if ([...select.options].some((o) => o.value === before)) select.value = before;
}
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function every(ms, fn) {  // fn returns false to stop; errors are shown by fn itself
  let stopped = false;
  (async () => { while (!stopped) { let go = true; try { go = await fn(); } catch (e) { go = true; } if (go === false) return; await sleep(ms); } })();
  return () => { stopped = true; };
}

// -- charts: SVG, the report's chart code in JavaScript --------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

// series: {name: {color, points: [[x, y], ...]}}
function lineChart(series, {width = 720, height = 260, xLabel = "step"} = {}) {
  const all = Object.values(series).flatMap((s) => s.points);
  if (!all.length) return el("p", {class: "empty", text: "No points yet."});
  const pad = 44;
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) { y1 = y0 + Math.max(1e-3, Math.abs(y0) * 0.1); }
  const sx = (x) => pad + (x - x0) / (x1 - x0) * (width - 2 * pad);
  const sy = (y) => height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad);
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img"});
  root.append(svg("line", {class: "axis", x1: pad, y1: height - pad, x2: width - pad, y2: height - pad}),
              svg("line", {class: "axis", x1: pad, y1: pad, x2: pad, y2: height - pad}));
  for (const [y, label] of [[y0, y0], [y1, y1], [(y0 + y1) / 2, (y0 + y1) / 2]]) {
    root.append(svg("text", {x: 4, y: sy(y) + 4}, document.createTextNode(Number(label).toPrecision(3))));
  }
  root.append(svg("text", {x: pad, y: height - 14}, document.createTextNode(`${xLabel} ${x0}`)),
              svg("text", {x: width - pad - 60, y: height - 14}, document.createTextNode(`${xLabel} ${x1}`)));
  let legend = 0;
  for (const [name, s] of Object.entries(series)) {
    if (!s.points.length) continue;
    const pts = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    root.append(svg("polyline", {points: pts, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": name}));
    for (const p of s.points.length <= 60 ? s.points : []) {
      root.append(svg("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color}));
    }
    root.append(svg("text", {x: width - pad - 120, y: pad + 14 * legend++, fill: s.color, style: `fill:${s.color}`},
                    document.createTextNode(`${name} (${s.points.length})`)));
  }
  return root;
}

function barChart(bins, {width = 520, height = 200} = {}) {  // bins: [{lo, hi, count}]
  if (!bins.length) return el("p", {class: "empty", text: "No examples."});
  const pad = 30, max = Math.max(...bins.map((b) => b.count), 1), w = (width - 2 * pad) / bins.length;
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img"});
  bins.forEach((b, i) => {
    const h = b.count / max * (height - 2 * pad);
    const bar = svg("rect", {x: pad + i * w + 2, y: height - pad - h, width: Math.max(1, w - 4), height: h, fill: COLORS.train});
    bar.append(svg("title", {}, document.createTextNode(`${b.lo}–${b.hi} tokens: ${b.count}`)));
    root.append(bar, svg("text", {x: pad + i * w + 2, y: height - pad + 14}, document.createTextNode(String(b.lo))));
    if (b.count) root.append(svg("text", {x: pad + i * w + 2, y: height - pad - h - 4}, document.createTextNode(String(b.count))));
  });
  return root;
}

// nodes: [{id, name, derived_from, status, removed}], here: the id drawn highlighted
function lineageGraph(nodes, here) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const depth = new Map();
  const depthOf = (n) => {
    if (depth.has(n.id)) return depth.get(n.id);
    depth.set(n.id, 0);
    const parent = n.derived_from && byId.get(n.derived_from);
    const d = parent ? depthOf(parent) + 1 : 0;
    depth.set(n.id, d);
    return d;
  };
  nodes.forEach(depthOf);
  const rows = [];
  for (const n of nodes) (rows[depth.get(n.id)] ||= []).push(n);
  const bw = 230, bh = 34, gx = 20, gy = 34;
  const width = Math.max(...rows.map((r) => r.length)) * (bw + gx) + gx, height = rows.length * (bh + gy) + gy;
  const pos = new Map();
  rows.forEach((row, d) => row.forEach((n, i) => pos.set(n.id, [gx + i * (bw + gx), gy / 2 + d * (bh + gy)])));
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", style: `max-width:${width}px`});
  root.append(svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto"},
                                  svg("path", {d: "M0,0 L10,5 L0,10 z", fill: "#9aa5b1"}))));
  for (const n of nodes) {
    const parent = n.derived_from && pos.get(n.derived_from);
    if (!parent) continue;
    const [x, y] = pos.get(n.id);
    root.append(svg("line", {x1: parent[0] + bw / 2, y1: parent[1] + bh, x2: x + bw / 2, y2: y, stroke: "#9aa5b1", "marker-end": "url(#arrow)"}));
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n.id);
    const label = n.removed ? `(removed ${n.id.slice(0, 8)})` : n.name;
    const box = svg("g", {"data-model": n.name || n.id},
      svg("rect", {x, y, width: bw, height: bh, rx: 5, fill: n.id === here ? "#eef4fd" : "#fff",
                   stroke: n.id === here ? COLORS.tuned : "#cbd2d9", "stroke-width": n.id === here ? 2 : 1}),
      svg("text", {x: x + 8, y: y + 21, style: "fill:#1f2933;font-size:12px"}, document.createTextNode(label.length > 34 ? label.slice(0, 33) + "…" : label)));
    if (n.name && !n.removed && n.id !== here) {
      const link = svg("a", {href: "/models/" + encodeURIComponent(n.name)});
      link.append(box);
      root.append(link);
    } else root.append(box);
  }
  return root;
}

// -- tasks (re-evaluate, retrain, compare) -----------------------------------------------------------

async function followTask(task, box) {
  box.hidden = false;
  const started = Date.now();
  while (true) {
    box.textContent = `${task.kind} of ${task.subject}: ${task.status}` + (task.status === "running" || task.status === "queued" ? ` (${dur((Date.now() - started) / 1000)})` : "");
    if (task.status === "succeeded" || task.status === "failed") return task;
    await sleep(1000);
    task = await api("GET", `/v1/tunery/tasks/${task.id}`);
  }
}

function rerunTable(result) {  // reeval/retrain rows: metric, before, after, change
  return el("table", {class: "rerun"},
    el("thead", {}, el("tr", {}, ["metric", result.old_label, result.new_label, "change"].map((h) => el("th", {text: h})))),
    el("tbody", {}, (result.rows || []).map((r) => el("tr", {}, el("td", {text: r.metric}), el("td", {class: "num", text: num(r.old)}),
      el("td", {class: "num", text: num(r.new)}), el("td", {class: "num", text: `${num(r.delta)} (${r.change})`})))));
}

// -- pages ------------------------------------------------------------------------------------------

const PAGES = {};

PAGES.jobs = () => {
  const form = $("job-form");
  (async () => {
    try {
      const [models, files] = await Promise.all([api("GET", "/v1/models"), api("GET", "/v1/files?purpose=fine-tune")]);
      options($("job-model"), models.data.map((m) => [m.id, m.id]));
      const fileItems = files.data.map((f) => [f.id, `${f.filename} (${f.id})`]);
      options($("job-file"), fileItems);
      options($("job-val"), [["", "none (split off the training file)"], ...fileItems], "");
      if (!files.data.length) say("job-error", "No training file uploaded yet: upload one on the Data page.");
    } catch (e) { say("job-error", e.message); }
  })();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say("job-error", "");
    const v = (id) => $(id).value.trim();
    const n = (id, parse) => { const s = v(id); return s === "" || s === "auto" ? "auto" : parse(s); };
    const hp = {n_epochs: n("job-epochs", Number), batch_size: n("job-batch", Number), learning_rate_multiplier: n("job-lr", Number)};
    const tunery = {method: v("job-method")};
    if (v("job-steps")) tunery.max_steps = Number(v("job-steps"));
    if (v("job-val-split")) tunery.val_split = Number(v("job-val-split"));
    const kind = v("job-objective");
    const body = {model: v("job-model"), training_file: v("job-file"),
                  method: {type: kind, [kind]: {hyperparameters: hp}, tunery}};
    if (v("job-val")) body.validation_file = v("job-val");
    if (v("job-suffix")) body.suffix = v("job-suffix");
    $("job-submit").disabled = true;
    try {
      const job = await api("POST", "/v1/fine_tuning/jobs", body);
      location.href = "/jobs/" + job.id;
    } catch (e) { say("job-error", e.message); } finally { $("job-submit").disabled = false; }
  });
  every(3000, async () => {
    const jobs = await api("GET", "/v1/fine_tuning/jobs?limit=100");
    $("jobs-empty").hidden = jobs.data.length > 0;
    $("jobs").tBodies[0].replaceChildren(...jobs.data.map((j) => el("tr", {"data-job": j.id},
      el("td", {}, el("a", {href: "/jobs/" + j.id, text: j.id})), el("td", {text: j.model}),
      el("td", {}, el("span", {class: "badge " + j.status, text: j.status})),
      el("td", {}, j.fine_tuned_model ? el("a", {href: "/models/" + encodeURIComponent(j.fine_tuned_model), text: j.fine_tuned_model}) : "–"),
      el("td", {class: "num", text: j.trained_tokens ?? "–"}), el("td", {text: when(j.created_at)}))));
  });
};

PAGES.job = () => {
  const id = $("job").dataset.job;
  const events = new Map();   // event id -> event
  const points = new Map();   // step -> metrics data (a resumed run's repeated steps replace the old)
  let drawn = -1, oldest = null, backfilled = false;

  async function control(action) {
    say("job-error", "");
    try { await api("POST", `/v1/fine_tuning/jobs/${id}/${action}`); await refresh(); } catch (e) { say("job-error", e.message); }
  }
  $("pause").addEventListener("click", () => control("pause"));
  $("resume").addEventListener("click", () => control("resume"));
  $("cancel").addEventListener("click", () => control("cancel"));

  function take(list) {
    for (const e of list) {
      events.set(e.id, e);
      if (e.type === "metrics" && e.data && typeof e.data.step === "number") points.set(e.data.step, e.data);
      const n = Number(e.id.split("-").pop());
      if (oldest === null || n < oldest) oldest = n;
    }
  }

  async function refresh() {
    const job = await api("GET", `/v1/fine_tuning/jobs/${id}`);
    badge($("job-status"), job.status);
    const latest = await api("GET", `/v1/fine_tuning/jobs/${id}/events?limit=100`);
    take(latest.data);
    if (!backfilled) {  // the whole history once, older pages first requested newest-first
      let more = latest.has_more, pages = 0;
      while (more && pages++ < 200) {
        const page = await api("GET", `/v1/fine_tuning/jobs/${id}/events?limit=1000&after=ftevent-${oldest}`);
        take(page.data);
        more = page.has_more;
      }
      backfilled = true;
    }
    const steps = [...points.keys()].sort((a, b) => a - b);
    const last = steps.length ? points.get(steps[steps.length - 1]) : null;
    const hp = job.hyperparameters || {};
    facts($("job-facts"), [
      ["base model", job.model], ["training file", job.training_file], ["validation file", job.validation_file],
      ["method", job.method ? job.method.type : ""],
      ["hyperparameters", `epochs ${hp.n_epochs}, batch ${hp.batch_size}, lr × ${hp.learning_rate_multiplier}` + (hp.beta !== undefined ? `, beta ${hp.beta}` : "")],
      ["progress", last ? `step ${last.step} / ${last.total_steps}` : ""],
      ["trained tokens", job.trained_tokens], ["created", when(job.created_at)],
      ["ETA", job.estimated_finish && !TERMINAL.includes(job.status) && job.status !== "paused" ? `${when(job.estimated_finish)} (in ${dur(job.estimated_finish - Date.now() / 1000)})` : ""],
      ["finished", when(job.finished_at)], ["fine-tuned model", job.fine_tuned_model],
      ["error", job.error ? job.error.message : ""],
    ]);
    $("pause").disabled = !["running", "queued", "validating_files"].includes(job.status);
    $("resume").disabled = job.status !== "paused";
    $("cancel").disabled = TERMINAL.includes(job.status);
    const link = $("model-link");
    if (job.fine_tuned_model) { link.href = "/models/" + encodeURIComponent(job.fine_tuned_model); link.hidden = false; link.className = "button"; }
    if (points.size !== drawn) {
      drawn = points.size;
      const train = steps.map((s) => [s, points.get(s).train_loss]).filter((p) => typeof p[1] === "number");
      const valid = steps.map((s) => [s, points.get(s).valid_loss]).filter((p) => typeof p[1] === "number");
      $("curve").replaceChildren(lineChart({train: {color: COLORS.train, points: train}, valid: {color: COLORS.valid, points: valid}}));
      $("curve").dataset.points = String(train.length);
      $("curve-points").textContent = train.length ? `${train.length} steps` : "";
    }
    const list = [...events.values()].sort((a, b) => Number(b.id.split("-").pop()) - Number(a.id.split("-").pop()));
    $("events").replaceChildren(...list.slice(0, 300).map((e) => el("li", {class: e.level === "error" ? "error" : ""},
      el("time", {text: when(e.created_at)}), e.message)));
    const ck = await api("GET", `/v1/fine_tuning/jobs/${id}/checkpoints?limit=20`);
    $("checkpoints").tBodies[0].replaceChildren(...ck.data.map((c) => el("tr", {},
      el("td", {class: "num", text: c.step_number}), el("td", {class: "num", text: num(c.metrics.train_loss)}),
      el("td", {class: "num", text: num(c.metrics.valid_loss)}), el("td", {}, el("code", {text: c.fine_tuned_model_checkpoint})))));
    return job;
  }

  every(1000, async () => {
    try {
      const job = await refresh();
      say("job-error", "");
      return !TERMINAL.includes(job.status);
    } catch (e) { say("job-error", e.message); return true; }
  });
};

PAGES.data = () => {
  const params = () => `model=${encodeURIComponent($("data-model").value || "default")}&mask=${$("data-mask").value}`;
  async function lists(select) {
    const [files, models] = await Promise.all([api("GET", "/v1/files?purpose=fine-tune"), api("GET", "/v1/models")]);
    options($("data-file"), files.data.map((f) => [f.id, `${f.filename} (${f.id}, ${f.bytes} bytes)`]), select);
    options($("data-model"), models.data.map((m) => [m.id, m.id]));
  }
  async function check() {
    say("data-error", ""); say("example-error", "");
    const id = $("data-file").value;
    if (!id) { say("data-error", "Upload a file first."); return; }
    $("data-check").disabled = true;
    try {
      const r = await api("GET", `/v1/tunery/files/${id}/check?${params()}&max_length=${encodeURIComponent($("data-max-length").value)}`);
      const s = r.stats;
      $("report").hidden = false;
      $("data-summary").textContent = `${s.file}: ${r.examples} examples in ${s.format} format, ${r.good} usable; ` +
        `${r.error_count} errors, ${r.warning_count} warnings. ` + (r.good ? `Suggested epochs: ${s.suggested_epochs}.` : "Nothing here can be trained on yet.");
      $("data-summary").dataset.ok = String(r.ok);
      $("histogram").replaceChildren(barChart(s.histogram));
      const t = s.tokens_per_example;
      facts($("data-stats"), [["tokens / example", `min ${t.min}, median ${t.median}, p95 ${t.p95}, max ${t.max}`],
        ["trained tokens", s.trainable_tokens], ["tokens / epoch", s.tokens_per_epoch], ["dropped (too long)", s.dropped],
        ["truncated", s.truncated], ["duplicates", s.duplicates]]);
      const rows = [...r.errors.map((e) => ["error", e]), ...r.warnings.map((w) => ["warning", w])]
        .sort((a, b) => (a[1].line ?? 0) - (b[1].line ?? 0));
      $("data-errors").tBodies[0].replaceChildren(...rows.map(([kind, e]) => el("tr", {class: kind},
        el("td", {class: "num", text: e.line ?? "–"}), el("td", {text: kind}), el("td", {}, el("code", {text: e.code})), el("td", {text: e.message}))));
      $("data-clean").hidden = rows.length > 0;
      if (r.good) await example(); else $("example").replaceChildren();
    } catch (e) { say("data-error", e.message); } finally { $("data-check").disabled = false; }
  }
  async function example() {
    say("example-error", "");
    try {
      const r = await api("GET", `/v1/tunery/files/${$("data-file").value}/examples/${encodeURIComponent($("example-k").value)}?${params()}`);
      $("example").replaceChildren(el("span", {class: "line", text: `line ${r.line}:\n`}),
        ...r.pieces.map((p) => p.trained ? el("mark", {class: "trained", text: p.text}) : document.createTextNode(p.text)));
    } catch (e) { say("example-error", e.message); $("example").replaceChildren(); }
  }
  $("upload-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say("upload-error", "");
    const file = $("upload-file").files[0];
    if (!file) return;
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", file, file.name);
    $("upload-submit").disabled = true;
    try {
      const f = await api("POST", "/v1/files", body);
      await lists(f.id);
      await check();
    } catch (e) { say("upload-error", e.message); } finally { $("upload-submit").disabled = false; }
  });
  $("data-check").addEventListener("click", check);
  $("example-show").addEventListener("click", example);
  lists().catch((e) => say("data-error", e.message));
};

PAGES.models = () => {
  every(5000, async () => {
    const [models, served] = await Promise.all([api("GET", "/v1/tunery/models"), api("GET", "/v1/models")]);
    const tuned = new Set(models.data.map((m) => m.name));
    $("bases").replaceChildren(...served.data.filter((m) => !tuned.has(m.id)).map((m) => el("li", {}, el("code", {text: m.id}))));
    $("models-empty").hidden = models.data.length > 0;
    $("models").tBodies[0].replaceChildren(...models.data.map((m) => el("tr", {"data-model": m.name},
      el("td", {}, el("a", {href: "/models/" + encodeURIComponent(m.name), text: m.name})),
      el("td", {}, el("span", {class: "badge " + m.status, text: m.status})), el("td", {text: m.base}), el("td", {text: m.method}),
      el("td", {class: "num", text: num((m.metrics || {}).val_loss)}),
      el("td", {}, m.stale ? el("span", {class: "badge stale", title: m.stale_reason || "", text: "stale"}) : "–"),
      el("td", {text: iso(m.created)}))));
  });
};

PAGES.model = () => {
  const root = $("model"), ref = root.dataset.refUrl;
  let model = null;
  async function load() {
    model = await api("GET", `/v1/tunery/models/${ref}`);
    $("model-name").textContent = model.name;
    badge($("model-status"), model.status);
    $("model-stale").hidden = !model.stale;
    $("model-stale").title = model.stale_reason || "";
    const m = model.metrics || {};
    facts($("model-facts"), [["id", model.id], ["base", model.base + (model.base_model ? "" : " (not served here)")], ["method", model.method],
      ["training file", (model.data.train || {}).file], ["validation loss", num(m.val_loss)], ["training loss", num(m.train_loss ?? m.loss)],
      ["weights", model.files], ["stale", model.stale ? model.stale_reason : "no"], ["created", iso(model.created)], ["finished", iso(model.finished)],
      ["exports", model.exports.map((e) => e.format + (e.quant ? ` ${e.quant}` : "")).join(", ")], ["error", model.error]]);
    $("playground-link").href = "/playground?model=" + encodeURIComponent(model.name);
    $("playground-link").hidden = !model.servable;
    const lin = model.lineage;
    $("lineage").replaceChildren(lineageGraph([...lin.ancestors, lin.model, ...lin.descendants], lin.model.id));
    const train = model.curve.filter((r) => typeof r.loss === "number").map((r) => [r.step, r.loss]);
    const valid = model.curve.filter((r) => typeof r.val_loss === "number").map((r) => [r.step, r.val_loss]);
    $("model-curve").replaceChildren(lineChart({train: {color: COLORS.train, points: train}, valid: {color: COLORS.valid, points: valid}}));
    $("evals").tBodies[0].replaceChildren(...model.evals.slice().reverse().map((e) => el("tr", {},
      el("td", {text: iso(e.created)}), el("td", {text: e.kind + (e.on_other_base ? " (other base)" : "")}), el("td", {text: e.data_file}),
      el("td", {class: "num", text: e.examples}), el("td", {text: Object.entries(e.results).map(([k, v]) => `${k} ${num(v)}`).join(", ")}))));
    $("recipe").textContent = JSON.stringify(model.config, null, 2);
    $("card").textContent = model.card || "(no model card)";
    $("reeval").disabled = $("retrain").disabled = model.status !== "completed";
  }
  async function run(path, body) {
    say("model-error", "");
    $("reeval").disabled = $("retrain").disabled = true;
    try {
      const done = await followTask(await api("POST", `/v1/tunery/models/${ref}/${path}`, body), $("task"));
      if (done.status === "failed") { say("model-error", done.error.message); return; }
      const r = done.result;
      $("task").replaceChildren(el("p", {text: `${r.kind}: ${r.eval.examples} examples of ${r.eval.data} (${r.eval.source})` +
        (r.regressions && r.regressions.length ? ` — regressions: ${r.regressions.map((x) => x.metric).join(", ")}` : "")}), rerunTable(r),
        r.new ? el("p", {}, "new model: ", el("a", {href: "/models/" + encodeURIComponent(r.new), text: r.new})) : "");
      await load();
    } catch (e) { say("model-error", e.message); } finally { $("reeval").disabled = $("retrain").disabled = model && model.status !== "completed"; }
  }
  $("reeval").addEventListener("click", () => run("reeval"));
  $("retrain").addEventListener("click", () => run("retrain", {base: $("retrain-base").value}));
  (async () => {
    try {
      await load();
      const served = await api("GET", "/v1/models");
      options($("retrain-base"), served.data.filter((x) => x.id !== model.name).map((x) => [x.id, x.id]), model.base_model || "default");
    } catch (e) { say("model-error", e.message); }
  })();
};

PAGES.compare = () => {
  (async () => {
    try {
      const [models, files] = await Promise.all([api("GET", "/v1/tunery/models"), api("GET", "/v1/files")]);
      options($("cmp-model"), models.data.filter((m) => m.servable).map((m) => [m.name, m.name]));
      options($("cmp-file"), [["", "its recorded evaluation set"], ...files.data.map((f) => [f.id, `${f.filename} (${f.id})`])], "");
    } catch (e) { say("cmp-error", e.message); }
  })();
  $("compare-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say("cmp-error", "");
    $("cmp-result").hidden = true;
    const metrics = [...document.querySelectorAll("input[name=metric]:checked")].map((i) => i.value);
    const body = {model: $("cmp-model").value, metrics, few_shot: Number($("cmp-shots").value), limit: Number($("cmp-limit").value)};
    if ($("cmp-file").value) body.file = $("cmp-file").value;
    $("cmp-submit").disabled = true;
    try {
      const done = await followTask(await api("POST", "/v1/tunery/compare", body), $("cmp-task"));
      if (done.status === "failed") { say("cmp-error", done.error.message); return; }
      const r = done.result, names = Object.keys(r.contestants);
      $("cmp-verdict").textContent = r.verdict ? r.verdict.text : "";
      const metricNames = Object.keys(r.contestants[names[0]].metrics);
      $("cmp-table").replaceChildren(
        el("thead", {}, el("tr", {}, el("th", {text: `${r.examples} examples`}), names.map((n) => el("th", {text: n})))),
        el("tbody", {}, metricNames.map((m) => el("tr", {}, el("td", {text: m}), names.map((n) => el("td", {class: "num", text: num(r.contestants[n].metrics[m], 3)})))),
          el("tr", {}, el("td", {text: "prompt tokens / request"}), names.map((n) => el("td", {class: "num", text: num(r.contestants[n].prompt_tokens_per_request, 1)}))),
          el("tr", {}, el("td", {text: "latency s / request"}), names.map((n) => el("td", {class: "num", text: num(r.contestants[n].latency_s_per_request, 3)})))));
      $("report").srcdoc = r.report_html;
      $("cmp-result").hidden = false;
    } catch (e) { say("cmp-error", e.message); } finally { $("cmp-submit").disabled = false; }
  });
};

async function streamChat(model, messages, maxTokens, box) {
  const text = box.querySelector(".text"), meta = box.querySelector(".meta");
  text.textContent = ""; meta.textContent = "…";
  box.dataset.done = "false";
  const t0 = performance.now();
  let first = null, usage = null;
  try {
    const res = await fetch("/v1/chat/completions", {method: "POST", credentials: "same-origin",
      headers: {...HEADERS, "Content-Type": "application/json"},
      body: JSON.stringify({model, messages, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: {include_usage: true}})});
    if (!res.ok) await answer(res);
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices || []) {
          const piece = c.delta && c.delta.content;
          if (piece) { if (first === null) first = performance.now(); text.append(piece); }
        }
      }
    }
    const total = (performance.now() - t0) / 1000;
    meta.textContent = (usage ? `${usage.prompt_tokens} prompt tokens · ${usage.completion_tokens} answer tokens · ` : "") +
      (first !== null ? `first token ${Math.round(first - t0)} ms · ` : "") + `${total.toFixed(2)} s`;
  } catch (e) {
    meta.textContent = "";
    text.replaceChildren(el("span", {class: "error", text: e.message}));
  } finally { box.dataset.done = "true"; }
}

PAGES.playground = () => {
  const form = $("pg-form");
  (async () => {
    try {
      const models = await api("GET", "/v1/tunery/models");
      options($("pg-model"), models.data.filter((m) => m.servable).map((m) => [m.name, m.name]), form.dataset.model);
      if (!models.data.some((m) => m.servable)) say("pg-error", "No servable fine-tune yet: start a job on the Jobs page.");
    } catch (e) { say("pg-error", e.message); }
  })();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say("pg-error", "");
    const model = $("pg-model").value, max = Number($("pg-max").value) || 128;
    const ask = [{role: "user", content: $("pg-prompt").value}];
    $("pg-send").disabled = true;
    try {
      const b = await api("GET", `/v1/tunery/models/${encodeURIComponent(model)}/baseline`);
      const boxes = {base: $("pg-base"), prompt_only: $("pg-prompt_only"), tuned: $("pg-tuned")};
      boxes.base.querySelector(".who").textContent = b.base_model || "";
      boxes.prompt_only.querySelector(".who").textContent = b.base_model ? `${b.base_model} + ${b.few_shot} examples` : "";
      boxes.tuned.querySelector(".who").textContent = model;
      const runs = [streamChat(model, ask, max, boxes.tuned)];
      if (b.base_model) {
        runs.push(streamChat(b.base_model, ask, max, boxes.base), streamChat(b.base_model, [...b.messages, ...ask], max, boxes.prompt_only));
      } else {
        for (const key of ["base", "prompt_only"]) {
          boxes[key].querySelector(".text").textContent = "";
          boxes[key].querySelector(".meta").textContent = "This server does not serve the fine-tune's base: start it with --base NAME=REF.";
          boxes[key].dataset.done = "true";
        }
      }
      await Promise.all(runs);
    } catch (e) { say("pg-error", e.message); } finally { $("pg-send").disabled = false; }
  });
};

document.addEventListener("DOMContentLoaded", () => { const run = PAGES[document.body.dataset.page]; if (run) run(); });
