// The Kiln engine explorer: renders the JSON in #kiln-data. Plain DOM and SVG, no libraries, no network.
"use strict";
const D = JSON.parse(document.getElementById("kiln-data").textContent);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v); else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function bytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(2) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}
function ms(v) { return v === null || v === undefined ? "" : v.toFixed(4); }
function tensorText(t) {
  if (!t) return "-";
  if (!t.shape) return t.name;
  return `${t.name}: ${t.shape.join("x") || "scalar"} ${t.dtype} ${t.layout === "channels_last" ? "NHWC" : ""}`.trim();
}
function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}
const KIND_COLOR = { engine: "#cfe8d6", pytorch: "#ffd9b8", placeholder: "#dde6f5", output: "#dde6f5", getitem: "#eeeeee" };
function colorFor(kind) { return KIND_COLOR[kind] || `hsl(${hue(kind)}, 55%, 85%)`; }

// Layered layout: a node's row is one past the deepest of its inputs; nodes of one row sit side by side.
function drawGraph(nodes, onClick) {
  const W = 190, H = 34, GX = 18, GY = 26;
  const rowOf = {}, perRow = [];
  for (const n of nodes) {
    const r = n.inputs.length ? 1 + Math.max(...n.inputs.map(i => rowOf[i] ?? -1)) : 0;
    rowOf[n.id] = r;
    (perRow[r] = perRow[r] || []).push(n);
  }
  const pos = {};
  const widest = Math.max(...perRow.map(r => (r ? r.length : 0)));
  perRow.forEach((row, r) => {
    const offset = ((widest - row.length) * (W + GX)) / 2;
    row.forEach((n, i) => { pos[n.id] = { x: 10 + offset + i * (W + GX), y: 10 + r * (H + GY) }; });
  });
  const width = 20 + widest * (W + GX), height = 20 + perRow.length * (H + GY);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  const edges = svg("g", { stroke: "#8a96a3", fill: "none" });
  for (const n of nodes) for (const i of n.inputs) {
    const a = pos[i], b = pos[n.id];
    if (!a) continue;
    const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y;
    edges.append(svg("path", { d: `M${x1},${y1} C${x1},${y1 + GY} ${x2},${y2 - GY} ${x2},${y2}` }));
  }
  root.append(edges);
  for (const n of nodes) {
    const p = pos[n.id];
    const g = svg("g", { class: "node", "data-id": n.id, transform: `translate(${p.x},${p.y})` });
    const rect = { width: W, height: H, rx: 5, fill: colorFor(n.color), stroke: "#56606b" };
    if (n.fused) Object.assign(rect, { "stroke-width": 3 });
    if (n.color === "pytorch") Object.assign(rect, { stroke: "#a34700", "stroke-dasharray": "5 3", "stroke-width": 2 });
    g.append(svg("rect", rect));
    g.append(svg("text", { x: 6, y: 14 }, n.label.slice(0, 30)));
    g.append(svg("text", { x: 6, y: 27, fill: "#56606b" }, (n.sub || "").slice(0, 32)));
    g.append(svg("title", {}, n.title));
    if (onClick) g.addEventListener("click", () => onClick(n));
    root.append(g);
  }
  return el("div", { class: "graph" }, root);
}

