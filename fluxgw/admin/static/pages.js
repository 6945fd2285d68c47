// The dashboard's pages. Each renders into <main> and returns a cleanup function (closing its
// event stream) or nothing. Live data arrives on /api/events (server-sent events).
import { announce, api, ApiError } from "./app.js";
import { LineChart } from "./charts.js";
import { ago, clock, h, ms, s, table } from "./dom.js";

const MAX_ROWS = 200;

function events(query, handlers) {
  const source = new EventSource(`/api/events${query ? `?${query}` : ""}`);
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
  }
  return source;
}

function statusClass(status) {
  if (status === 429) return "st-429";
  return `st-${String(status)[0]}xx`;
}

// -- overview ----------------------------------------------------------------------------
async function overview(main) {
  const data = await api("GET", "overview");
  const cards = h("dl", { class: "cards" });
  const charts = [
    new LineChart("Requests per second", "req/s", [{ name: "requests", key: "count", className: "s-count" }]),
    new LineChart("Latency", "ms", [
      { name: "p50", key: "p50_ms", className: "s-p50" },
      { name: "p95", key: "p95_ms", className: "s-p95" },
    ]),
    new LineChart("Responses by status", "req/s", [
      { name: "2xx", key: "c2xx", className: "s-2xx" },
      { name: "4xx", key: "c4xx", className: "s-4xx" },
      { name: "5xx", key: "c5xx", className: "s-5xx" },
    ]),
    new LineChart("Rate limited (429)", "req/s", [{ name: "429", key: "c429", className: "s-429" }]),
  ];
  main.append(
    h("h1", { text: "Overview" }),
    h("p", { class: "muted", text: "The last 15 minutes, from the gateway's memory; updated every second." }),
    cards,
    h("div", { class: "charts" }, charts.map((c) => c.node)));
  const points = data.points;
  const showTotals = (totals) => {
    const entries = [
      ["Requests", totals.count.toLocaleString()],
      ["p50", ms(totals.p50_ms)],
      ["p95", ms(totals.p95_ms)],
      ["Errors (5xx)", totals.c5xx.toLocaleString()],
      ["Client errors (4xx)", totals.c4xx.toLocaleString()],
      ["Rate limited", totals.c429.toLocaleString()],
    ];
    cards.replaceChildren(...entries.map(([name, value]) => h("div", { class: "card" }, h("dt", { text: name }), h("dd", { text: value }))));
  };
  showTotals(data.totals);
  for (const chart of charts) chart.set(points);
  const source = events("requests=off", {
    metrics: ({ point, totals }) => {
      if (points.length && points[points.length - 1].t >= point.t) return;
      points.push(point);
      while (points.length > 900) points.shift();
      for (const chart of charts) chart.set(points);
      if (totals) showTotals(totals);
    },
  });
  return () => { source.close(); for (const chart of charts) chart.close(); };
}

