// The OpenGrid dashboard (opengrid/node/dashboard.py): polls /dashboard/state and draws it.
// Everything from the network is written with textContent, never as HTML: a model named "<script>"
// shows as those characters. No library, no build step; the page's CSP allows only this origin.
"use strict";

(() => {
  const KEY_ITEM = "opengrid-dashboard-key";
  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY_ITEM) || "";
  let pollMs = 1000;
  let timer = 0; // the one pending poll: a poll started early (the key form) replaces it

  const short = (peer) => (peer && peer.length > 16 ? peer.slice(0, 4) + "…" + peer.slice(-8) : peer || "–");
  const show = (value) => (value === null || value === undefined || value === "" ? "–" : String(value));
  const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–");

  function set(id, value) {
    $(id).textContent = show(value);
  }

  // One table cell; ``title`` (the whole value) is set as a property, so it is text too.
  function cell(row, value, { cls = "", title = "" } = {}) {
    const td = document.createElement("td");
    td.textContent = show(value);
    if (cls) td.className = cls;
    if (title) td.title = title;
    row.appendChild(td);
  }

  function rows(id, items, draw, empty) {
    const body = $(id);
    const made = items.map((item) => {
      const tr = document.createElement("tr");
      draw(tr, item);
      return tr;
    });
    if (made.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = body.parentElement.querySelectorAll("th").length;
      td.className = "empty";
      td.textContent = empty;
      tr.appendChild(td);
      made.push(tr);
    }
    body.replaceChildren(...made);
  }

  function peer(tr, id, extra = {}) {
    cell(tr, short(id), { cls: "mono", title: id, ...extra });
  }

  function drawChart(counts) {
    const chart = $("chart");
    const most = Math.max(1, ...counts);
    const bars = counts.map((n, i) => {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.height = `${Math.round((n / most) * 100)}%`; // CSSOM: allowed by the CSP, unlike style=""
      bar.title = `${n} job(s), ${counts.length - 1 - i} minute(s) ago`;
      const label = document.createElement("span");
      label.textContent = n ? String(n) : "";
      bar.appendChild(label);
      return bar;
    });
    chart.replaceChildren(...bars);
  }

  function drawGrid(s) {
    set("workers-online", s.workers_online);
    set("workers-total", s.workers_total);
    const jobs = s.jobs;
    set("jobs-minute", jobs.last_minute);
    set("jobs-answered", jobs.answered);
    set("jobs-failed", jobs.failed);
    set("jobs-running", jobs.running);
    $("latency").textContent =
      jobs.latency_p50_ms === null ? "–" : `${Math.round(jobs.latency_p50_ms)} / ${Math.round(jobs.latency_p95_ms)} ms`;
    set("minted", s.minted);
    set("accounts", s.accounts);
    set("entries", s.node.ledger_entries);
    drawChart(jobs.per_minute);
    rows("workers", s.workers, (tr, w) => {
      tr.className = w.online ? "online" : "offline";
      peer(tr, w.peer_id);
      cell(tr, w.online ? "online" : "offline", { cls: "state" });
      cell(tr, w.tier);
      cell(tr, w.models.join(", "), { cls: "model" });
      cell(tr, w.rtt_ms, { cls: "num" });
      cell(tr, w.tokens_per_s, { cls: "num" });
      cell(tr, w.valid, { cls: "num" });
      cell(tr, w.invalid, { cls: "num" });
      cell(tr, w.timeouts, { cls: "num" });
      cell(tr, w.jobs_done, { cls: "num" });
      cell(tr, w.points, { cls: "num" });
    }, "no worker has registered yet");
    rows("receipts", s.receipts, (tr, r) => {
      cell(tr, clock(r.issued_at_ms));
      cell(tr, r.job_id.slice(0, 8), { cls: "mono", title: r.job_id });
      cell(tr, r.model, { cls: "model" });
      cell(tr, r.tokens, { cls: "num" });
      cell(tr, r.points, { cls: "num" });
      cell(tr, r.workers.map(short).join(", "), { cls: "mono", title: r.workers.join("\n") });
    }, "no receipt yet: run a job");
    rows("transfers", s.transfers, (tr, t) => {
      peer(tr, t.from);
      peer(tr, t.to);
      cell(tr, t.points, { cls: "num" });
      cell(tr, t.memo, { cls: "memo" });
    }, "no transfer yet");
    rows("balances", s.balances, (tr, b) => {
      peer(tr, b.account, { title: `${b.account}\n${b.key}` });
      cell(tr, b.points, { cls: "num" });
      cell(tr, b.held, { cls: "num" });
    }, "no points yet");
  }

  function drawWorker(s) {
    const w = s.worker;
    set("w-role", s.node.role);
    set("w-models", w.models.join(", "));
    set("w-tier", w.tier);
    set("w-speed", w.tokens_per_s ? `${w.tokens_per_s} tokens/s` : "");
    set("w-coordinator", w.coordinator || "not registered yet");
    set("w-jobs", w.jobs_done);
    set("w-points", s.node.points);
  }

  function draw(s) {
    set("role", s.node.role);
    set("peer-id", s.node.peer_id);
    set("network", s.node.network);
    set("version", s.node.version);
    document.title = `OpenGrid ${s.node.role} ${short(s.node.peer_id)}`;
    $("grid-view").hidden = !s.node.coordinates;
    $("worker-view").hidden = s.node.coordinates;
    if (s.node.coordinates) drawGrid(s);
    else drawWorker(s);
    $("status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    $("status").className = "status live";
  }

  function trouble(text) {
    $("status").textContent = text;
    $("status").className = "status trouble";
  }

  async function poll() {
    try {
      const headers = key ? { Authorization: `Bearer ${key}` } : {};
      const reply = await fetch("/dashboard/state", { headers, cache: "no-store" });
      if (reply.status === 401) {
        $("key-form").hidden = false;
        trouble(key ? "that key was refused; enter this node's --api-key" : "this node's API needs its key");
      } else if (!reply.ok) {
        trouble(`the node answered HTTP ${reply.status}; retrying`);
      } else {
        $("key-form").hidden = true;
        const state = await reply.json();
        pollMs = Math.max(250, Number(state.poll_ms) || 1000);
        draw(state);
      }
    } catch (error) {
      trouble(`cannot reach the node (${error.message}); retrying`);
    }
    clearTimeout(timer);
    timer = setTimeout(poll, pollMs);
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key = $("key").value;
    sessionStorage.setItem(KEY_ITEM, key);
    poll();
  });
  poll();
})();