function sortableTable(columns, rows, id) {
  const table = el("table", id ? { id } : {});
  const body = el("tbody");
  let sortKey = null, asc = true;
  const head = el("tr", {}, columns.map(c => {
    const th = el("th", {}, c.title);
    th.addEventListener("click", () => {
      asc = sortKey === c.key ? !asc : true;
      sortKey = c.key;
      head.querySelectorAll("th").forEach(h => h.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      const value = r => (c.sort ? c.sort(r) : r[c.key]);
      rows.sort((a, b) => {
        const x = value(a), y = value(b);
        const cmp = typeof x === "number" && typeof y === "number" ? x - y : String(x ?? "").localeCompare(String(y ?? ""));
        return asc ? cmp : -cmp;
      });
      fill();
    });
    return th;
  }));
  function fill() {
    body.replaceChildren(...rows.map(r => el("tr", { "data-id": r.id ?? "" }, columns.map(c => {
      const v = c.render ? c.render(r) : r[c.key];
      return el("td", c.num ? { class: "num" } : {}, v instanceof Node ? v : String(v ?? ""));
    }))));
  }
  fill();
  table.append(el("thead", {}, head), body);
  return el("div", { class: "tablewrap" }, table);
}

function barChart(title, entries, unit) {
  const rowH = 20, labelW = 170, barW = 300;
  const max = Math.max(...entries.map(e => e[1]), 1e-12);
  const root = svg("svg", { width: labelW + barW + 90, height: 24 + entries.length * rowH });
  root.append(svg("text", { x: 0, y: 14, "font-weight": "bold", "font-size": 13 }, title));
  entries.forEach(([label, value], i) => {
    const y = 22 + i * rowH;
    root.append(svg("text", { x: 0, y: y + 13, "font-size": 11 }, label.slice(0, 26)));
    root.append(svg("rect", { x: labelW, y: y + 2, width: Math.max(1, (value / max) * barW), height: rowH - 6, fill: `hsl(${hue(label)}, 50%, 60%)` }));
    root.append(svg("text", { x: labelW + (value / max) * barW + 4, y: y + 13, "font-size": 11 }, value.toFixed(3) + " " + unit));
  });
  return root;
}

function highlight(tableId, id) {
  const row = document.querySelector(`#${tableId} tr[data-id="${CSS.escape(id)}"]`);
  if (!row) return;
  document.querySelectorAll("tr.highlight").forEach(r => r.classList.remove("highlight"));
  row.classList.add("highlight");
  row.scrollIntoView({ block: "center" });
}

function renderBlock(block, bi) {
  const tableId = `layers-${bi}`;
  const producer = {};
  block.layers.forEach(l => l.outputs.forEach(t => t && (producer[t.name] = l.name)));
  const nodes = block.layers.map(l => ({
    id: l.name,
    label: l.name,
    sub: `${l.kind} · ${l.tactic}`,
    color: l.kind,
    fused: l.fused,
    inputs: l.inputs.filter(t => t && producer[t.name]).map(t => producer[t.name]),
    title: `${l.name} (${l.kind})\ntactic: ${l.tactic}${l.ms != null ? " " + l.ms + " ms" : ""}\nfrom: ${l.source}\n` +
      `in: ${l.inputs.map(tensorText).join("; ")}\nout: ${l.outputs.map(tensorText).join("; ")}`,
  }));
  const mem = block.memory;
  const section = el("section", { id: `block-${bi}` },
    el("h2", {}, `Engine block ${block.name}`),
    el("p", { class: "meta" }, `${block.layers.length} layers on ${block.device}, compute dtype ${block.compute_dtype}; inputs ${block.inputs.map(tensorText).join(", ")}; outputs ${block.outputs.map(tensorText).join(", ")}`),
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("b", {}, bytes(mem.arena_bytes)), "activation arena"),
      el("div", { class: "card" }, el("b", {}, bytes(mem.peak_live_bytes)), "peak live activations"),
      el("div", { class: "card" }, el("b", {}, bytes(mem.unshared_bytes)), "without buffer reuse"),
      el("div", { class: "card" }, el("b", {}, bytes(mem.weight_bytes)), `weights (${mem.weights} tensors)`)),
    el("h3", {}, "Layers (click a layer to find it in the table; a thick border is a fused layer)"),
    drawGraph(nodes, n => highlight(tableId, n.id)));
  const timed = block.layers.filter(l => l.ms != null);
  if (timed.length) {
    const byKind = {}, byTactic = {};
    for (const l of timed) {
      byKind[l.kind] = (byKind[l.kind] || 0) + l.ms;
      byTactic[l.tactic] = (byTactic[l.tactic] || 0) + l.ms;
    }
    const top = o => Object.entries(o).sort((a, b) => b[1] - a[1]);
    section.append(el("h3", {}, "Time by layer kind and by tactic (builder timings at the opt shape)"),
      el("div", { class: "charts" }, barChart("by layer kind", top(byKind), "ms"), barChart("by tactic", top(byTactic), "ms")));
  } else {
    section.append(el("p", { class: "note" }, "No tactic timings: this engine was built without a GPU, so every layer runs its reference tactic and nothing was timed."));
  }
  if (Object.keys(block.kept_fp32).length) {
    section.append(el("h3", {}, "Kept in FP32"), el("ul", {}, Object.entries(block.kept_fp32).map(([k, v]) => el("li", {}, `${k}: ${v}`))));
  }
  section.append(el("h3", {}, "Layer table (click a header to sort)"), sortableTable([
    { title: "#", key: "index", num: true },
    { title: "layer", key: "name" },
    { title: "kind", key: "kind", render: r => el("span", r.fused ? { class: "fused" } : {}, r.kind + (r.fused ? " (fused)" : "")) },
    { title: "tactic", key: "tactic" },
    { title: "ms", key: "ms", num: true, render: r => ms(r.ms), sort: r => r.ms ?? -1 },
    { title: "candidates (ms)", key: "candidates", render: r => Object.entries(r.candidates).map(([k, v]) => `${k} ${ms(v)}`).join(", "), sort: r => Object.keys(r.candidates).length },
    { title: "precision", key: "precision" },
    { title: "inputs", key: "inputs", render: r => r.inputs.map(tensorText).join("\n") },
    { title: "outputs", key: "outputs", render: r => r.outputs.map(tensorText).join("\n") },
    { title: "arena bytes", key: "arena", num: true, render: r => r.outputs.map(t => (t && t.arena ? bytes(t.arena[1]) : "")).join(" "), sort: r => r.outputs.reduce((s, t) => s + (t && t.arena ? t.arena[1] : 0), 0) },
    { title: "from", key: "source" },
  ], block.layers.map(l => ({ ...l, id: l.name })), tableId));
  return section;
}