// -- requests ----------------------------------------------------------------------------
async function requests(main) {
  const [initial, functions] = await Promise.all([api("GET", "requests"), api("GET", "functions")]);
  const tbody = h("tbody");
  const live = h("span", { class: "live", text: "connecting…" });
  const statusSelect = h("select", { id: "f-status", name: "status" },
    [["", "any"], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"], ["429", "429"]].map(([v, t]) => h("option", { value: v, text: t })));
  const functionSelect = h("select", { id: "f-function", name: "function" },
    h("option", { value: "", text: "any" }), functions.map((f) => h("option", { value: f.name, text: f.name })));
  const keyInput = h("input", { id: "f-key", name: "key", type: "search", placeholder: "key name", autocomplete: "off" });
  const form = h("form", { class: "filters", role: "search" },
    h("label", { for: "f-status" }, "Status"), statusSelect,
    h("label", { for: "f-function" }, "Function"), functionSelect,
    h("label", { for: "f-key" }, "Key"), keyInput,
    live);
  main.append(
    h("h1", { text: "Requests" }),
    h("p", { class: "muted", text: "A live tail of the gateway's answers. Select a request id to see its trace." }),
    form,
    h("div", { class: "table-wrap" }, h("table", { id: "requests" },
      h("caption", { class: "sr-only", text: "Recent requests, newest first" }),
      h("thead", {}, h("tr", {}, ["Time", "Request", "Method", "Path", "Status", "Duration", "Function", "Key"].map((c) => h("th", { scope: "col", text: c })))),
      tbody)));

  const filter = () => ({ status: statusSelect.value, function: functionSelect.value, key: keyInput.value.trim() });
  const keep = (row, f) => (!f.function || row.function === f.function) && (!f.key || row.key === f.key) &&
    (!f.status || (f.status.endsWith("xx") ? String(row.status)[0] === f.status[0] : String(row.status) === f.status));
  const rowFor = (r) => h("tr", { class: statusClass(r.status) },
    h("td", { text: clock(r.time) }),
    h("td", {}, h("a", { href: `#/trace/${r.request_id}`, class: "mono", title: r.request_id, text: r.request_id.slice(0, 12) })),
    h("td", { text: r.method }),
    h("td", { class: "mono path", text: r.path }),
    h("td", {}, h("span", { class: "pill", text: r.status })),
    h("td", { class: "num", text: ms(r.duration_ms) }),
    h("td", { text: r.function || "–" }),
    h("td", { text: r.key || "–" }));
  const gap = (count) => {
    const top = tbody.firstElementChild;
    const total = count + (top && top.classList.contains("gap") ? Number(top.dataset.count) : 0);
    if (total !== count) top.remove();
    const marker = h("tr", { class: "gap" }, h("td", { colspan: "8", text: `${total.toLocaleString()} rows skipped` }));
    marker.dataset.count = String(total);
    tbody.prepend(marker);
    while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
  };
  const add = (rows) => {
    tbody.prepend(...rows.slice().reverse().map(rowFor));
    while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
  };
  const f0 = filter();
  add(initial.filter((r) => keep(r, f0)).reverse());

  let source = null;
  let notShown = 0;
  const connect = () => {
    if (source) source.close();
    const f = filter();
    const query = new URLSearchParams(Object.entries(f).filter(([, v]) => v)).toString();
    source = events(query, {
      request: (rows) => add(rows),
      // Sent just before the rows it is older than: a marker row where the gap is.
      skipped: ({ count }) => {
        notShown += count;
        live.textContent = `● live (${notShown.toLocaleString()} too many to show)`;
        gap(count);
      },
    });
    source.onopen = () => { live.textContent = "● live"; live.classList.add("on"); };
    source.onerror = () => { live.textContent = "reconnecting…"; live.classList.remove("on"); };
  };
  const refilter = () => {
    const f = filter();
    for (const tr of [...tbody.rows]) tr.remove();
    add(initial.filter((r) => keep(r, f)).reverse());
    connect();
  };
  statusSelect.addEventListener("change", refilter);
  functionSelect.addEventListener("change", refilter);
  keyInput.addEventListener("change", refilter);
  form.addEventListener("submit", (e) => { e.preventDefault(); refilter(); });
  connect();
  return () => source && source.close();
}

// -- trace -------------------------------------------------------------------------------
async function trace(main, [id]) {
  let data;
  // A row reaches the live tail before its trace reaches the store (written every 100 ms):
  // a fresh request's trace may need a moment.
  for (let attempt = 0; !data; attempt++) {
    try {
      data = await api("GET", `traces/${encodeURIComponent(id || "")}`);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      if (attempt < 6) {
        await new Promise((resolve) => setTimeout(resolve, 300));
        continue;
      }
      main.append(h("h1", { text: "Trace not found" }), h("p", { text: error.message }),
        h("p", {}, "Traces are kept for 7 days (the newest 10,000)."));
      return;
    }
  }
  const facts = [
    ["Request", data.request_id],
    ["Time", new Date(data.started_at * 1000).toISOString()],
    ["HTTP", `${data.method} ${data.path} → ${data.status} in ${ms(data.duration_ms)}`],
    ["Function", data.function],
    ["API key", data.key_name],
    ["Async", data.async_state],
    ["Trace id", data.trace_id],
  ].filter(([, v]) => v);
  main.append(
    h("p", {}, h("a", { href: "#/requests", text: "← Requests" })),
    h("h1", { text: "Trace" }),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { class: "mono", text: v })])),
    h("h2", { text: "Spans" }),
    waterfall(data),
    h("h2", { text: "Log lines" }),
    data.logs.length
      ? table("Log lines", ["Offset", "Stream", "Line"], data.logs.map((line) => h("tr", {},
          h("td", { class: "num", text: `+${ms((line.timestamp - data.started_at) * 1000)}` }),
          h("td", { text: line.stream }),
          h("td", { class: "mono log", text: line.text }))), "")
      : h("p", { class: "muted", text: "The function printed nothing." }));
}

