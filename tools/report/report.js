/* heapprof report: the browser side of `heapprof report` (tools/report.py).
 *
 * The data block holds aggregates only: the down-sampled live-heap timeline, and for a
 * bounded set of moments ("steps", plus the exact peak) the live bytes of each top stack
 * and of everything else ("other"). Every view here is derived from those arrays, so
 * the page stays responsive however many allocations the session recorded.
 *
 * The time plot is uPlot (vendored, tools/vendor/README.md). The flame graph is drawn by
 * hand on a canvas: see docs/report.md for why. Nothing here touches the network. */
(function () {
  "use strict";

  const D = JSON.parse(document.getElementById("hp-data").textContent);
  const FR = D.frames;             // [function, filename, lineno] by index
  // {f: [frame idx root..leaf], v: [bytes per step], p: bytes at peak}; a stack may come as
  // r: [bytes, repeat, ...] instead of v (tools/report.py, _packed).
  const STACKS = D.stacks;
  for (const s of STACKS) {
    if (s.v) continue;
    s.v = [];
    for (let k = 0; k < s.r.length; k += 2) for (let n = 0; n < s.r[k + 1]; n++) s.v.push(s.r[k]);
  }
  const OTHER = -1;                // pseudo frame: smaller stacks, folded under their callers
  const OTHER_LABEL = "[other stacks]";

  // ------------------------------------------------------------ formatting
  function fmtBytes(b) {
    const neg = b < 0, a = Math.abs(b);
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = a;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    const s = i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0);
    return (neg ? "-" : "") + s + " " + u[i];
  }
  function fmtSecs(s) {
    if (s == null) return "?";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    if (s < 120) return s.toFixed(s < 10 ? 3 : 2) + " s";
    const m = Math.floor(s / 60);
    return m + " min " + (s - m * 60).toFixed(0) + " s";
  }
  function pct(part, whole) {
    return whole > 0 ? (100 * part / whole).toFixed(1) + "%" : "-";
  }
  function frameName(fi) { return fi === OTHER ? OTHER_LABEL : FR[fi][0]; }
  function frameLoc(fi) {
    if (fi === OTHER) return "smaller stacks folded under their deepest shown caller";
    const f = FR[fi];
    return f[2] ? f[1] + ":" + f[2] : f[1];
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }

  // ------------------------------------------------------------ moments
  // A moment is a uniform step or the peak; valueOf() hides the difference.
  const moments = D.steps.t.map((t, i) => ({ t: t, kind: "step", i: i }));
  if (D.peak) moments.push({ t: D.peak.t, kind: "peak" });
  moments.sort((a, b) => a.t - b.t || (a.kind === "peak" ? -1 : 1));
  function valueOf(stack, m) { return m.kind === "peak" ? stack.p : stack.v[m.i]; }
  function otherAt(m) { return m.kind === "peak" ? D.peak.other : D.steps.other[m.i]; }
  function totalAt(m) { return m.kind === "peak" ? D.peak.stack_bytes : D.steps.total[m.i]; }
  function nearestMoment(t) {
    let best = moments[0], bd = Infinity;
    for (const m of moments) {
      const d = Math.abs(m.t - t);
      if (d < bd) { bd = d; best = m; }
    }
    return best;
  }
  function momentLabel(m) {
    return "t = " + fmtSecs(m.t) + (m.kind === "peak" ? " (peak)" : "");
  }

  const state = { moment: null, range: null, zoomPath: [], search: "" };

  // ------------------------------------------------------------ header, facts, warnings
  const S = D.session;
  document.getElementById("cmdline").textContent = "$ " + (S.argv.length ? S.argv.join(" ") : S.executable);
  const summary = document.getElementById("summary");
  summary.innerHTML = "";
  [["session", S.id], ["pid", S.pid], ["Python", S.python_version], ["duration", fmtSecs(S.duration_s)],
   ["peak", D.peak ? fmtBytes(D.peak.bytes) + fmtMargin(D.peak.se) + " at " + fmtSecs(D.peak.t) : "-"],
   ["sampled allocations", S.allocations.toLocaleString("en")]].forEach(([k, v], n) => {
    if (n) summary.appendChild(document.createTextNode(" \u00b7 "));
    summary.appendChild(document.createTextNode(k + " "));
    summary.appendChild(el("b", null, String(v)));
  });
  const warnBox = document.getElementById("warnings");
  D.warnings.forEach(w => warnBox.appendChild(el("div", { class: "warning" }, "\u26a0 " + w)));

  function samplingText() {
    const n = S.sample_interval_bytes;
    if (n === 1) return "every allocation";
    if (n === 0) {
      if (!S.sample_buckets) return "by size buckets";
      return "by size buckets: " + S.sample_buckets.map(b =>
        (b[0] == null ? "larger" : "\u2264 " + fmtBytes(b[0])) + ": rate " + b[1]).join(", ");
    }
    return "one sample per " + fmtBytes(n) + " allocated (on average)";
  }
  const facts = document.getElementById("facts");
  [["Command line", S.argv.join(" ")], ["Executable", S.executable], ["pid / parent pid", S.pid + " / " + S.ppid],
   ["Python version", S.python_version], ["Started", S.started], ["Ended", S.ended || "(not recorded)"],
   ["Duration", fmtSecs(S.duration_s)], ["Status", S.status + (S.error ? ": " + S.error : "")],
   ["Sampling", samplingText()], ["Stack depth kept", S.max_stack_depth == null ? "?" : S.max_stack_depth + " frames"],
   ["Events received", S.events_received.toLocaleString("en")],
   ["Events dropped", S.events_dropped.toLocaleString("en") +
     (S.events_dropped > 0 ? " \u2014 figures are incomplete" : "")],
   ["Sampled allocations", S.allocations.toLocaleString("en")],
   ["Database", D.db], ["Report written", D.generated],
   ["Kept in this file", D.limits.steps + " moments \u00d7 " + D.fold.kept.toLocaleString("en") +
     " stacks kept whole" + (D.fold.folded_stacks ? "; " + D.fold.folded_stacks.toLocaleString("en") +
     " smaller stacks folded into \u201c" + OTHER_LABEL + "\u201d under their callers, holding at most " +
     (100 * D.fold.max_share).toFixed(1) + "% of the live heap at any kept moment (" +
     (100 * D.fold.peak_share).toFixed(1) + "% at the peak)" : "") + "; timeline of " +
     D.timeline.t.length + " points from " +
     (D.timeline.source === "timeline" ? "the recorded timeline" : "the allocation events")]
  ].forEach(([k, v]) => { facts.appendChild(el("dt", null, k)); facts.appendChild(el("dd", null, String(v))); });
  document.getElementById("footer").textContent =
    "heapprof report \u00b7 written " + D.generated + " \u00b7 estimated bytes scale each sample by the sampling rate.";

  // ------------------------------------------------------------ tabs
  const tabs = document.querySelectorAll("nav#tabs button");
  function showTab(name) {
    tabs.forEach(b => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".tab").forEach(s => s.classList.toggle("active", s.id === "tab-" + name));
    if (name === "flame") drawFlame();
  }
  tabs.forEach(b => b.addEventListener("click", () => showTab(b.dataset.tab)));

  // ------------------------------------------------------------ time plot (uPlot)
  const plotEl = document.getElementById("timeline");
  let plot = null;
  function plotWidth() { return Math.max(300, plotEl.clientWidth || document.body.clientWidth - 40); }

  function drawMarks(u) {
    const ctx = u.ctx, bb = u.bbox, dpr = devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath(); ctx.rect(bb.left, bb.top, bb.width, bb.height); ctx.clip();
    if (state.range) {
      const a = u.valToPos(state.range[0].t, "x", true), b = u.valToPos(state.range[1].t, "x", true);
      ctx.fillStyle = "rgba(37,99,235,0.12)";
      ctx.fillRect(a, bb.top, b - a, bb.height);
      ctx.strokeStyle = "rgba(37,99,235,0.8)"; ctx.lineWidth = dpr;
      [a, b].forEach(x => { ctx.beginPath(); ctx.moveTo(x, bb.top); ctx.lineTo(x, bb.top + bb.height); ctx.stroke(); });
    } else if (state.moment) {
      const x = u.valToPos(state.moment.t, "x", true);
      ctx.strokeStyle = "#2563eb"; ctx.lineWidth = 2 * dpr;
      ctx.beginPath(); ctx.moveTo(x, bb.top); ctx.lineTo(x, bb.top + bb.height); ctx.stroke();
    }
    ctx.restore();
    // Markers the program set (heapprof.mark): dashed gray lines, labels along them.
    (D.markers || []).forEach(m => {
      if (m.t < 0 || m.t > X_MAX) return;
      const x = u.valToPos(m.t, "x", true);
      ctx.save();
      ctx.strokeStyle = "#555"; ctx.fillStyle = "#555"; ctx.lineWidth = dpr;
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.beginPath(); ctx.moveTo(x, bb.top); ctx.lineTo(x, bb.top + bb.height); ctx.stroke();
      ctx.translate(x - 3 * dpr, bb.top + 4 * dpr); ctx.rotate(-Math.PI / 2);
      ctx.font = (10 * dpr) + "px system-ui, sans-serif"; ctx.textAlign = "right";
      ctx.fillText(m.label.slice(0, 40), 0, 0);
      ctx.restore();
    });
    if (D.peak) {
      const x = u.valToPos(D.peak.t, "x", true), y = u.valToPos(D.peak.bytes, "y", true);
      ctx.save();
      ctx.fillStyle = "#dc2626";
      ctx.beginPath(); ctx.arc(x, y, 4.5 * dpr, 0, 2 * Math.PI); ctx.fill();
      ctx.font = (12 * dpr) + "px system-ui, sans-serif";
      const label = "peak " + fmtBytes(D.peak.bytes);
      const w = ctx.measureText(label).width;
      const lx = Math.min(Math.max(x - w / 2, bb.left), bb.left + bb.width - w);
      ctx.fillText(label, lx, Math.max(y - 8 * dpr, bb.top + 12 * dpr));
      ctx.restore();
    }
  }

  // Tick steps of 1, 2, 4 ... 512 B, KiB, MiB, GiB, so that labels read "16 MiB", not "19.1 MiB".
  const BYTE_INCRS = [];
  for (let k = 0; k < 5; k++) for (let m = 1; m < 1024; m *= 2) BYTE_INCRS.push(m * Math.pow(1024, k));

  const X_MAX = Math.max(S.duration_s || 0, D.timeline.t.length ? D.timeline.t[D.timeline.t.length - 1] : 0,
                         D.steps.t[D.steps.t.length - 1] || 0, 1e-3);

  function makePlot() {
    const xs = D.timeline.t.length ? D.timeline.t : [0];
    const ys = D.timeline.t.length ? D.timeline.bytes : [0];
    const opts = {
      width: plotWidth(), height: 240,
      legend: { show: false },
      cursor: { y: false, drag: { x: true, y: false, setScale: false }, points: { show: false } },
      // The whole session, even when it is too short for uPlot's own guess to fit.
      scales: { x: { time: false, range: () => [0, X_MAX] }, y: { range: (u, lo, hi) => [0, Math.max(hi * 1.12, 1)] } },
      axes: [
        { label: "seconds since start", values: (u, v) => v.map(x => +x.toFixed(6)) },
        { size: 70, values: (u, v) => v.map(b => fmtBytes(b).replace(/\.0+ /, " ")), incrs: BYTE_INCRS },
      ],
      // Each point is the highest level of the interval it starts: hold it until the next.
      series: [{}, { label: "estimated live bytes", stroke: "#ea580c", width: 1.5,
                     paths: uPlot.paths.stepped({ align: 1 }),
                     fill: "rgba(234,88,12,0.14)", points: { show: false } }],
      hooks: { draw: [drawMarks], setSelect: [onSelect] },
    };
    plot = new uPlot(opts, [xs, ys], plotEl);
    // A click without a drag chooses a moment; uPlot reports drags through setSelect.
    let downX = null;
    plot.over.addEventListener("mousedown", e => { downX = e.clientX; });
    plot.over.addEventListener("click", e => {
      if (downX !== null && Math.abs(e.clientX - downX) > 3) return;
      const x = e.clientX - plot.over.getBoundingClientRect().left;
      selectMoment(nearestMoment(plot.posToVal(x, "x")));
    });
  }

  function onSelect(u) {
    if (u.select.width <= 3) return;
    const t0 = u.posToVal(u.select.left, "x"), t1 = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    let a = nearestMoment(t0), b = nearestMoment(t1);
    if (a === b) { selectMoment(a); return; }
    selectRange(a, b);
  }

  // ------------------------------------------------------------ selection
  function selectMoment(m) {
    state.moment = m;
    state.range = null;
    document.getElementById("selection").textContent =
      "moment " + momentLabel(m) + ": " + fmtBytes(totalAt(m)) + " live";
    if (plot) plot.redraw(false, false);
    buildFlame();
    drawFlame();
    renderSites();
    renderGrowth();
  }
  function selectRange(a, b) {
    state.range = [a, b];
    state.moment = b;           // the flame graph and sites show the range's end
    document.getElementById("selection").textContent =
      "range " + fmtSecs(a.t) + " \u2192 " + fmtSecs(b.t) + ": " +
      (totalAt(b) - totalAt(a) >= 0 ? "+" : "") + fmtBytes(totalAt(b) - totalAt(a));
    if (plot) plot.redraw(false, false);
    buildFlame();
    drawFlame();
    renderSites();
    renderGrowth();
    showTab("growth");
  }

  // ------------------------------------------------------------ flame graph
  // Tree of live bytes at the selected moment: node = {fi, v, kids: Map, parent, depth, x}.
  let root = null, maxDepth = 0;
  const ROW = 18;
  const canvas = document.getElementById("flame");
  const ctx2 = canvas.getContext("2d");
  const tooltip = document.getElementById("tooltip");
  let rects = [];               // per depth: [{x0, x1, node}] as drawn, for hit-testing
  let zoomNode = null;

  function buildFlame() {
    const m = state.moment;
    root = { fi: null, v: 0, kids: new Map(), parent: null, depth: 0, x: 0 };
    maxDepth = 0;
    function add(path, v) {
      let n = root;
      n.v += v;
      for (let d = 0; d < path.length; d++) {
        const fi = path[d];
        let k = n.kids.get(fi);
        if (!k) { k = { fi: fi, v: 0, kids: new Map(), parent: n, depth: d + 1, x: 0 }; n.kids.set(fi, k); }
        k.v += v;
        n = k;
      }
      if (path.length > maxDepth) maxDepth = path.length;
    }
    for (const s of STACKS) {
      const v = valueOf(s, m);
      if (v > 0) add(s.f, v);
    }
    const o = otherAt(m);
    if (o > 0) add([OTHER], o);
    // Children in name order, so that the same frame keeps its place from moment to moment.
    (function layout(n) {
      const kids = Array.from(n.kids.values()).sort((a, b) => {
        const na = frameName(a.fi), nb = frameName(b.fi);
        return na < nb ? -1 : na > nb ? 1 : a.fi - b.fi;
      });
      let x = n.x;
      n.sorted = kids;
      for (const k of kids) { k.x = x; x += k.v; layout(k); }
    })(root);
    // Keep the zoom when the same path exists at the new moment.
    zoomNode = root;
    for (const fi of state.zoomPath) {
      const k = zoomNode.kids.get(fi);
      if (!k || k.v <= 0) { zoomNode = root; state.zoomPath = []; break; }
      zoomNode = k;
    }
    document.getElementById("unzoom").disabled = zoomNode === root;
  }

  function hue(str) {
    let h = 2166136261;
    for (let i = 0; i < str.length; i++) { h ^= str.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0);
  }
  function colour(n, matched) {
    if (n.fi === null) return "#94a3b8";
    if (n.fi === OTHER) return "#cbd5e1";
    const h = hue(FR[n.fi][1] + ":" + FR[n.fi][0]);
    if (state.search && !matched) return "hsl(" + (h % 40 + 10) + ",15%," + (80 + h % 8) + "%)";
    if (state.search && matched) return "hsl(" + (290 + h % 30) + ",75%," + (55 + h % 10) + "%)";
    return "hsl(" + (h % 45 + 5) + "," + (70 + (h >> 8) % 25) + "%," + (52 + (h >> 16) % 14) + "%)";
  }
  function matches(n) {
    if (!state.search || n.fi === null) return false;
    const q = state.search;
    if (n.fi === OTHER) return OTHER_LABEL.toLowerCase().includes(q);
    const f = FR[n.fi];
    return f[0].toLowerCase().includes(q) || (f[1] + ":" + f[2]).toLowerCase().includes(q);
  }

  function drawFlame() {
    if (!root || !document.getElementById("tab-flame").classList.contains("active")) return;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(300, canvas.parentElement.clientWidth);
    const rows = maxDepth + 1;
    const height = Math.max(rows * ROW, ROW * 3);
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const c = ctx2;
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, width, height);
    c.font = "12px system-ui, sans-serif";
    c.textBaseline = "middle";
    rects = [];
    let matchedBytes = 0;
    const z = zoomNode, scale = z.v > 0 ? width / z.v : 0;
    const zx = z.x;

    function box(n, x0, x1, depth, matchedAbove) {
      const w = x1 - x0;
      if (w < 0.4) return;
      const m = matches(n);
      if (m && !matchedAbove) matchedBytes += n.v;
      (rects[depth] || (rects[depth] = [])).push({ x0: x0, x1: x1, node: n });
      c.fillStyle = colour(n, m || matchedAbove);
      c.fillRect(x0, depth * ROW, Math.max(w - 0.5, 0.5), ROW - 1);
      if (w > 28) {
        const label = n.fi === null ? "all: " + fmtBytes(n.v) : frameName(n.fi);
        c.fillStyle = "#111";
        c.save();
        c.beginPath(); c.rect(x0, depth * ROW, w - 2, ROW); c.clip();
        c.fillText(fitText(label, w - 6), x0 + 3, depth * ROW + ROW / 2);
        c.restore();
      }
      return m;
    }
    // Ancestors of the zoomed node span the full width.
    const chain = [];
    for (let n = z; n; n = n.parent) chain.unshift(n);
    let anc = false;
    chain.forEach((n, d) => { if (n !== z) anc = box(n, 0, width, d, false) || anc; });
    (function walk(n, depth, matchedAbove) {
      const x0 = (n.x - zx) * scale, x1 = x0 + n.v * scale;
      const m = box(n, x0, x1, depth, matchedAbove);
      if (x1 - x0 < 0.4) return;
      for (const k of n.sorted) walk(k, depth + 1, matchedAbove || m);
    })(z, z.depth, anc);

    const info = document.getElementById("search-info");
    info.textContent = state.search ? "matched " + fmtBytes(matchedBytes) + " (" + pct(matchedBytes, root.v) + " of the total)" : "";
    const m = state.moment;
    document.getElementById("flame-caption").textContent =
      "live memory by stack at " + momentLabel(m) + ": " + fmtBytes(root.v) +
      (zoomNode !== root ? " \u00b7 zoomed into " + frameName(zoomNode.fi) : "") +
      " \u00b7 hover for details, click to zoom";
  }
  const textCache = new Map();
  function fitText(s, w) {
    const key = s + "|" + Math.round(w);
    if (textCache.has(key)) return textCache.get(key);
    let out = s;
    if (ctx2.measureText(s).width > w) {
      let lo = 0, hi = s.length;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (ctx2.measureText(s.slice(0, mid) + "\u2026").width <= w) lo = mid; else hi = mid - 1;
      }
      out = lo > 0 ? s.slice(0, lo) + "\u2026" : "";
    }
    if (textCache.size > 5000) textCache.clear();
    textCache.set(key, out);
    return out;
  }
  function hit(e) {
    const r = canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    const row = rects[Math.floor(y / ROW)];
    if (!row) return null;
    for (const b of row) if (x >= b.x0 && x < b.x1) return b.node;
    return null;
  }
  canvas.addEventListener("mousemove", e => {
    const n = hit(e);
    if (!n) { tooltip.hidden = true; return; }
    tooltip.innerHTML = "";
    if (n.fi === null) {
      tooltip.appendChild(el("div", { class: "fn" }, "all live memory"));
    } else {
      tooltip.appendChild(el("div", { class: "fn" }, frameName(n.fi)));
      tooltip.appendChild(el("div", { class: "loc" }, frameLoc(n.fi)));
    }
    tooltip.appendChild(el("div", null, "est. " + fmtBytes(n.v) + " live \u00b7 " + pct(n.v, root.v) + " of the total" +
      (zoomNode !== root ? " \u00b7 " + pct(n.v, zoomNode.v) + " of the zoomed frame" : "")));
    let self = n.v;
    n.kids.forEach(k => { self -= k.v; });
    if (n.fi !== null && self > 0) tooltip.appendChild(el("div", null, "allocated in this frame itself: " + fmtBytes(self)));
    tooltip.hidden = false;
    const tw = tooltip.offsetWidth, th = tooltip.offsetHeight;
    tooltip.style.left = Math.min(e.clientX + 14, window.innerWidth - tw - 8) + "px";
    tooltip.style.top = (e.clientY + 16 + th > window.innerHeight ? e.clientY - th - 10 : e.clientY + 16) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  canvas.addEventListener("click", e => {
    const n = hit(e);
    if (!n) return;
    state.zoomPath = [];
    for (let p = n; p && p.fi !== null; p = p.parent) state.zoomPath.unshift(p.fi);
    zoomNode = n;
    document.getElementById("unzoom").disabled = n === root;
    drawFlame();
  });
  document.getElementById("unzoom").addEventListener("click", () => {
    state.zoomPath = []; zoomNode = root;
    document.getElementById("unzoom").disabled = true;
    drawFlame();
  });
  document.getElementById("search").addEventListener("input", e => {
    state.search = e.target.value.trim().toLowerCase();
    drawFlame();
  });

  // ------------------------------------------------------------ tables
  // A site is a frame. Self: bytes whose innermost frame it is. Cumulative: bytes of every
  // stack it appears in (once per stack, so recursion is not counted twice).
  function sitesAt(m) {
    const self = new Map(), cum = new Map();
    for (const s of STACKS) {
      const v = valueOf(s, m);
      if (!v) continue;
      const leaf = s.f[s.f.length - 1];
      self.set(leaf, (self.get(leaf) || 0) + v);
      for (const fi of new Set(s.f)) cum.set(fi, (cum.get(fi) || 0) + v);
    }
    const o = otherAt(m);
    if (o) { self.set(OTHER, o); cum.set(OTHER, o); }
    return { self: self, cum: cum };
  }

  function sortableTable(table, columns, rows, sortKey, limit) {
    let key = sortKey, desc = true;
    function render() {
      const col = columns.find(c => c.key === key);
      const sorted = rows.slice().sort((a, b) => {
        const va = col.sort(a), vb = col.sort(b);
        return (va < vb ? -1 : va > vb ? 1 : 0) * (desc ? -1 : 1);
      });
      table.innerHTML = "";
      const thead = el("thead"), tr = el("tr");
      for (const c of columns) {
        const th = el("th", { class: (c.num ? "num " : "") + (c.sort ? "sortable" : "") }, c.title);
        if (c.key === key) th.classList.add(desc ? "sorted-desc" : "sorted-asc");
        if (c.sort) th.addEventListener("click", () => {
          if (key === c.key) desc = !desc; else { key = c.key; desc = true; }
          render();
        });
        tr.appendChild(th);
      }
      thead.appendChild(tr);
      table.appendChild(thead);
      const tb = el("tbody");
      for (const r of sorted.slice(0, limit)) {
        const row = el("tr");
        for (const c of columns) {
          const td = el("td", { class: c.cls || (c.num ? "num" : "") });
          c.cell(r, td);
          row.appendChild(td);
        }
        tb.appendChild(row);
      }
      table.appendChild(tb);
      if (sorted.length > limit) {
        const more = el("tr"), td = el("td", { colspan: columns.length, class: "caption" },
          "showing " + limit + " of " + sorted.length + " rows");
        more.appendChild(td);
        tb.appendChild(more);
      }
    }
    render();
  }
  const TABLE_ROWS = 300;
  const fnCol = { key: "fn", title: "Function", sort: r => frameName(r.fi), cell: (r, td) => { td.textContent = frameName(r.fi); } };
  const locCol = { key: "loc", title: "File:line", cls: "loc", sort: r => frameLoc(r.fi), cell: (r, td) => { td.textContent = frameLoc(r.fi); } };
  // The half width of an estimate's 95% interval, from its standard error.
  function fmtMargin(se) { return " \u00b1" + fmtBytes((D.z95 || 1.96) * (se || 0)); }

  function bytesCol(key, title, get, total) {
    return { key: key, title: title, num: true, sort: get, cell: (r, td) => {
      const v = get(r);
      if (total) {
        const bar = el("span", { class: "bar" });
        bar.style.width = Math.round(60 * Math.max(0, v) / Math.max(total, 1)) + "px";
        td.appendChild(bar);
      }
      td.appendChild(document.createTextNode(fmtBytes(v)));
    } };
  }

  function renderSites() {
    const m = state.moment, total = totalAt(m);
    const st = sitesAt(m);
    const rows = [];
    st.cum.forEach((c, fi) => rows.push({ fi: fi, self: st.self.get(fi) || 0, cum: c }));
    document.getElementById("sites-caption").textContent =
      "Live memory by allocation site at " + momentLabel(m) + " (total " + fmtBytes(total) + "). " +
      "Self: allocated in that frame; cumulative: in it or anything it called. Click a heading to sort.";
    sortableTable(document.getElementById("sites"), [
      fnCol, locCol,
      bytesCol("self", "Self", r => r.self, total),
      { key: "selfp", title: "Self %", num: true, sort: r => r.self, cell: (r, td) => { td.textContent = pct(r.self, total); } },
      bytesCol("cum", "Cumulative", r => r.cum, 0),
      { key: "cump", title: "Cum. %", num: true, sort: r => r.cum, cell: (r, td) => { td.textContent = pct(r.cum, total); } },
    ], rows, "self", TABLE_ROWS);
  }

  function renderGrowth() {
    const cap = document.getElementById("growth-caption"), table = document.getElementById("growth");
    if (!state.range) {
      cap.textContent = "Drag across the time plot to choose a range: sites are then ranked by how much " +
        "their live memory grew between the range's start and end.";
      table.innerHTML = "";
      return;
    }
    const [a, b] = state.range;
    const sa = sitesAt(a).self, sb = sitesAt(b).self;
    const rows = [];
    new Set([...sa.keys(), ...sb.keys()]).forEach(fi => {
      const va = sa.get(fi) || 0, vb = sb.get(fi) || 0;
      if (va || vb) rows.push({ fi: fi, a: va, b: vb, d: vb - va });
    });
    const grew = totalAt(b) - totalAt(a);
    cap.textContent = "Growth of live memory by allocation site from " + momentLabel(a) + " to " + momentLabel(b) +
      ": total " + (grew >= 0 ? "+" : "") + fmtBytes(grew) + ". Click a heading to sort.";
    sortableTable(table, [
      fnCol, locCol,
      { key: "d", title: "Growth", num: true, sort: r => r.d, cell: (r, td) => {
          td.textContent = (r.d > 0 ? "+" : "") + fmtBytes(r.d);
          td.classList.add(r.d > 0 ? "grow" : r.d < 0 ? "shrink" : "num");
        } },
      bytesCol("a", "At start", r => r.a, 0),
      bytesCol("b", "At end", r => r.b, 0),
    ], rows, "d", TABLE_ROWS);
  }

  function renderLeaks() {
    const cap = document.getElementById("leaks-caption");
    if (D.leaks_unknown) {            // the session's end was not recorded: no leak is known
      cap.textContent = D.leaks_unknown;
      document.getElementById("leaks").innerHTML = "";
      return;
    }
    const total = D.leaks.reduce((s, l) => s + l.bytes, 0);
    const running = S.status === "running" && !S.ended;
    cap.textContent = D.leaks.length
      ? (running ? "Allocations not freed yet" : "Allocations never freed before the session ended") +
        ", by allocation site: " + fmtBytes(total) + " estimated in the sites shown" +
        (D.leaks.length >= D.limits.leak_sites ? " (top " + D.limits.leak_sites + " sites)" : "") + "."
      : "Every sampled allocation was freed before the session ended.";
    if (!D.leaks.length) { document.getElementById("leaks").innerHTML = ""; return; }
    const rows = D.leaks.map(l => ({ fi: l.site, bytes: l.bytes, count: l.count, stacks: l.stacks, se: l.se || 0 }));
    sortableTable(document.getElementById("leaks"), [
      fnCol, locCol,
      bytesCol("bytes", "Est. bytes never freed", r => r.bytes, total),
      { key: "se", title: "\u00b1 95%", num: true, sort: r => r.se, cell: (r, td) => { td.textContent = fmtMargin(r.se).trim(); } },
      { key: "count", title: "Sampled allocations", num: true, sort: r => r.count, cell: (r, td) => { td.textContent = r.count.toLocaleString("en"); } },
      { key: "path", title: "Call path (outermost first)", cell: (r, td) => {
          r.stacks.forEach(p => {
            td.appendChild(el("div", { class: "path" }, p.map(fi => frameName(fi)).join(" \u2192 ")));
          });
        } },
    ], rows, "bytes", TABLE_ROWS);
  }

  // ------------------------------------------------------------ keyboard
  // Left/right arrows step through the kept moments; Escape leaves a zoom.
  document.addEventListener("keydown", e => {
    if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA")) return;
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      const i = moments.indexOf(state.moment) + (e.key === "ArrowLeft" ? -1 : 1);
      if (i >= 0 && i < moments.length) selectMoment(moments[i]);
      e.preventDefault();
    } else if (e.key === "Escape" && zoomNode !== root) {
      state.zoomPath = []; zoomNode = root;
      document.getElementById("unzoom").disabled = true;
      drawFlame();
    }
  });

  // ------------------------------------------------------------ start
  renderLeaks();
  try {
    makePlot();
  } catch (e) {
    plotEl.textContent = "The time plot could not be drawn: " + e.message;
    throw e;
  }
  const initial = moments.find(m => m.kind === "peak") || moments[moments.length - 1];
  selectMoment(initial);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (plot) plot.setSize({ width: plotWidth(), height: 240 }); drawFlame(); }, 100);
  });

  // For the browser test and for the curious: what is on screen, in plain data.
  window.hpReport = {
    plot: () => plot,
    moments: moments,
    state: state,
    flameSummary: () => {
      const out = [];
      rects.forEach((row, d) => row.forEach(b => {
        if (b.x1 - b.x0 >= 1) out.push([d, b.node.fi === null ? "all" : frameName(b.node.fi), b.node.v]);
      }));
      return out;
    },
    flameBox: (name) => {
      const r = canvas.getBoundingClientRect();
      for (let d = 0; d < rects.length; d++) for (const b of rects[d] || []) {
        if (b.node.fi !== null && frameName(b.node.fi) === name) return [r.left + b.x0, r.top + d * ROW, b.x1 - b.x0, ROW];
      }
      return null;
    },
  };
})();
