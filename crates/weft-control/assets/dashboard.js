// weft dashboard: the live service graph from /api/graph and a page per
// service from /api/service. Plain DOM and SVG, no libraries.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function windowParam() {
  return document.getElementById("window").value;
}

function fmt(n, digits) {
  return n === null || n === undefined ? "–" : Number(n).toFixed(digits);
}

// Columns by longest path from callers; rows in order within a column.
function layout(nodes, links) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const l of links) {
      if (l.from === l.to) continue;
      const d = (depth.get(l.from) || 0) + 1;
      if (depth.has(l.to) && d > depth.get(l.to) && d < nodes.length) {
        depth.set(l.to, d);
        changed = true;
      }
    }
    if (!changed) break;
  }
  // Callers nobody calls sit just left of what they call.
  const called = new Set(links.map((l) => l.to));
  for (const n of nodes) {
    if (called.has(n.id)) continue;
    const targets = links.filter((l) => l.from === n.id && l.to !== n.id).map((l) => depth.get(l.to) || 0);
    if (targets.length) depth.set(n.id, Math.max(0, Math.min(...targets) - 1));
  }
  const columns = new Map();
  for (const n of nodes) {
    const d = depth.get(n.id) || 0;
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n);
  }
  const pos = new Map();
  const colWidth = 380, rowHeight = 110;
  for (const [d, list] of columns) {
    list.forEach((n, i) => pos.set(n.id, {
      x: 40 + d * colWidth, y: 50 + i * rowHeight,
      // Where edges leave and arrive: circles are narrower than boxes.
      right: n.kind === "client" ? 104 : 160, left: n.kind === "client" ? 56 : 0,
    }));
  }
  return pos;
}

function drawNode(svg, n, p) {
  const g = el("svg:g", {
    class: "node kind-" + n.kind,
    "data-node": n.id,
    "data-kind": n.kind,
    transform: `translate(${p.x},${p.y})`,
  });
  const label = n.id.split(".")[0];
  if (n.kind === "waypoint") {
    g.appendChild(el("svg:polygon", { points: "0,-22 80,0 0,22 -80,0", transform: "translate(80,0)" }));
  } else if (n.kind === "client") {
    g.appendChild(el("svg:circle", { cx: 80, cy: 0, r: 24 }));
  } else {
    g.appendChild(el("svg:rect", { x: 0, y: -20, width: 160, height: 40, rx: n.kind === "gateway" ? 2 : 10 }));
  }
  g.appendChild(el("svg:text", { x: 80, y: 4, "text-anchor": "middle" }, label));
  g.appendChild(el("svg:title", {}, `${n.id} (${n.kind}, ${n.namespace})`));
  g.addEventListener("click", () => { location.hash = "#service=" + encodeURIComponent(n.id); });
  svg.appendChild(g);
}

// Whether a link goes from one cluster to another (both known).
function crosses(l) {
  const known = (c) => c && c !== "unknown";
  return known(l.source_cluster) && known(l.destination_cluster) && l.source_cluster !== l.destination_cluster;
}

function drawLink(svg, l, from, to) {
  const x1 = from.x + from.right, y1 = from.y, x2 = to.x + to.left, y2 = to.y;
  const backwards = x2 <= x1;
  // A call to another cluster bends below the in-cluster one it parallels.
  const across = crosses(l);
  const bend = across ? 70 : 0;
  const mx = (x1 + x2) / 2, my = (y1 + y2) / 2 + (backwards ? 40 : 0) + bend * 0.75;
  const d = backwards
    ? `M${x1},${y1} C${x1 + 60},${y1 + 80 + bend} ${x2 - 60},${y2 + 80 + bend} ${x2},${y2}`
    : `M${x1},${y1} C${mx},${y1 + bend} ${mx},${y2 + bend} ${x2},${y2}`;
  const denied = l.denied > 0;
  const cls = ["edge", denied ? "denied" : "", l.error_ratio > 0.01 ? "errors" : "", l.mtls ? "mtls" : "plaintext",
    across ? "crosses" : ""].filter(Boolean).join(" ");
  const path = el("svg:path", {
    d, class: cls, "marker-end": "url(#arrow)",
    "data-edge": `${l.from}->${l.to}`,
    "data-clusters": `${l.source_cluster}->${l.destination_cluster}`,
    "data-gateway": l.gateway ? l.gateway.name : "",
    "data-rate": fmt(l.rate, 3), "data-denied": fmt(l.denied, 0), "data-mtls": String(l.mtls),
  });
  const via = l.gateway ? ` via ${l.gateway.name} (${l.gateway.cluster}, ${l.gateway.address})` : "";
  path.appendChild(el("svg:title", {}, `${l.source} (${l.source_cluster}) → ${l.destination} (${l.destination_cluster})${via}: ` +
    `${fmt(l.requests, 0)} ${l.protocol === "tcp" ? "connections" : "requests"} (${l.reporter})`));
  svg.appendChild(path);
  const parts = [`${fmt(l.rate, 2)}/s`, `${fmt(l.error_ratio * 100, 1)}% err`];
  if (across) parts.unshift(`${l.source_cluster} → ${l.destination_cluster}` + (l.gateway ? ` via ${l.gateway.name}` : ""));
  if (l.p99_ms !== null && l.p99_ms !== undefined) parts.push(`p99 ${fmt(l.p99_ms, 1)}ms`);
  const text = el("svg:text", { x: mx, y: my - 6, "text-anchor": "middle", class: "edge-label" }, parts.join(" · "));
  svg.appendChild(text);
  if (l.mtls) {
    // A padlock before the label: every call on this edge was mutual TLS.
    const width = parts.join(" · ").length * 5.6;
    const lock = el("svg:g", { class: "padlock", transform: `translate(${mx - width / 2 - 14},${my - 16})` });
    lock.appendChild(el("svg:path", { d: "M2,5 V3 a3,3 0 0 1 6,0 V5", fill: "none" }));
    lock.appendChild(el("svg:rect", { x: 0, y: 5, width: 10, height: 7, rx: 1.5 }));
    lock.appendChild(el("svg:title", {}, "mutual TLS"));
    svg.appendChild(lock);
  }
  if (denied) {
    svg.appendChild(el("svg:text", { x: mx, y: my + 12, "text-anchor": "middle", class: "edge-label denied" },
      `${fmt(l.denied, 0)} denied`));
  }
}