function waterfall(data) {
  const spans = data.spans.slice().sort((a, b) => a.start - b.start);
  const extent = Math.max(data.duration_ms, ...spans.map((sp) => (sp.start - data.started_at) * 1000 + sp.duration_ms), 0.001);
  const list = h("ol", { class: "waterfall" });
  for (const span of spans) {
    const offset = (span.start - data.started_at) * 1000;
    const left = Math.min(99, (offset / extent) * 100);
    const width = Math.max(0.5, Math.min(100 - left, (span.duration_ms / extent) * 100));
    const bar = s("svg", { class: "bar", viewBox: "0 0 100 10", preserveAspectRatio: "none", "aria-hidden": "true" },
      s("rect", { class: `span-${span.name}`, x: left, y: 0, width, height: 10 }));
    const attrs = Object.entries(span.attributes || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join("  ");
    list.append(h("li", { class: "span", "data-span": span.name },
      h("div", { class: "span-head" },
        h("strong", { text: span.name }),
        h("span", { class: "num", text: `+${ms(offset)}` }),
        h("span", { class: "num", text: ms(span.duration_ms) })),
      bar,
      attrs ? h("p", { class: "mono attrs", text: attrs }) : null));
  }
  if (!spans.length) list.append(h("li", { class: "muted", text: "No spans recorded." }));
  return list;
}

// -- keys --------------------------------------------------------------------------------
async function keys(main) {
  const [rows, functions] = await Promise.all([api("GET", "keys"), api("GET", "functions")]);
  const reveal = h("div", { class: "reveal", hidden: true });
  const nameInput = h("input", { id: "key-name", name: "name", required: true, maxlength: 64, pattern: "\\S+", autocomplete: "off" });
  const envSelect = h("select", { id: "key-env", name: "environment" },
    h("option", { value: "live", text: "live (flx_live_)" }), h("option", { value: "test", text: "test (flx_test_)" }));
  const scope = h("fieldset", { class: "scope" }, h("legend", { text: "Scope (none ticked: every function)" }),
    functions.length ? functions.map((f) => h("label", { class: "check" },
      h("input", { type: "checkbox", name: "functions", value: f.name }), f.name))
      : h("p", { class: "muted", text: "No functions deployed." }));
  const form = h("form", { class: "panel", id: "create-key" },
    h("h2", { text: "Create a key" }),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "key-name", text: "Name" }), nameInput),
      h("div", { class: "field" }, h("label", { for: "key-env", text: "Environment" }), envSelect)),
    scope,
    h("button", { type: "submit", text: "Create key" }));
  const listing = h("div");
  const dialog = confirmDialog();
  main.append(h("h1", { text: "API keys" }), reveal, form, h("h2", { text: "Keys" }), listing, dialog.node);

  const render = (records) => {
    listing.replaceChildren(table("API keys", ["Name", "Prefix", "Env", "Functions", "Created", "Last used", "Remaining burst", "Status", ""],
      records.map((r) => h("tr", { class: r.revoked_at ? "revoked" : "" },
        h("th", { scope: "row", text: r.name }),
        h("td", { class: "mono", text: r.display }),
        h("td", { text: r.environment }),
        h("td", { text: r.functions.length ? r.functions.join(", ") : "all" }),
        h("td", { text: ago(r.created_at) }),
        h("td", { text: ago(r.last_used) }),
        h("td", { class: "num", text: r.remaining_burst ?? "–" }),
        h("td", { text: r.revoked_at ? `revoked ${ago(r.revoked_at)}` : "active" }),
        h("td", {}, r.revoked_at ? null : h("button", {
          type: "button", class: "danger", "aria-label": `Revoke key ${r.name}`, text: "Revoke",
          onclick: async () => {
            if (!(await dialog.ask(`Revoke the key “${r.name}”?`, "Calls with it are refused within a second. This cannot be undone."))) return;
            await api("POST", `keys/${encodeURIComponent(r.name)}/revoke`, {});
            announce(`Key ${r.name} revoked`);
            render(await api("GET", "keys"));
          },
        })))), "No keys yet."));
  };
  render(rows);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = [...scope.querySelectorAll("input:checked")].map((box) => box.value);
    try {
      const created = await api("POST", "keys", { name: nameInput.value.trim(), environment: envSelect.value, functions: chosen });
      showKey(reveal, created);
      form.reset();
      render(await api("GET", "keys"));
    } catch (error) {
      announce(error.message);
    }
  });
}