function render() {
  const app = document.getElementById("app");
  const engineOps = D.partition.filter(r => r.where === "engine").length;
  app.append(
    el("h1", {}, `Kiln engine explorer${D.title ? ": " + D.title : ""}`),
    el("p", { class: "meta" }, `Kiln ${D.kiln_version}, PyTorch ${D.torch_version}, device ${D.device}; inputs ${D.inputs.join(", ")}`),
    el("p", {}, D.summary),
    el("div", { class: "cards" },
      el("div", { class: "card" }, el("b", {}, D.blocks.length), "engine blocks"),
      el("div", { class: "card" }, el("b", {}, engineOps), "ops on the engine"),
      el("div", { class: "card" }, el("b", {}, D.partition.length - engineOps), "ops in PyTorch"),
      el("div", { class: "card" }, el("b", {}, D.blocks.reduce((s, b) => s + b.layers.length, 0)), "engine layers")),
    el("h2", {}, "Where each op runs"),
    el("p", { class: "legend" },
      el("span", {}, el("i", { style: `background:${KIND_COLOR.engine}` }), "engine block"),
      el("span", {}, el("i", { style: `background:${KIND_COLOR.pytorch}; outline: 2px dashed #a34700` }), "PyTorch fallback op"),
      el("span", {}, el("i", { style: `background:${KIND_COLOR.placeholder}` }), "input / output")),
    drawGraph(D.graph.map(n => ({
      id: n.name,
      label: n.label,
      sub: n.kind === "pytorch" ? "PyTorch: " + (n.reason || "fallback") : n.kind === "engine" ? "Kiln engine" : n.kind,
      color: n.kind,
      inputs: n.args,
      title: `${n.name}: ${n.label}${n.reason ? "\nruns in PyTorch: " + n.reason : ""}`,
    })), n => {
      const bi = D.blocks.findIndex(b => b.name === n.id);
      if (bi >= 0) document.getElementById(`block-${bi}`).scrollIntoView();
      else highlight("partition", n.id);
    }));
  D.blocks.forEach((b, i) => app.append(renderBlock(b, i)));
  app.append(el("h2", {}, "Partition report"));
  const reasons = Object.entries(D.fallback_reasons);
  if (reasons.length) {
    app.append(el("h3", {}, "PyTorch fallback, by reason"), el("ul", {}, reasons.map(([k, v]) => el("li", { class: "pytorch" }, `${k} (${v})`))));
  }
  app.append(sortableTable([
    { title: "node", key: "node" },
    { title: "op", key: "op" },
    { title: "runs on", key: "where", render: r => el("span", { class: r.where }, r.where) },
    { title: "block", key: "block" },
    { title: "why not engine", key: "reason" },
  ], D.partition.map(r => ({ ...r, id: r.node })), "partition"));
}
render();
