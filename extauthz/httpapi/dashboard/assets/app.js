// The governance dashboard's only script. Every value that comes from the
// API — and so possibly from an agent — is put into the page as a text node
// or an attribute value, never parsed as markup (no innerHTML anywhere).
"use strict";

(function () {
  const page = document.body.dataset.page;
  const approver = document.body.dataset.approver === "true";
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const SVGNS = "http://www.w3.org/2000/svg";
  const POLL_MS = 5000;

  // ---- small DOM helpers -------------------------------------------------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.setAttribute("class", v);
      else if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
  }
  function append(e, kids) {
    for (const k of [kids].flat(Infinity)) {
      if (k === undefined || k === null || k === false) continue;
      e.appendChild(typeof k === "object" ? k : document.createTextNode(String(k)));
    }
  }
  function $(id) { return document.getElementById(id); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function fill(tbody, rows, empty, cols) {
    clear(tbody);
    if (!rows.length) tbody.appendChild(el("tr", {}, el("td", { colspan: cols, class: "muted", text: empty })));
    rows.forEach(r => tbody.appendChild(r));
  }
  function fmt(n, d) { return typeof n === "number" ? n.toFixed(d === undefined ? 2 : d) : "–"; }
  function when(s) { if (!s) return "–"; const d = new Date(s); return isNaN(d) ? String(s) : d.toLocaleString(); }
  function secs(s) {
    if (typeof s !== "number") return "–";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function status(msg, kind) {
    const s = $("status");
    s.textContent = msg || "";
    s.className = "status " + (kind || "");
  }
  // A decision, shown with an icon and a word, not by colour alone.
  const DECISION = {
    allow: ["✔", "allow", "ok"], deny: ["✖", "deny", "bad"], require_approval: ["‖", "approval required", "warn"],
    approved: ["✔", "approved", "ok"], rejected: ["✖", "rejected", "bad"], pending: ["◷", "pending", "warn"],
    used: ["✔", "approved, used", "ok"], expired: ["◷", "expired", "muted"],
  };
  function decision(d) {
    const [icon, word, cls] = DECISION[d] || ["•", String(d || "–"), "muted"];
    return el("span", { class: "tag " + cls }, icon + " " + word);
  }
  function runLink(agent, id) {
    const q = new URLSearchParams({ agent: agent || "", id: id || "" });
    return el("a", { href: "/run?" + q.toString(), class: "mono" }, id || "–");
  }

  // ---- API ----------------------------------------------------------------
  async function api(path, opts) {
    opts = opts || {};
    const headers = { Accept: "application/json" };
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    if (opts.method && opts.method !== "GET") headers["X-CSRF-Token"] = csrf;
    const resp = await fetch(path, {
      method: opts.method || "GET", headers, credentials: "same-origin",
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    if (resp.status === 401) { window.location.assign("/signin"); throw new Error("signed out"); }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && data.error ? data.error.code + ": " + data.error.message : "HTTP " + resp.status;
      const err = new Error(msg);
      err.status = resp.status;
      err.data = data;
      throw err;
    }
    return data;
  }
  // poll runs f now and every POLL_MS while the page is visible.
  function poll(f) {
    let timer = null;
    const tick = async () => {
      try { await f(); } catch (e) { if (e.message !== "signed out") status("⚠ " + e.message, "bad"); }
      timer = setTimeout(tick, POLL_MS);
    };
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) { clearTimeout(timer); timer = null; } else if (!timer) tick();
    });
    tick();
  }
  async function pendingBadge() {
    const b = $("nav-pending");
    if (!b) return;
    try {
      const d = await api("/v1/approvals?status=pending");
      const n = (d.approvals || []).length;
      b.hidden = n === 0;
      b.textContent = n + " pending";
    } catch (e) { b.hidden = true; }
  }

  // ---- charts ---------------------------------------------------------------
  // Stacked bars of decisions per bucket; each series has a pattern mark as
  // well as a colour, and the legend names them.
  function seriesChart(series) {
    const W = 640, H = 220, L = 40, B = 30, T = 10;
    const keys = ["allow", "require_approval", "deny"];
    const buckets = series.buckets || [];
    let maxV = 1;
    buckets.forEach(b => { maxV = Math.max(maxV, keys.reduce((s, k) => s + (b.decisions[k] || 0), 0)); });
    const bw = (W - L - 10) / Math.max(1, buckets.length);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "Decisions per interval, stacked by outcome" });
    for (let i = 0; i <= 4; i++) {
      const y = T + (H - T - B) * (1 - i / 4);
      root.appendChild(svg("line", { x1: L, x2: W - 10, y1: y, y2: y, class: "grid" }));
      root.appendChild(svg("text", { x: L - 4, y: y + 4, class: "axis", "text-anchor": "end" }, String(Math.round(maxV * i / 4))));
    }
    buckets.forEach((b, i) => {
      let y = H - B;
      keys.forEach(k => {
        const v = b.decisions[k] || 0;
        if (!v) return;
        const h = (H - T - B) * v / maxV;
        y -= h;
        const r = svg("rect", { x: L + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, class: "bar " + k });
        r.appendChild(svg("title", {}, `${when(b.start)}: ${v} ${k}`));
        root.appendChild(r);
      });
      if (i % 6 === 0) root.appendChild(svg("text", { x: L + i * bw, y: H - 10, class: "axis" }, new Date(b.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    });
    const legend = el("p", { class: "legend" },
      el("span", { class: "key allow" }, "▮ ✔ allow"), " ", el("span", { class: "key require_approval" }, "▨ ‖ approval required"), " ",
      el("span", { class: "key deny" }, "▩ ✖ deny"));
    const reasons = el("table", { class: "data compact" }, el("thead", {}, el("tr", {}, el("th", { text: "From" }),
      (series.top_reasons || []).map(r => el("th", { class: "num", text: r })))),
      el("tbody", {}, buckets.filter(b => Object.keys(b.reasons || {}).length).map(b =>
        el("tr", {}, el("td", { text: when(b.start) }), (series.top_reasons || []).map(r => el("td", { class: "num", text: b.reasons[r] || 0 }))))));
    return [root, legend, el("h3", { text: "Top reasons over time" }), reasons];
  }

  // Cumulative risk per step with the approval and halt thresholds drawn.
  function riskChart(steps, th) {
    const W = 720, H = 260, L = 48, R = 110, T = 14, B = 34;
    const top = Math.max(0.5, ...steps.map(s => s.cumulative_risk || 0), th ? th.halt * 1.15 : 0);
    const xs = i => L + (W - L - R) * (steps.length <= 1 ? 0.5 : i / (steps.length - 1));
    const ys = v => T + (H - T - B) * (1 - v / top);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "Cumulative risk by step, with approval and halt thresholds" });
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4;
      root.appendChild(svg("line", { x1: L, x2: W - R, y1: ys(v), y2: ys(v), class: "grid" }));
      root.appendChild(svg("text", { x: L - 6, y: ys(v) + 4, class: "axis", "text-anchor": "end" }, v.toFixed(2)));
    }
    if (th) {
      [["approval", th.approval, "threshold approval"], ["halt", th.halt, "threshold halt"]].forEach(([name, v, cls]) => {
        root.appendChild(svg("line", { x1: L, x2: W - R, y1: ys(v), y2: ys(v), class: cls }));
        root.appendChild(svg("text", { x: W - R + 6, y: ys(v) + 4, class: "label " + cls }, `${name} ${v}`));
      });
    }
    if (steps.length) {
      const pts = steps.map((s, i) => `${xs(i)},${ys(s.cumulative_risk || 0)}`).join(" ");
      root.appendChild(svg("polyline", { points: pts, class: "riskline" }));
    }
    const mark = { allow: "✔", deny: "✖", require_approval: "‖" };
    steps.forEach((s, i) => {
      const x = xs(i), y = ys(s.cumulative_risk || 0);
      const c = svg("circle", { cx: x, cy: y, r: 6, class: "pt " + s.decision });
      c.appendChild(svg("title", {}, `step ${s.seq}: ${s.tool} ${s.decision}, cumulative ${fmt(s.cumulative_risk, 3)}`));
      root.appendChild(c);
      root.appendChild(svg("text", { x, y: y - 10, class: "label", "text-anchor": "middle" }, `${mark[s.decision] || "•"} ${fmt(s.cumulative_risk, 2)}`));
      root.appendChild(svg("text", { x, y: H - 12, class: "axis", "text-anchor": "middle" }, `${s.seq}. ${s.tool}`));
    });
    return root;
  }

  // The execution graph: steps left to right in sequence order, the tools
  // they called in a row below, provenance sources in a row above, the run
  // at the left. Labels are SVG text nodes.
  function graphPicture(g) {
    const nodes = g.nodes || [], edges = g.edges || [];
    const byId = new Map(nodes.map(n => [n.id, n]));
    const next = new Map(), hasPrev = new Set();
    edges.filter(e => e.kind === "sequence" && byId.get(e.from) && byId.get(e.from).kind === "step").forEach(e => { next.set(e.from, e.to); hasPrev.add(e.to); });
    let steps = nodes.filter(n => n.kind === "step");
    const ordered = [];
    const seen = new Set();
    steps.filter(s => !hasPrev.has(s.id)).forEach(s => {
      for (let c = s.id; c && !seen.has(c) && byId.get(c) && byId.get(c).kind === "step"; c = next.get(c)) { seen.add(c); ordered.push(byId.get(c)); }
    });
    steps.forEach(s => { if (!seen.has(s.id)) ordered.push(s); });
    steps = ordered;
    const tools = nodes.filter(n => n.kind === "tool"), sources = nodes.filter(n => n.kind === "source"), runs = nodes.filter(n => n.kind === "run");
    const SW = 175, W = Math.max(560, 200 + steps.length * SW, 200 + Math.max(tools.length, sources.length) * SW), H = 330;
    const pos = new Map();
    runs.forEach((n, i) => pos.set(n.id, [85, 165 + i * 40]));
    steps.forEach((n, i) => pos.set(n.id, [260 + i * SW, 165]));
    const rowX = (list, y) => list.forEach((n, i) => pos.set(n.id, [260 + i * SW, y]));
    rowX(tools, 280);
    rowX(sources, 50);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart graph", role: "img", "aria-label": "Execution graph of the run" });
    const defs = svg("defs", {});
    defs.appendChild(svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" })));
    root.appendChild(defs);
    edges.forEach(e => {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) return;
      const line = svg("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: "edge " + e.kind, "marker-end": "url(#arrow)" });
      line.appendChild(svg("title", {}, e.kind));
      root.appendChild(line);
    });
    nodes.forEach(n => {
      const p = pos.get(n.id);
      if (!p) return;
      const w = 155, h = 34;
      const gEl = svg("g", { class: "node " + n.kind, transform: `translate(${p[0] - w / 2},${p[1] - h / 2})` });
      gEl.appendChild(svg("rect", { width: w, height: h, rx: n.kind === "tool" ? 17 : 4 }));
      const icon = { step: "▶", tool: "⚙", source: "⬚", run: "◎" }[n.kind] || "•";
      const label = String(n.label || n.id);
      gEl.appendChild(svg("text", { x: w / 2, y: 21, "text-anchor": "middle" }, icon + " " + (label.length > 21 ? label.slice(0, 20) + "…" : label)));
      gEl.appendChild(svg("title", {}, `${n.kind}: ${label}`));
      root.appendChild(gEl);
    });
    const legend = el("p", { class: "legend" }, "◎ run · ▶ step · ⚙ tool · ⬚ provenance source — edges: ",
      el("span", { class: "key sequence" }, "── sequence"), " ", el("span", { class: "key calls" }, "- - calls"), " ",
      el("span", { class: "key provenance" }, "··· provenance"));
    return [root, legend];
  }

  // ---- pages ----------------------------------------------------------------
  const pages = {};

  pages.overview = function () {
    const sel = $("window");
    const saved = new URLSearchParams(location.search).get("window");
    if (saved) sel.value = saved;
    const load = async () => {
      const o = await api("/v1/overview?window=" + encodeURIComponent(sel.value));
      const k = (label, value, hint, id) => el("div", { class: "kpi", id }, el("span", { class: "kpi-label", text: label }), el("span", { class: "kpi-value", text: value }), el("span", { class: "kpi-hint", text: hint || "" }));
      const d = o.decisions || {};
      const a = o.approvals || {};
      const c = o.containment || {};
      clear($("kpis"));
      append($("kpis"), [
        k("Runs", o.runs, `${o.checks} tool calls`, "kpi-runs"),
        k("Decisions", `✔ ${d.allow || 0} · ✖ ${d.deny || 0} · ‖ ${d.require_approval || 0}`, "allow · deny · approval", "kpi-decisions"),
        k("Avg cumulative risk", fmt(o.avg_cumulative_risk, 3), "per run, highest in window", "kpi-risk"),
        k("Budget violation rate", fmt(100 * o.budget_violation_rate, 2) + " %", `${o.budget_violations} Checks, ${o.runs_with_budget_violation} runs`, "kpi-budget"),
        k("Injection detections", o.injection_detections, "Checks with an injection reason", "kpi-injection"),
        k("Egress detections", o.egress_detections, "secrets, PII, destinations", "kpi-egress"),
        k("Chain escalation", fmt(100 * o.chain_escalation_rate, 1) + " %", `${o.escalated_runs} runs with E > 1`, "kpi-escalation"),
        k("Policy denials", fmt(100 * o.policy_denial_rate, 1) + " %", `${o.policy_denials} Checks`, "kpi-denials"),
        k("Pending approvals", "◷ " + (a.pending || 0), `${a.decided || 0} decided, mean ${secs(a.mean_seconds_to_decision)}, median ${secs(a.median_seconds_to_decision)}`, "kpi-approvals"),
        k("Tool calls policy-enforced", fmt(o.policy_enforced_pct, 2) + " %", "19.3", "kpi-enforced"),
        k("Runs fully traced", fmt(o.runs_fully_traced_pct, 2) + " %", "19.3", "kpi-traced"),
        k("Mean time to containment", secs(c.mean_seconds), `${c.contained || 0} of ${c.risky_runs || 0} risky runs contained`, "kpi-mttc"),
      ]);
      append(clear($("series")), seriesChart(o.series || {}));
      fill($("reasons").tBodies[0], (o.reasons || []).map(r => el("tr", {}, el("td", { class: "mono", text: r.name }), el("td", { class: "num", text: r.count }))), "no Checks in this window", 2);
      fill($("tools").tBodies[0], (o.tools || []).map(t => el("tr", {},
        el("td", {}, el("a", { href: "/runs?" + new URLSearchParams({ tool: t.tool }).toString(), class: "mono" }, t.tool)),
        el("td", { class: "num", text: t.calls }), el("td", { class: "num", text: t.decisions.allow || 0 }),
        el("td", { class: "num", text: t.decisions.deny || 0 }), el("td", { class: "num", text: t.decisions.require_approval || 0 }))), "no tool calls in this window", 5);
      fill($("detectors").tBodies[0], (o.egress_by_detector || []).map(r => el("tr", {}, el("td", { class: "mono", text: r.name }), el("td", { class: "num", text: r.count }))), "no egress findings", 2);
      const defs = clear($("definitions"));
      Object.keys(o.definitions || {}).sort().forEach(key => append(defs, [el("dt", { class: "mono", text: key }), el("dd", { text: o.definitions[key] })]));
      $("updated").textContent = "updated " + new Date(o.generated_at).toLocaleTimeString();
    };
    sel.addEventListener("change", () => { history.replaceState(null, "", "?window=" + encodeURIComponent(sel.value)); load().catch(e => status("⚠ " + e.message, "bad")); });
    poll(load);
  };

  pages.runs = function () {
    const form = $("run-search");
    const q = new URLSearchParams(location.search);
    ["agent", "tool", "decision"].forEach(k => { if (q.get(k)) form.elements[k].value = q.get(k); });
    if (q.get("since")) { const d = new Date(q.get("since")); if (!isNaN(d)) form.elements.since.value = localInput(d); }
    const load = async () => {
      const p = new URLSearchParams();
      const agent = form.elements.agent.value.trim(), tool = form.elements.tool.value.trim(), dec = form.elements.decision.value;
      const since = form.elements.since.value ? new Date(form.elements.since.value).toISOString() : "";
      if (agent) p.set("agent", agent);
      if (dec) p.set("decision", dec);
      if (since) p.set("since", since);
      p.set("limit", "100");
      let data, source;
      if (tool) { p.set("tool", tool); data = await api("/v1/overview/runs?" + p.toString()); source = "searched by tool in the audit log (/v1/overview/runs)"; }
      else { data = await api("/v1/runs?" + p.toString()); source = "from /v1/runs"; }
      fill($("runs").tBodies[0], (data.runs || []).map(r => el("tr", {},
        el("td", {}, runLink(r.agent_id, r.run_id)), el("td", { class: "mono", text: r.agent_id }), el("td", { class: "num", text: r.steps }),
        el("td", {}, decision(r.last_decision)), el("td", { class: "num", text: fmt(r.cumulative_risk, 3) }),
        el("td", { text: when(r.started) }), el("td", { text: when(r.updated) }))), "no runs match", 7);
      $("runs-source").textContent = `${(data.runs || []).length} runs, ${source}`;
    };
    form.addEventListener("submit", ev => {
      ev.preventDefault();
      const p = new URLSearchParams();
      ["agent", "tool", "decision"].forEach(k => { if (form.elements[k].value) p.set(k, form.elements[k].value); });
      if (form.elements.since.value) p.set("since", new Date(form.elements.since.value).toISOString());
      history.replaceState(null, "", "/runs?" + p.toString());
      load().catch(e => status("⚠ " + e.message, "bad"));
    });
    poll(load);
  };

  function localInput(d) {
    const pad = n => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  pages.run = function () {
    const q = new URLSearchParams(location.search);
    const id = q.get("id") || "", agentParam = q.get("agent") || "";
    $("run-id").textContent = id;
    $("run-agent").textContent = agentParam;
    let th = null;
    const load = async () => {
      const tl = await api("/v1/runs/" + encodeURIComponent(id) + "/timeline" + (agentParam ? "?agent=" + encodeURIComponent(agentParam) : ""));
      const agent = tl.agent_id || agentParam;
      $("run-agent").textContent = agent;
      if (!th && agent) { try { th = (await api("/v1/overview/agents/" + encodeURIComponent(agent))).thresholds; } catch (e) { th = null; } }
      let approvals = [];
      try { approvals = ((await api("/v1/approvals")).approvals || []).filter(a => a.run_id === tl.run_id && (!agent || a.agent_id === agent)); } catch (e) { approvals = []; }
      const byDecision = new Map(approvals.map(a => [a.decision_id, a]));
      const steps = tl.steps || [];
      append(clear($("risk-chart")), riskChart(steps, th));
      fill($("timeline").tBodies[0], steps.map(s => {
        const sr = s.step_risk || {};
        const ap = byDecision.get(s.decision_id);
        let apCell = "";
        if (ap) apCell = el("span", {}, decision(ap.status), " ", el("span", { class: "mono", text: ap.id }), ap.decided_by ? el("span", { class: "muted", text: " by " + ap.decided_by }) : "");
        else if (s.decision === "require_approval") apCell = el("span", { class: "muted", text: "approval requested" });
        return el("tr", { id: "step-" + s.seq },
          el("td", { class: "num", text: s.seq }), el("td", { text: when(s.ts) }), el("td", { class: "mono", text: s.tool }),
          el("td", {}, decision(s.decision)), el("td", { class: "mono", text: (s.reasons || []).join(", ") }),
          el("td", { class: "num", text: fmt(sr.r_step, 2) }), el("td", { class: "num", text: fmt(sr.e, 2) }), el("td", { class: "num", text: fmt(sr.t, 2) }),
          el("td", { class: "num", text: fmt(sr.b, 2) }), el("td", { class: "num", text: fmt(sr.step, 3) }), el("td", { class: "num", text: fmt(s.cumulative_risk, 3) }),
          el("td", {}, apCell));
      }), "no steps recorded for this run", 12);
      try {
        const g = await api("/v1/runs/" + encodeURIComponent(id) + "/graph?format=json" + (agentParam ? "&agent=" + encodeURIComponent(agentParam) : ""));
        append(clear($("graph")), graphPicture(g));
      } catch (e) { clear($("graph")).appendChild(el("p", { class: "muted", text: "graph unavailable: " + e.message })); }
    };
    poll(load);
  };

  pages.approvals = function () {
    const renderDetail = (detail) => {
      const rows = [];
      const walk = (prefix, v) => {
        if (v && typeof v === "object" && !Array.isArray(v)) Object.keys(v).sort().forEach(k => walk(prefix ? prefix + "." + k : k, v[k]));
        else rows.push(el("tr", {}, el("th", { class: "mono", text: prefix }), el("td", { class: "mono arg", text: typeof v === "string" ? v : JSON.stringify(v) })));
      };
      walk("", detail);
      return el("table", { class: "data args" }, el("tbody", {}, rows));
    };
    const runSoFar = async (a, into) => {
      try {
        const tl = await api("/v1/runs/" + encodeURIComponent(a.run_id) + "/timeline?agent=" + encodeURIComponent(a.agent_id));
        into.appendChild(el("table", { class: "data compact" }, el("thead", {}, el("tr", {}, ["#", "Tool", "Decision", "Step", "Cumulative"].map(h => el("th", { text: h })))),
          el("tbody", {}, (tl.steps || []).map(s => el("tr", {}, el("td", { class: "num", text: s.seq }), el("td", { class: "mono", text: s.tool }),
            el("td", {}, decision(s.decision)), el("td", { class: "num", text: fmt((s.step_risk || {}).step, 3) }), el("td", { class: "num", text: fmt(s.cumulative_risk, 3) }))))));
      } catch (e) { into.appendChild(el("p", { class: "muted", text: "run timeline unavailable: " + e.message })); }
    };
    // What the audit record says of the held call: risk factors, findings
    // (detector and location, never the value), provenance labels.
    const heldRecord = async (a, into) => {
      const box = el("div", { class: "held-record" });
      into.appendChild(box);
      try {
        const h = await api("/v1/overview/held/" + encodeURIComponent(a.decision_id));
        const sr = h.step_risk || {};
        box.appendChild(el("p", {}, `Step risk R ${fmt(sr.r_step)} × E ${fmt(sr.e)} × T ${fmt(sr.t)} × B ${fmt(sr.b)} = ${fmt(sr.step, 3)}; cumulative ${fmt(h.cumulative_risk, 3)}; controls `,
          el("span", { class: "mono", text: (h.control_ids || []).join(", ") || "–" })));
        const f = h.egress_findings || [];
        box.appendChild(el("h3", { text: f.length ? "Egress findings" : "Egress findings: none" }));
        if (f.length) box.appendChild(el("table", { class: "data compact findings" }, el("thead", {}, el("tr", {}, ["Detector", "Where", "Count"].map(x => el("th", { text: x })))),
          el("tbody", {}, f.map(x => el("tr", {}, el("td", { class: "mono", text: x.detector }), el("td", { class: "mono", text: x.location }), el("td", { class: "num", text: x.count }))))));
        const p = h.context_provenance || [];
        if (p.length) {
          box.appendChild(el("h3", { text: "Context provenance" }));
          box.appendChild(el("ul", {}, p.map(x => el("li", { class: "mono", text: `${x.source_type}: ${x.source_name} (${x.trust_level})` }))));
        }
      } catch (e) { box.appendChild(el("p", { class: "muted", text: "audit record of the held call unavailable: " + e.message })); }
    };
    const decide = async (a, approve, why, card) => {
      try {
        await api(`/v1/approvals/${encodeURIComponent(a.id)}/${approve ? "approve" : "reject"}`, { method: "POST", body: { why } });
        status(`${approve ? "✔ Approved" : "✖ Rejected"} ${a.id}${approve ? " — the agent's retry of this exact call is allowed once." : "."}`, approve ? "ok" : "bad");
        card.remove();
        await load();
      } catch (e) { status("⚠ " + e.message, "bad"); }
    };
    const shown = new Set();
    const load = async () => {
      const all = (await api("/v1/approvals")).approvals || [];
      const pending = all.filter(a => a.status === "pending");
      const queue = $("queue");
      const live = new Set(pending.map(a => a.id));
      [...queue.querySelectorAll(".approval")].forEach(c => { if (!live.has(c.dataset.id)) { c.remove(); shown.delete(c.dataset.id); } });
      if (!pending.length && !queue.querySelector(".approval")) { clear(queue).appendChild(el("p", { class: "card muted", id: "queue-empty", text: "◷ No calls are waiting for a decision." })); }
      else { const e = $("queue-empty"); if (e) e.remove(); }
      for (const a of pending) {
        if (shown.has(a.id)) continue;
        shown.add(a.id);
        const why = el("input", { type: "text", maxlength: 1024, placeholder: "reason (required)", class: "why", "aria-label": "reason for " + a.id });
        const body = el("div", { class: "held" });
        const card = el("article", { class: "card approval", "data-id": a.id },
          el("h2", {}, "‖ ", el("span", { class: "mono", text: a.tool }), " by ", el("span", { class: "mono", text: a.agent_id })),
          el("dl", { class: "defs" },
            el("dt", { text: "Approval" }), el("dd", { class: "mono", text: a.id }),
            el("dt", { text: "Run" }), el("dd", {}, runLink(a.agent_id, a.run_id)),
            el("dt", { text: "Cumulative risk" }), el("dd", { text: fmt(a.risk, 3) }),
            el("dt", { text: "Reasons" }), el("dd", { class: "mono", text: (a.reasons || []).join(", ") }),
            el("dt", { text: "Requested" }), el("dd", { text: when(a.created_at) }),
            el("dt", { text: "Binds" }), el("dd", { class: "mono small", text: a.binding })),
          body);
        heldRecord(a, body);
        if (a.detail && approver) {
          body.appendChild(el("h3", { text: "The call held (argument values; matched secrets masked)" }));
          body.appendChild(renderDetail(a.detail));
          runSoFar(a, body);
        } else if (approver) {
          body.appendChild(el("p", { class: "note", text: "ℹ This approval record carries no argument values (the audit log keeps them sealed). It binds the exact request by digest (above): an approved retry with any other arguments, path or run is refused. Shown: the held call's findings and risk (above) and the run so far (below)." }));
          runSoFar(a, body);
        } else {
          body.appendChild(el("p", { class: "note", text: "ℹ Argument values are shown to approvers only." }));
        }
        if (approver) {
          const ok = el("button", { type: "button", class: "approve", text: "✔ Approve" });
          const no = el("button", { type: "button", class: "reject", text: "✖ Reject" });
          const act = approve => () => {
            if (!why.value.trim()) { status("⚠ Give a reason for the decision.", "bad"); why.focus(); return; }
            ok.disabled = no.disabled = true;
            decide(a, approve, why.value.trim(), card).finally(() => { ok.disabled = no.disabled = false; });
          };
          ok.addEventListener("click", act(true));
          no.addEventListener("click", act(false));
          card.appendChild(el("div", { class: "actions" }, why, ok, no));
        }
        queue.appendChild(card);
      }
      const decided = all.filter(a => a.status !== "pending").slice(0, 50);
      fill($("decided").tBodies[0], decided.map(a => el("tr", {},
        el("td", { class: "mono", text: a.id }), el("td", { class: "mono", text: a.tool }), el("td", { class: "mono", text: a.agent_id }),
        el("td", {}, runLink(a.agent_id, a.run_id)), el("td", {}, decision(a.status)), el("td", { text: a.decided_by || "–" }),
        el("td", { text: a.why || "" }), el("td", { text: a.decided_at ? secs((new Date(a.decided_at) - new Date(a.created_at)) / 1000) : "–" }))), "none yet", 8);
    };
    poll(load);
  };

  pages.policy = function () {
    const load = async () => {
      const s = await api("/v1/policy/status");
      $("policy-version").textContent = s.policy_version || "–";
      $("routes-version").textContent = s.routes_version || "–";
      fill($("history").tBodies[0], (s.history || []).map(h => el("tr", {}, el("td", { text: when(h.ts) }), el("td", { text: h.kind }),
        el("td", { class: "mono", text: h.version }), el("td", { class: "mono", text: h.from || "–" }),
        el("td", { text: h.source === "event" ? "reload event" : "first Check under it" }))), "no versions recorded yet", 5);
    };
    // The candidate bundle: the active bundle's files, with the edits made here.
    const files = {};
    const original = {};
    let current = "";
    const sel = $("replay-file"), text = $("replay-rego");
    const edited = () => Object.keys(files).filter(n => files[n] !== original[n]);
    const showEdited = () => { const e = edited(); $("replay-edited").textContent = e.length ? "edited: " + e.join(", ") : "no edits: the candidate is the active bundle"; };
    const pick = name => { if (current) files[current] = text.value; current = name; sel.value = name; text.value = files[name] || ""; showEdited(); };
    const addOption = name => sel.appendChild(el("option", { value: name, text: name }));
    text.addEventListener("input", () => { files[current] = text.value; showEdited(); });
    sel.addEventListener("change", () => pick(sel.value));
    $("replay-add").addEventListener("click", () => {
      const name = $("replay-new").value.trim();
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}\.rego$/.test(name)) { status("⚠ A module name ends in .rego (letters, digits, _ . -).", "bad"); return; }
      if (!(name in files)) { files[name] = "package aisecops.authz\n\nimport rego.v1\n\n"; original[name] = undefined; addOption(name); }
      pick(name);
    });
    api("/v1/policy/files").then(d => {
      Object.keys(d.files || {}).sort().forEach(n => { files[n] = original[n] = d.files[n]; addOption(n); });
      const first = Object.keys(files).sort()[0];
      if (first) pick(first);
    }).catch(e => status("⚠ policy files: " + e.message, "bad"));
    $("replay-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      if (current) files[current] = text.value;
      const body = { policies: { ...files } };
      if ($("replay-from").value) body.from = new Date($("replay-from").value).toISOString();
      if ($("replay-to").value) body.to = new Date($("replay-to").value).toISOString();
      $("replay-run").disabled = true;
      $("replay-summary").textContent = "replaying…";
      try {
        const r = await api("/v1/replay/diff", { method: "POST", body });
        $("replay-summary").textContent = `${r.changed} of ${r.total} recorded decisions would change${r.changed ? "" : " ✔"}`;
        fill($("replay-changes").tBodies[0], (r.changes || []).map(c => el("tr", {},
          el("td", { class: "mono", text: c.decision_id }), el("td", {}, runLink(c.agent_id, c.run_id)), el("td", { class: "mono", text: c.agent_id }),
          el("td", { class: "mono", text: c.tool }), el("td", {}, decision(c.before)), el("td", {}, decision(c.after)),
          el("td", { class: "mono", text: (c.reasons_before || []).join(", ") }), el("td", { class: "mono", text: (c.reasons_after || []).join(", ") }))), "no decision changes", 8);
      } catch (e) { $("replay-summary").textContent = "⚠ " + e.message; }
      finally { $("replay-run").disabled = false; }
    });
    poll(load);
  };

  pages.evidence = function () {
    const now = new Date();
    $("ev-to-local").value = localInput(new Date(now.getTime() + 60000));
    $("ev-from-local").value = localInput(new Date(now.getTime() - 24 * 3600 * 1000));
    $("evidence-form").addEventListener("submit", () => {
      $("ev-from").value = $("ev-from-local").value ? new Date($("ev-from-local").value).toISOString() : "";
      $("ev-to").value = $("ev-to-local").value ? new Date($("ev-to-local").value).toISOString() : "";
      status("Evidence file requested; your browser saves it.", "ok");
    });
    const load = async () => {
      const m = await api("/v1/maturity");
      $("level").textContent = `Level ${m.level} — ${m.level_name}`;
      $("coverage").textContent = `Control coverage ${fmt(m.coverage_pct, 1)} % · evaluated ${when(m.evaluated_at)} over records since ${when(m.from)}`;
      const mark = ok => el("span", { class: "tag " + (ok ? "ok" : "bad") }, ok ? "✔ met" : "✖ unmet");
      fill($("controls").tBodies[0], (m.controls || []).map(c => el("tr", {}, el("td", { class: "mono", text: c.id }), el("td", { text: c.objective }),
        el("td", { text: c.layer }), el("td", {}, mark(c.met)), el("td", { class: "num", text: c.records }), el("td", { text: c.why }))), "", 6);
      fill($("criteria").tBodies[0], (m.criteria || []).map(c => el("tr", {}, el("td", { class: "num", text: c.level }), el("td", { text: c.text }),
        el("td", {}, mark(c.met)), el("td", { text: c.why }))), "", 4);
      const gaps = clear($("gaps"));
      (m.gaps || []).forEach(g => gaps.appendChild(el("li", { text: g })));
      if (!(m.gaps || []).length) gaps.appendChild(el("li", { text: "none" }));
    };
    poll(load);
  };

  if (pages[page]) pages[page]();
  if (page !== "signin") poll(pendingBadge);
})();