function showKey(reveal, created) {
  const value = h("input", { id: "new-key", class: "mono", readonly: true, value: created.key, "aria-label": `The new key ${created.name}` });
  const copy = h("button", { type: "button", text: "Copy" });
  copy.addEventListener("click", async () => {
    value.select();
    try {
      await navigator.clipboard.writeText(created.key);
    } catch {
      document.execCommand("copy");
    }
    announce("Key copied");
  });
  const done = h("button", { type: "button", class: "quiet", text: "Done" });
  done.addEventListener("click", () => { reveal.hidden = true; reveal.replaceChildren(); });
  reveal.replaceChildren(
    h("h2", { text: `Key “${created.name}” created` }),
    h("p", { text: "Copy it now: it is shown only once and is stored only as a hash." }),
    h("div", { class: "row" }, value, copy, done));
  reveal.hidden = false;
  value.focus();
  value.select();
}

function confirmDialog() {
  const title = h("h2", { id: "confirm-title" });
  const text = h("p");
  const yes = h("button", { type: "button", class: "danger", value: "yes", text: "Revoke" });
  const no = h("button", { type: "button", class: "quiet", value: "no", text: "Cancel" });
  const node = h("dialog", { "aria-labelledby": "confirm-title" }, title, text, h("div", { class: "row" }, yes, no));
  return {
    node,
    ask(question, detail) {
      title.textContent = question;
      text.textContent = detail;
      node.showModal();
      no.focus();
      return new Promise((resolve) => {
        const finish = (answer) => { node.close(); yes.onclick = no.onclick = node.oncancel = null; resolve(answer); };
        yes.onclick = () => finish(true);
        no.onclick = () => finish(false);
        node.oncancel = () => finish(false);
      });
    },
  };
}

// -- functions ---------------------------------------------------------------------------
async function functions(main) {
  const rows = await api("GET", "functions");
  main.append(h("h1", { text: "Functions" }),
    h("p", { class: "muted", text: "The live deployment; requests, errors and p50 since the gateway started." }),
    table("Deployed functions", ["Function", "Method", "Route", "Runtime", "Async", "Warm workers", "Requests", "Errors", "p50"],
      rows.map((f) => h("tr", {},
        h("th", { scope: "row", text: f.name }),
        h("td", { text: f.method }),
        h("td", { class: "mono", text: f.route }),
        h("td", { text: f.runtime }),
        h("td", { text: f.async ? "yes" : "no" }),
        h("td", { class: "num", text: `${f.workers_idle} idle, ${f.workers_busy} busy` }),
        h("td", { class: "num", text: f.requests }),
        h("td", { class: "num", text: f.errors }),
        h("td", { class: "num", text: ms(f.p50_ms) }))), "Nothing deployed: run flux deploy."));
}