function renderGraph(data) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.appendChild(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#5b6b82" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  const pos = layout(data.nodes, data.links);
  for (const l of data.links) {
    const from = pos.get(l.from), to = pos.get(l.to);
    if (from && to) drawLink(svg, l, from, to);
  }
  for (const n of data.nodes) drawNode(svg, n, pos.get(n.id));
  let width = 0, height = 0;
  for (const p of pos.values()) { width = Math.max(width, p.x + 220); height = Math.max(height, p.y + 60); }
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 600)} ${Math.max(height, 300)}`);
  const targets = document.getElementById("targets");
  targets.replaceChildren(...(data.targets || []).map((t) =>
    el("li", { class: t.stale ? "stale" : "fresh", "data-target": t.name },
      `${t.name} ${t.address}: ${t.stale ? "stale — " + (t.error || "") : "ok"}`)));
  const stale = (data.targets || []).filter((t) => t.stale).length;
  document.getElementById("status").textContent =
    `${data.links.length} edges over ${fmt(data.covered_seconds, 0)}s` + (stale ? ` · ${stale} stale proxies` : "") +
    ` · updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.ready = "graph";
}

function table(title, columns, rows, cellClass) {
  const frag = document.createDocumentFragment();
  frag.appendChild(el("h3", {}, title));
  if (!rows.length) { frag.appendChild(el("p", {}, "none")); return frag; }
  const t = el("table", { "data-table": title.toLowerCase() });
  const head = el("tr");
  for (const c of columns) head.appendChild(el("th", {}, c[0]));
  t.appendChild(head);
  for (const r of rows) {
    const tr = el("tr");
    for (const c of columns) {
      const v = c[1](r);
      tr.appendChild(el("td", cellClass ? { class: cellClass(c[0], r) } : {}, v));
    }
    t.appendChild(tr);
  }
  frag.appendChild(t);
  return frag;
}

function edgeColumns(side) {
  return [
    [side, (e) => side === "caller" ? `${e.source} (${e.source_namespace})` : e.destination],
    ["rate/s", (e) => fmt(e.rate, 2)],
    ["errors", (e) => fmt(e.error_ratio * 100, 1) + "%"],
    ["p50 ms", (e) => fmt(e.p50_ms, 1)],
    ["p99 ms", (e) => fmt(e.p99_ms, 1)],
    ["mTLS", (e) => (e.mtls ? "yes" : "no")],
    ["allowed", (e) => fmt(e.allowed, 0)],
    ["denied", (e) => fmt(e.denied, 0)],
  ];
}

async function renderService(name) {
  const view = document.getElementById("service-view");
  const response = await fetch(`/api/service?name=${encodeURIComponent(name)}&window=${windowParam()}`);
  if (!response.ok) {
    view.replaceChildren(el("p", {}, await response.text()));
    return;
  }
  const s = await response.json();
  const deniedCell = (col, r) => (col === "denied" && r.denied > 0 ? "denied" : "");
  view.replaceChildren(
    el("h2", { "data-service": s.service }, s.service),
    el("p", {}, `namespace ${s.namespace}` + (s.waypoint ? ` · waypoint ${s.waypoint}` : "")),
    table("Callers", edgeColumns("caller"), s.callers, deniedCell),
    table("Callees", edgeColumns("callee"), s.callees, deniedCell),
    table("Policies", [["policy", (p) => p.name], ["layer", (p) => p.layer], ["action", (p) => p.action],
      ["allowed", (p) => fmt(p.allowed, 0)], ["denied", (p) => fmt(p.denied, 0)]], s.policies, deniedCell),
    table("Certificates", [["identity", (c) => c.identity],
      ["expires in", (c) => fmt(c.expires_in_seconds / 60, 1) + " min"]], s.certificates),
    table("Endpoints", [["workload", (e) => e.workload], ["address", (e) => e.address], ["node", (e) => e.node],
      ["locality", (e) => e.locality], ["health", (e) => e.health]], s.endpoints),
  );
  document.body.dataset.ready = "service";
}

async function refresh() {
  const m = location.hash.match(/^#service=(.+)$/);
  document.getElementById("graph-view").hidden = !!m;
  document.getElementById("service-view").hidden = !m;
  try {
    if (m) {
      await renderService(decodeURIComponent(m[1]));
    } else {
      const response = await fetch(`/api/graph?window=${windowParam()}`);
      if (!response.ok) throw new Error(await response.text());
      renderGraph(await response.json());
    }
  } catch (e) {
    document.getElementById("status").textContent = "cannot load: " + e.message;
  }
}

window.addEventListener("hashchange", refresh);
document.getElementById("window").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
