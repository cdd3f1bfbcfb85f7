// gpulse fleet page: renders the state the collector embedded in the page, then
// applies the deltas its event stream pushes (docs/fleet-page.md). Plain JavaScript,
// no framework, nothing fetched from elsewhere.
"use strict";
(function () {
  // Filters the URL may carry. A namespace filter joins them once GPUs carry pods:
  // each filter is a tile dimension, so it is one more entry here.
  const FILTERS = ["provider", "region", "model", "host", "namespace", "state"];
  const STATES = ["down", "lost", "erroring", "throttled", "busy", "idle", "unknown"];
  const REASONS = { thermal: "thermal", hardware_slowdown: "hardware slowdown", power: "power", clocks: "clocks" };
  const GLYPH = { critical: "!!", warning: "!", info: "i" };
  // No event for this long (the collector sends one every second) means it is gone.
  const STALE_AFTER_MS = 5000;
  const KEPT_CHANGES = 100;
  const KEPT_LOG = 50;

  const hosts = new Map(); // agent id -> host entry (tiles in .gpus)
  const tileEls = new Map(); // "id/gpu" -> tile element
  let summary = null;
  let lastEventAt = Date.now();
  let lastSeq = 0;
  let detailTimer = null;

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  function params() {
    const q = new URLSearchParams(location.search);
    const f = {};
    for (const k of FILTERS) {
      const v = q.get(k);
      if (v) f[k] = v.split(",");
    }
    return f;
  }

  function setParam(key, value) {
    const q = new URLSearchParams(location.search);
    if (value) q.set(key, value); else q.delete(key);
    const s = q.toString();
    history.pushState(null, "", location.pathname + (s ? "?" + s : ""));
    renderAll();
  }

  function dims(host, tile) {
    // A GPU shared by pods of several namespaces matches each of them; "" is unheld.
    const namespaces = tile.namespaces && tile.namespaces.length ? tile.namespaces : [""];
    return { provider: host.provider, region: host.region, model: tile.model, host: host.host, namespace: namespaces, state: tile.state };
  }

  function matches(host, tile, f) {
    const d = dims(host, tile);
    for (const k in f) {
      const v = Array.isArray(d[k]) ? d[k] : [d[k]];
      if (!v.some((x) => f[k].includes(x))) return false;
    }
    return true;
  }

  function label(host, tile) {
    let s = host.host + " GPU " + tile.gpu + " (" + tile.model + "): " + tile.state;
    if (tile.reason) s += " (" + REASONS[tile.reason] + ")";
    if (tile.util !== undefined) s += ", about " + tile.util + "% utilised";
    if (tile.namespaces && tile.namespaces.length) s += ", held in namespace " + tile.namespaces.join(", ");
    if (tile.severity) s += "; worst finding " + tile.severity + ": " + tile.finding.replace(/_/g, " ");
    return s;
  }

  function paintTile(b, host, tile) {
    b.dataset.state = tile.state;
    if (tile.reason) b.dataset.reason = tile.reason; else delete b.dataset.reason;
    if (tile.severity) b.dataset.severity = tile.severity; else delete b.dataset.severity;
    b.textContent = tile.severity ? GLYPH[tile.severity] : "";
    const l = label(host, tile);
    b.title = l;
    b.setAttribute("aria-label", l);
  }

  function tileButton(host, tile) {
    const b = el("button", { class: "tile", type: "button", "data-host": host.host, "data-gpu": String(tile.gpu) });
    paintTile(b, host, tile);
    b.addEventListener("click", () => setParam("host", host.host));
    return b;
  }

  function figure(value, what) {
    const d = el("div", { class: "figure" });
    d.append(el("b", {}, value), el("span", {}, what));
    return d;
  }

  function renderSummary(shown) {
    const s = summary;
    const box = $("summary");
    box.replaceChildren();
    if (!s) return;
    const t = s.throttled_by_reason;
    box.append(
      figure(String(s.gpus), shown === s.gpus ? "GPUs" : "GPUs (" + shown + " shown)"),
      figure(s.busy_share === null || s.busy_share === undefined ? "n/a" : Math.round(s.busy_share * 100) + "%", "busy"),
      figure(String(s.states.throttled), "throttled: thermal " + t.thermal + ", power " + t.power +
        ", hw slowdown " + t.hardware_slowdown + ", clocks " + t.clocks),
      figure(String(s.states.lost), "lost"),
      figure(String(s.states.erroring), "erroring"),
      figure(s.hosts_down + " / " + s.hosts, "hosts with agent down"),
      figure("$" + s.usd_per_hour.toFixed(2) + "/h", s.unpriced_gpus ? "spend now (+" + s.unpriced_gpus + " unpriced GPUs)" : "spend now (list price)"),
    );
    box.querySelector(".figure:nth-child(3)").id = "throttled-figure";
  }

  function renderFilters(f) {
    const nav = $("filters");
    nav.replaceChildren();
    const values = { provider: new Set(), region: new Set(), model: new Set(), host: new Set(), namespace: new Set(), state: new Set(STATES) };
    for (const h of hosts.values()) {
      values.provider.add(h.provider); values.region.add(h.region); values.host.add(h.host);
      for (const t of h.gpus) {
        values.model.add(t.model);
        for (const n of t.namespaces || []) values.namespace.add(n);
      }
    }
    for (const k of FILTERS) {
      const id = "filter-" + k;
      const sel = el("select", { id: id, name: k });
      sel.append(el("option", { value: "" }, "all"));
      for (const v of [...values[k]].sort()) {
        const o = el("option", { value: v }, v || "(none)");
        // The attribute, not only the property: the URL's view is in the markup.
        if (f[k] && f[k].length === 1 && f[k][0] === v) o.setAttribute("selected", "");
        sel.append(o);
      }
      sel.addEventListener("change", () => setParam(k, sel.value));
      nav.append(el("label", { for: id }, k), sel);
    }
    const bad = (f.state || []).filter((s) => !STATES.includes(s));
    const err = $("filter-error");
    err.hidden = bad.length === 0;
    err.textContent = bad.length ? "state=" + bad.join(",") + " is not a state; known: " + STATES.join(", ") : "";
  }

  function renderLegend() {
    const box = $("legend");
    if (box.childElementCount) return;
    const items = [["busy"], ["idle"], ["throttled", "thermal"], ["throttled", "power"], ["throttled", "hardware_slowdown"],
      ["throttled", "clocks"], ["lost"], ["erroring"], ["down"], ["unknown"]];
    for (const [state, reason] of items) {
      const sw = el("span", { class: "tile", "data-state": state, "aria-hidden": "true" });
      if (reason) sw.dataset.reason = reason;
      const item = el("span", { class: "legend-item" });
      item.append(sw, el("span", {}, reason ? "throttled: " + REASONS[reason] : state === "down" ? "agent down" : state));
      box.append(item);
    }
    box.append(el("span", { class: "legend-item" }, "!! critical · ! warning · i info finding"));
  }

  function renderAll() {
    const f = params();
    renderFilters(f);
    renderLegend();
    tileEls.clear();
    const main = $("fleet");
    const frag = document.createDocumentFragment();
    const byProvider = new Map();
    const sorted = [...hosts.values()].sort((a, b) =>
      a.provider.localeCompare(b.provider) || a.host.localeCompare(b.host) || a.id.localeCompare(b.id));
    for (const h of sorted) {
      if (!byProvider.has(h.provider)) byProvider.set(h.provider, []);
      byProvider.get(h.provider).push(h);
    }
    let shown = 0;
    for (const [provider, list] of byProvider) {
      const sec = el("section", { class: "provider", "data-provider": provider });
      sec.append(el("h2", {}, provider || "(no provider)"));
      const wrap = el("div", { class: "hosts" });
      for (const h of list) {
        const visible = h.gpus.filter((t) => matches(h, t, f));
        if (!visible.length) continue;
        const box = el("div", { class: "host", "data-host": h.host, "data-connected": String(h.connected) });
        const name = el("button", { class: "host-name", type: "button" });
        name.append(el("h3", {}, h.host), el("small", {}, " " + (h.instance_type || "") + (h.connected ? "" : " · agent down")));
        name.addEventListener("click", () => setParam("host", h.host));
        const grid = el("div", { class: "tiles" });
        for (const t of visible) {
          const b = tileButton(h, t);
          tileEls.set(h.id + "/" + t.gpu, b);
          grid.append(b);
          shown++;
        }
        box.append(name, grid);
        wrap.append(box);
      }
      if (wrap.childElementCount) { sec.append(wrap); frag.append(sec); }
    }
    main.replaceChildren(frag);
    renderSummary(shown);
    renderHost(f.host && f.host.length === 1 ? f.host[0] : null);
  }

  function log(kind, seq, text) {
    const ol = $("event-log");
    ol.append(el("li", { "data-kind": kind, "data-seq": String(seq) }, text));
    while (ol.childElementCount > KEPT_LOG) ol.firstElementChild.remove();
  }

  function noteChange(host, was, now) {
    const ol = $("changes");
    if (!ol) return;
    const what = (t) => t.state + (t.reason ? " (" + REASONS[t.reason] + ")" : "");
    const li = el("li", { "data-host": host.host, "data-gpu": String(now.gpu), "data-state": now.state },
      new Date().toLocaleTimeString() + " " + host.host + " GPU " + now.gpu + ": " + what(was) + " → " + what(now));
    ol.prepend(li);
    while (ol.childElementCount > KEPT_CHANGES) ol.lastElementChild.remove();
  }

  function live(text, state) {
    const s = $("status");
    s.dataset.live = state;
    s.textContent = text;
  }

  function applyFull(msg) {
    hosts.clear();
    for (const h of msg.hosts) hosts.set(h.id, h);
    summary = msg.summary;
    lastSeq = msg.seq;
    const t0 = performance.now();
    renderAll();
    // How long drawing the whole fleet took, for docs/benchmarks.md.
    $("fleet").dataset.renderMs = (performance.now() - t0).toFixed(1);
  }

  function applyDelta(msg) {
    const t0 = performance.now();
    summary = msg.summary;
    lastSeq = msg.seq;
    const f = params();
    let rerender = false;
    let touched = false;
    const openHost = f.host && f.host.length === 1 ? f.host[0] : null;
    for (const id of msg.gone || []) { hosts.delete(id); rerender = true; }
    for (const h of msg.hosts || []) { hosts.set(h.id, h); rerender = true; if (h.host === openHost) touched = true; }
    for (const c of msg.gpus || []) {
      const h = hosts.get(c.host);
      if (!h) continue;
      const i = h.gpus.findIndex((t) => t.gpu === c.tile.gpu);
      if (i < 0) continue;
      const was = h.gpus[i];
      h.gpus[i] = c.tile;
      if (was.state !== c.tile.state || was.reason !== c.tile.reason) noteChange(h, was, c.tile);
      if (h.host === openHost) touched = true;
      const b = tileEls.get(c.host + "/" + c.tile.gpu);
      // A tile that enters or leaves the filter changes the layout: draw it all again.
      if (!b || !matches(h, c.tile, f)) { rerender = rerender || (b !== undefined) || matches(h, c.tile, f); continue; }
      paintTile(b, h, c.tile);
    }
    if (rerender) renderAll(); else renderSummary(tileEls.size);
    if (touched && !rerender) refreshHostSoon();
    $("fleet").dataset.deltaMs = (performance.now() - t0).toFixed(1);
    const n = (msg.gpus || []).length;
    log("delta", msg.seq, "delta " + msg.seq + ": " + n + " tiles, " + (msg.hosts || []).length + " hosts, " +
      (msg.gone || []).length + " gone" + (msg.gpus || []).map((c) => " " + c.host + "/" + c.tile.gpu + "=" + c.tile.state).join(""));
  }

  // ---- host view ----

  function spark(title, values, limit, max, unit) {
    const w = 160, h = 36;
    const box = el("span", { class: "spark" });
    const nums = values.filter((v) => v !== null && v !== undefined);
    const top = Math.max(max || 0, limit || 0, ...nums, 1);
    const last = nums.length ? nums[nums.length - 1] : null;
    const caption = title + ": " + (last === null ? "not read" : (Math.round(last * 10) / 10) + unit) +
      (limit ? " of " + Math.round(limit) + unit : "");
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("role", "img"); svg.setAttribute("aria-label", caption);
    const y = (v) => (h - 2 - (v / top) * (h - 4)).toFixed(1);
    const step = values.length > 1 ? (w - 4) / (values.length - 1) : 0;
    const pts = [];
    values.forEach((v, i) => { if (v !== null && v !== undefined) pts.push((2 + i * step).toFixed(1) + "," + y(v)); });
    if (limit) {
      const ln = document.createElementNS("http://www.w3.org/2000/svg", "line");
      ln.setAttribute("x1", 0); ln.setAttribute("x2", w); ln.setAttribute("y1", y(limit)); ln.setAttribute("y2", y(limit));
      svg.append(ln);
    }
    const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    pl.setAttribute("points", pts.length === 1 ? pts[0] + " " + (w - 2) + "," + pts[0].split(",")[1] : pts.join(" "));
    svg.append(pl);
    box.append(el("span", {}, caption), svg);
    return box;
  }

  function sourced(s) {
    const td = el("td", {}, s.value || "unknown");
    td.append(el("span", { class: "source" }, " (" + s.source + ")"));
    return td;
  }

  function drawHost(d) {
    const box = $("host");
    box.replaceChildren();
    box.hidden = false;
    const head = el("div", { class: "host-head" });
    const close = el("button", { type: "button", id: "close-host" }, "back to the fleet");
    close.addEventListener("click", () => setParam("host", ""));
    head.append(el("h2", { id: "host-title" }, d.host + (d.connected ? "" : " (agent down)")), close);
    const t = el("table", { id: "identity" });
    for (const [k, v] of [["provider", d.provider], ["region", d.region], ["zone", d.zone], ["instance type", d.instance_type]]) {
      const tr = el("tr"); tr.append(el("th", {}, k), sourced(v)); t.append(tr);
    }
    for (const [k, v] of [["agent", d.id + " " + d.agent_version], ["os", d.os + " " + d.kernel],
      ["fields not exposed", d.hidden_fields.length ? d.hidden_fields.join(", ") : "none"]]) {
      const tr = el("tr"); tr.append(el("th", {}, k), el("td", { "data-field": k }, v)); t.append(tr);
    }
    box.append(head, t);
    const fs = el("section", { id: "host-findings" });
    fs.append(el("h2", {}, "Findings (" + d.findings.length + ")"));
    if (!d.findings.length) fs.append(el("p", {}, "Nothing slows this host's GPUs down in the readings kept."));
    for (const f of d.findings) {
      const div = el("div", { class: "finding", "data-severity": f.severity, "data-kind": f.kind });
      div.append(el("strong", {}, f.severity + " · GPU " + f.gpu + " · " + f.summary));
      const ul = el("ul");
      for (const e of f.evidence) ul.append(el("li", {}, e));
      div.append(ul, el("div", {}, "What to do: " + f.action));
      fs.append(div);
    }
    box.append(fs);
    const gs = el("section", { id: "host-gpus" });
    gs.append(el("h2", {}, "GPUs over the readings kept (" + (d.gpus[0] ? d.gpus[0].series.unix_ms.length : 0) + ")"));
    for (const g of d.gpus) {
      const row = el("div", { class: "gpu-row", "data-gpu": String(g.gpu) });
      const b = el("span", { class: "tile", role: "img" });
      paintTile(b, d, g.tile);
      const lim = (l) => (l ? l.value : null);
      row.append(b, el("span", {}, "GPU " + g.gpu + " " + g.model),
        spark("SM clock", g.series.sm_clock_mhz, lim(g.max_sm_clock_mhz), 0, " MHz"),
        spark("temperature", g.series.temperature_celsius, lim(g.slowdown_celsius), 0, " °C"),
        spark("power", g.series.power_watts, lim(g.power_limit_watts), 0, " W"),
        spark("utilisation", g.series.utilization_percent, null, 100, "%"));
      const src = [];
      if (g.max_sm_clock_mhz) src.push("max clock: " + g.max_sm_clock_mhz.source);
      if (g.slowdown_celsius) src.push("slowdown: " + g.slowdown_celsius.source);
      if (g.power_limit_watts) src.push("power limit: " + g.power_limit_watts.source);
      row.append(el("span", { class: "source" }, src.join(" · ")));
      gs.append(row);
    }
    box.append(gs);
  }

  let shownHost = null;
  // The host view the page was served with (?host=), drawn without a round trip.
  let preloaded = JSON.parse($("initial-host").textContent);
  function renderHost(name) {
    const box = $("host");
    if (!name) { box.hidden = true; box.replaceChildren(); shownHost = null; return; }
    if (preloaded && preloaded.host === name) { shownHost = name; drawHost(preloaded); preloaded = null; return; }
    if (shownHost !== name) { box.hidden = false; box.replaceChildren(el("p", {}, "loading " + name)); }
    shownHost = name;
    fetch("/api/v1/fleet/host?host=" + encodeURIComponent(name), { credentials: "same-origin" })
      .then((r) => r.json().then((j) => ({ ok: r.ok, j: j })))
      .then(({ ok, j }) => {
        if (shownHost !== name) return;
        if (!ok) { box.replaceChildren(el("p", { role: "alert" }, j.error || "cannot load the host")); return; }
        drawHost(j);
      })
      .catch(() => { if (shownHost === name) live("cannot reach the collector for " + name, "stale"); });
  }

  function refreshHostSoon() {
    if (detailTimer) return;
    detailTimer = setTimeout(() => { detailTimer = null; if (shownHost) renderHost(shownHost); }, 1000);
  }

  // ---- the stream ----

  function connect(afterId) {
    const es = new EventSource("/fleet/events" + (afterId ? "?after=" + encodeURIComponent(afterId) : ""));
    const seen = (e) => {
      lastEventAt = Date.now();
      live("live · updated " + new Date().toLocaleTimeString(), "live");
      return JSON.parse(e.data);
    };
    es.addEventListener("full", (e) => { const m = seen(e); applyFull(m); log("full", m.seq, "full " + m.seq); });
    es.addEventListener("delta", (e) => applyDelta(seen(e)));
    es.addEventListener("error", () => {
      // EventSource retries by itself; until it succeeds, the last state stays shown.
      live("collector unreachable since " + new Date(lastEventAt).toLocaleTimeString() +
        ": showing the last state, reconnecting", "stale");
      if (es.readyState === EventSource.CLOSED) setTimeout(() => connect(null), 5000);
    });
  }

  setInterval(() => {
    if (Date.now() - lastEventAt > STALE_AFTER_MS && $("status").dataset.live === "live") {
      live("no update since " + new Date(lastEventAt).toLocaleTimeString() + ": showing the last state", "stale");
    }
  }, 1000);

  window.addEventListener("popstate", renderAll);

  const initial = $("initial-state");
  const changes = el("ol", { id: "changes", "aria-label": "recent state changes" });
  const ch = el("section", { id: "recent" });
  ch.append(el("h2", {}, "Changes since this page opened"), changes);
  document.body.insertBefore(ch, $("event-log"));
  const first = JSON.parse(initial.textContent);
  applyFull(first);
  log("full", first.seq, "full " + first.seq + " (page)");
  live("live · updated " + new Date().toLocaleTimeString(), "live");
  connect(initial.dataset.eventId);
})();