// -- async jobs --------------------------------------------------------------------------
async function jobs(main) {
  const holder = h("div");
  const refresh = h("button", { type: "button", class: "quiet", text: "Refresh" });
  main.append(h("h1", { text: "Async jobs" }),
    h("p", { class: "muted", text: "The newest 100 async invocations; steps arrive live." }), refresh, holder);
  let rows = [];
  const render = () => holder.replaceChildren(table("Async jobs", ["Request", "Function", "State", "Attempts", "Error", "Updated"],
    rows.map((j) => h("tr", { class: `job-${j.state}` },
      h("td", {}, h("a", { href: `#/trace/${j.request_id}`, class: "mono", text: j.request_id.slice(0, 12) })),
      h("td", { text: j.function }),
      h("td", {}, h("span", { class: "pill", text: j.state })),
      h("td", { class: "num", text: `${j.attempts} / ${j.max_attempts}` }),
      h("td", { class: "error", text: j.error || "" }),
      h("td", { text: ago(j.updated_at) }))), "No async jobs yet."));
  const states = { running: "running", retry: "queued", succeeded: "succeeded", failed: "failed" };
  let early = []; // steps that arrive while the list loads: applied on top of it
  const apply = (steps) => {
    for (const step of steps) {
      let row = rows.find((j) => j.request_id === step.request_id);
      if (!row) {
        row = { request_id: step.request_id, function: step.function, max_attempts: step.max_attempts, error: null };
        rows.unshift(row);
      }
      Object.assign(row, { state: states[step.event] || step.event, attempts: step.attempt, updated_at: step.time });
      if (step.error) row.error = step.error;
    }
    render();
  };
  // The stream opens first, so no step falls between the list and the stream.
  const source = events("requests=off", { job: (steps) => (early ? early.push(...steps) : apply(steps)) });
  const load = async () => { rows = await api("GET", "jobs"); render(); };
  refresh.addEventListener("click", load);
  await load();
  const waiting = early;
  early = null;
  apply(waiting);
  return () => source.close();
}

// -- settings ----------------------------------------------------------------------------
async function settings(main) {
  const current = await api("GET", "settings");
  const plan = h("select", { id: "plan", name: "plan" }, current.plans.map((p) => h("option", { value: p, text: p, selected: p === current.plan })));
  const origins = h("textarea", { id: "cors", name: "cors", rows: 4, spellcheck: "false",
    "aria-describedby": "cors-help", placeholder: "https://app.example.com" });
  origins.value = current.cors_origins.join("\n");
  const limits = h("p", { class: "muted" });
  const showLimits = (s) => { limits.textContent = `${s.plan}: ${s.limits.rate_per_minute}/min sustained, burst ${s.limits.burst}, per key.`; };
  showLimits(current);
  const form = h("form", { class: "panel", id: "settings" },
    h("div", { class: "field" }, h("label", { for: "plan", text: "Plan" }), plan, limits),
    h("div", { class: "field" }, h("label", { for: "cors", text: "CORS allowlist" }), origins,
      h("p", { id: "cors-help", class: "muted", text: "One origin per line. Empty: any origin may call POST/PUT/PATCH/DELETE." })),
    h("button", { type: "submit", text: "Save settings" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const list = origins.value.split(/[\s,]+/).map((o) => o.trim()).filter(Boolean);
    try {
      const saved = await api("PUT", "settings", { plan: plan.value, cors_origins: list });
      origins.value = saved.cors_origins.join("\n");
      showLimits(saved);
      announce("Settings saved: live now");
    } catch (error) {
      announce(error.message);
    }
  });
  main.append(h("h1", { text: "Settings" }), h("p", { class: "muted", text: `Project ${current.project_id}` }), form);
}

export const pages = { overview, requests, trace, keys, functions, jobs, settings };
